"""Run a job spec's step on this machine the way Azure ML runs it on a cluster.

The command is the component's, with ``${{inputs.*}}`` and ``${{outputs.*}}`` filled in (each
output is a fresh folder under ``OUTPUTS/<job name>/``), run with ``bash -c`` from the spec's
``code`` folder, with the variables Azure ML sets and the spec's ``environment_variables``.
``distribution`` picks the processes: one for a plain command, one per worker and parameter
server with its ``TF_CONFIG`` for ``type: tensorflow``, and ``horovodrun --gloo`` over the
ranks for ``type: mpi`` with the Horovod virtualenv's ``python`` (``scripts/launch.py``). If
any process fails the others are stopped and its exit status is the run's.

The local Python environment stands in for the spec's ``environment``: ``python`` in the
command is the interpreter running this module.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from scripts import UserError
from scripts.jobspec import LocalPlan, render_command
from scripts.launch import Task, horovod_tasks, run_tasks, tensorflow_tasks

# distribution type -> function(plan, argv) -> the processes to start
Launcher = Callable[[LocalPlan, list[str]], list[Task]]

# Azure ML's rule for a job name; here it also names a folder, so it must stay one folder
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}")


def _tensorflow(plan: LocalPlan, argv: list[str]) -> list[Task]:
    distribution = plan.distribution
    workers = int(distribution.worker_count or plan.instance_count)
    parameter_servers = int(distribution.parameter_server_count or 0)
    if workers < 1:
        raise UserError("distribution.worker_count must be at least 1")
    return tensorflow_tasks(argv, workers, parameter_servers)


def _mpi(plan: LocalPlan, argv: list[str]) -> list[Task]:
    """Azure ML's mpirun, locally: horovodrun over Gloo with the pinned Horovod environment."""
    from training.environments.horovod import build_env

    per_node = int(plan.distribution.process_count_per_instance or 1)
    ranks = int(plan.instance_count or 1) * per_node
    try:
        python = build_env.ensure()  # built once (minutes), then reused
    except build_env.HorovodEnvError as exc:
        raise UserError(str(exc)) from exc
    return horovod_tasks(argv, ranks, str(python))


LAUNCHERS: dict[str, Launcher] = {"tensorflow": _tensorflow, "mpi": _mpi}


@dataclass(frozen=True)
class LocalRun:
    """The result of a local run: exit status, job name and where each output went."""

    status: int
    job_name: str
    outputs: dict[str, Path]
    metrics: dict[str, Any] | None


def job_name_for(plan: LocalPlan, now: float | None = None) -> str:
    """``<spec name>-<YYYYmmdd-HHMMSS>``: unique per second, sortable, readable (characters
    of the spec's name that a job name cannot hold become ``_``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", plan.spec.path.stem).lstrip("_-") or "job"
    return f"{stem[:230]}-{stamp}"


def check_job_name(name: str) -> str:
    """``name`` if it is a job name Azure ML accepts (and so one folder under the outputs)."""
    if not JOB_NAME.fullmatch(name):
        raise UserError(
            f"job name {name!r} is not valid: use 1-255 letters, digits, '-' and '_', starting "
            "with a letter or digit (as Azure ML names jobs); it names the folder OUTPUTS/NAME"
        )
    return name


def file_in_the_way(folder: Path) -> Path | None:
    """The file that ``folder`` is, or lies under (so it cannot be made), if any."""
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            return path
    return None


def prepare_outputs(outputs_root: Path, job_name: str, names: list[str]) -> dict[str, Path]:
    """Make a fresh folder ``OUTPUTS/<job name>/<output>`` for each output.

    Raises ``UserError`` when OUTPUTS is no folder, cannot be written, or already holds this
    job's run (a run never writes over an earlier one).
    """
    root = outputs_root.resolve()
    job_dir = root / check_job_name(job_name)
    blocker = file_in_the_way(job_dir)
    if blocker is not None:
        raise UserError(
            f"{blocker} is a file, not a folder: point --outputs at a folder "
            "(it is made if missing)"
        )
    if job_dir.is_dir() and any(job_dir.iterdir()):
        raise UserError(f"{job_dir} already holds a run: choose another --name or remove it")
    outputs = {name: job_dir / name for name in names}
    try:
        for folder in outputs.values():
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = exc.filename or root
        raise UserError(
            f"cannot make the output folder {where}: {exc.strerror}; "
            "point --outputs at a folder you can write"
        ) from None
    return outputs


def azureml_environment(plan: LocalPlan, job_name: str) -> dict[str, str]:
    """Variables Azure ML sets for a job's processes that training may read."""
    env = {"AZUREML_RUN_ID": job_name}
    if plan.experiment_name:
        env["AZUREML_ARM_PROJECT_NAME"] = plan.experiment_name
        env["MLFLOW_EXPERIMENT_NAME"] = plan.experiment_name
    return env


def tasks_for(plan: LocalPlan, command: str) -> list[Task]:
    """The processes of the step, as its ``distribution`` asks."""
    argv = ["bash", "-c", command]
    distribution = plan.distribution
    if distribution is None:
        return [Task("main", argv)]
    kind = str(distribution.type).lower()
    launcher = LAUNCHERS.get(kind)
    if launcher is None:
        raise UserError(
            f"distribution type {kind!r} does not run locally yet (local runs support: "
            f"{', '.join(sorted(LAUNCHERS))}); submit it to Azure ML (`python -m scripts submit`)"
        )
    return launcher(plan, argv)


def run_plan(
    plan: LocalPlan,
    *,
    outputs_root: Path,
    job_name: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    sink: TextIO | None = None,
) -> LocalRun:
    """Run the step to completion; returns its status, outputs and the metrics training wrote."""
    sink = sink or sys.stdout
    job_name = check_job_name(job_name or job_name_for(plan))
    job_dir = outputs_root.resolve() / job_name
    outputs = {name: job_dir / name for name in plan.outputs}
    command = render_command(
        plan.command_template, plan.inputs, {k: str(v) for k, v in outputs.items()}
    )
    tasks = tasks_for(plan, command)
    outputs = prepare_outputs(outputs_root, job_name, plan.outputs)
    base_env = dict(os.environ if env is None else env)
    # `python` in the command is this interpreter: the local stand-in for the job's environment.
    interpreter_dir = str(Path(sys.executable).parent)
    base_env["PATH"] = os.pathsep.join([interpreter_dir, base_env.get("PATH", "")])
    base_env.update(azureml_environment(plan, job_name))
    base_env.update(plan.environment_variables)
    for note in plan.notes:
        sink.write(f"note: {note}\n")
    sink.write(f"job {job_name}: {len(tasks)} process(es) in {plan.code_dir}\n$ {command}\n")
    sink.flush()
    status = run_tasks(tasks, cwd=plan.code_dir, base_env=base_env, timeout=timeout, sink=sink)
    return LocalRun(status, job_name, outputs, _metrics(outputs))


def _metrics(outputs: Mapping[str, Path]) -> dict[str, Any] | None:
    for folder in outputs.values():
        path = folder / "metrics.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                return None
    return None
