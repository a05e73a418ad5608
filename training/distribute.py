"""Choose how to distribute training from the environment the launcher set.

No flag selects the mode: the same command runs everywhere and this module reads what the
launcher (a laptop shell, Azure ML, ``python -m scripts run``, an MPI launcher) put in the
environment:

- Horovod/MPI variables (``HOROVOD_RANK``, ``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``) ->
  Horovod, one process per rank (the ``horovod`` module of ``CLUSTER_RUNTIMES``).
- ``TF_CONFIG`` with ``ps`` tasks -> parameter-server training (the ``parameter_server``
  module of ``CLUSTER_RUNTIMES``).
- ``TF_CONFIG`` with two or more workers and no ``ps`` -> MultiWorkerMirroredStrategy.
  Azure ML writes an empty ``"ps": []`` that TF >= 2.13 rejects; empty roles are dropped.
- Otherwise MirroredStrategy over the local GPUs when there are several, else the default
  single-device strategy.

The base ``Runtime`` (and the hooks the Trainer calls) is in ``training/runtime.py``; the
cluster runtimes override the hooks where they differ. A runtime that ``CLUSTER_RUNTIMES``
does not name (a project made from the template without it) is refused with a
``ClusterConfigError`` that says so, never run as a single process.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import tensorflow as tf

from training.runtime import CLUSTER_RUNTIMES, ClusterConfigError, Runtime, server_threads

HOROVOD_ENV_KEYS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")

# What asked for an optional cluster runtime, and what to run instead when it is absent.
_ASKED = {
    "horovod": (
        "This process was started by an MPI launcher (HOROVOD_RANK, OMPI_COMM_WORLD_SIZE or "
        "PMI_SIZE is set: mpirun, Azure ML's `distribution: type: mpi`)",
        "start training without an MPI launcher, e.g. as a `distribution: type: tensorflow` "
        "job such as training/jobs/multi_worker.yml",
    ),
    "parameter_server": (
        'TF_CONFIG names parameter servers ("ps" tasks: a job spec with parameter_server_count)',
        "drop parameter_server_count from the job spec's distribution, e.g. run "
        "training/jobs/multi_worker.yml (multi-worker training, no parameter servers)",
    ),
}


@dataclass
class MultiWorkerRuntime(Runtime):
    """A worker of a MultiWorkerMirroredStrategy cluster. Saving a checkpoint is a collective
    operation there: every worker takes part (all but the chief into a scratch folder, the
    pattern the TF multi-worker guide prescribes)."""

    @property
    def saves_checkpoints(self) -> bool:
        return True


def parse_tf_config(raw: str) -> dict[str, Any]:
    """Parse TF_CONFIG, dropping empty roles such as Azure ML's ``"ps": []``."""
    try:
        config = json.loads(raw)
        cluster = {role: list(tasks) for role, tasks in config["cluster"].items() if tasks}
        task = {"type": str(config["task"]["type"]), "index": int(config["task"]["index"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterConfigError(
            f"TF_CONFIG is not valid ({exc!r}); it must be JSON like "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}.'
        ) from exc
    if task["type"] not in cluster or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ClusterConfigError(
            f"TF_CONFIG task {task} is not in its cluster {sorted(cluster)}: check the launcher."
        )
    return {"cluster": cluster, "task": task}


def detect_runtime(env: Mapping[str, str] | None = None) -> Runtime | None:
    """The runtime for this process, or None when it only served a PS-cluster role.

    May rewrite ``os.environ["TF_CONFIG"]`` to the normalised form TF expects.
    """
    env = os.environ if env is None else env
    if any(key in env for key in HOROVOD_ENV_KEYS):
        return _cluster_runtime("horovod").detect()  # imported only under an MPI/Gloo launcher

    raw = env.get("TF_CONFIG", "").strip()
    if raw:
        config = parse_tf_config(raw)
        cluster = config["cluster"]
        if "ps" in cluster:
            return _cluster_runtime("parameter_server").detect(config)
        num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        if num_workers > 1:
            return _multi_worker(config)

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        return Runtime("mirrored", strategy, num_replicas=strategy.num_replicas_in_sync)
    return Runtime("single", tf.distribute.get_strategy())


def _multi_worker(config: dict[str, Any]) -> Runtime:
    os.environ["TF_CONFIG"] = json.dumps(config)
    tf.config.threading.set_inter_op_parallelism_threads(server_threads(config["cluster"]))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task, cluster = config["task"], config["cluster"]
    has_chief = "chief" in cluster
    is_chief = task["type"] == "chief" or (not has_chief and task["index"] == 0)
    worker_index = task["index"] + (1 if has_chief and task["type"] == "worker" else 0)
    return MultiWorkerRuntime(
        "multi_worker",
        strategy,
        num_replicas=strategy.num_replicas_in_sync,
        is_chief=is_chief,
        worker_index=0 if task["type"] == "chief" else worker_index,
        num_workers=len(cluster.get("worker", [])) + int(has_chief),
    )


def _cluster_runtime(kind: str) -> ModuleType:
    """The module of an optional cluster runtime, or a ClusterConfigError saying it is absent."""
    module = CLUSTER_RUNTIMES.get(kind)
    if module is not None:
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise  # the module is here, something it imports is not: its own error
    asked, instead = _ASKED[kind]
    raise ClusterConfigError(
        f"{asked}, but this project has no {kind} runtime: it was made from the template with "
        f"{kind}=no, or the runtime's module is missing. To train here, {instead}."
    )
