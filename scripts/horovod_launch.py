"""Azure ML's ``distribution: type: mpi`` on this machine: Horovod's ranks under ``horovodrun``.

``scripts/localjob.py`` imports this module only for a ``type: mpi`` step: the ranks run in the
pinned Horovod virtualenv (``training/environments/horovod/build_env.py``, built on first use),
over Gloo on loopback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from scripts import UserError
from scripts.launch import LOOPBACK, Task

if TYPE_CHECKING:
    from scripts.localjob import LocalPlan


def mpi_tasks(plan: LocalPlan, argv: list[str]) -> list[Task]:
    """Azure ML's mpirun, locally: horovodrun over Gloo with the pinned Horovod environment."""
    from training.environments.horovod import build_env

    per_node = int(plan.distribution.process_count_per_instance or 1)
    ranks = int(plan.instance_count or 1) * per_node
    try:
        python = build_env.ensure()  # built once (minutes), then reused
    except build_env.HorovodEnvError as exc:
        raise UserError(str(exc)) from exc
    return horovod_tasks(argv, ranks, str(python))


def horovod_tasks(command: Sequence[str], process_count: int, horovod_python: str) -> list[Task]:
    """The one launcher process of a ``type: mpi`` job: ``horovodrun`` over Gloo on loopback.

    Azure ML's ``mpirun`` starts ``process_count`` ranks of ``command``; here ``horovodrun``
    does, from the Horovod virtualenv (its ``python`` first on PATH, so ``python`` in the
    command is the one Horovod was built for), prefixing each line with ``[rank]``. The one
    host is 127.0.0.1, so horovodrun runs every rank here and Gloo talks over loopback.
    """
    bin_dir = os.path.dirname(horovod_python)
    launcher = [os.path.join(bin_dir, "horovodrun"), "--gloo", "-np", str(process_count)]
    return [
        Task(
            "horovodrun",
            [*launcher, "-H", f"{LOOPBACK}:{process_count}", *command],
            {"PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])},
        )
    ]
