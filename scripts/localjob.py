"""Run a job spec's step on this machine the way Azure ML runs it on a cluster.

The command is the component's, with ``${{inputs.*}}`` and ``${{outputs.*}}`` filled in (each
output is a fresh folder under ``OUTPUTS/<job name>/``), run with ``bash -c`` from the spec's
``code`` folder, with the variables Azure ML sets and the spec's ``environment_variables``.
``distribution`` picks the processes: one for a plain command, one per worker and parameter
server with its ``TF_CONFIG`` for ``type: tensorflow`` (``scripts/launch.py``), and the
launchers ``LAUNCHERS`` imports on first use for the others (``type: mpi``: Horovod's ranks).
A distribution this project was made without is refused with one message, before anything
starts. If any process fails the others are stopped and its exit status is the run's.

The local Python environment stands in for the spec's ``environment``: ``python`` in the
command is the interpreter running this module.

``local_plan`` resolves what that takes from a spec loaded by ``scripts/jobspec.py`` (the
command, the inputs as local values, the code folder, the distribution); ``run_plan`` runs it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from scripts import UserError
from scripts.jobspec import DATA_TYPES, Spec, display_path, parse_asset_ref
from scripts.launch import Task, run_tasks, tensorflow_tasks
from training.runtime import CLUSTER_RUNTIMES

_PLACEHOLDER = re.compile(r"\$\{\{\s*([A-Za-z_]+)\.([A-Za-z0-9_.]+)\s*\}\}")
_OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)


# ---------------------------------------------------------------------------- the plan


@dataclass
class LocalPlan:
    """What running a spec's step on this machine needs, resolved from the loaded spec."""

    spec: Spec
    command_template: str
    code_dir: Path
    inputs: dict[str, str | None]  # name -> value as the command gets it (None: unset)
    outputs: list[str]
    distribution: Any  # azure.ai.ml distribution object, or None
    instance_count: int
    environment_variables: dict[str, str]
    experiment_name: str | None
    notes: list[str] = field(default_factory=list)


def local_plan(spec: Spec) -> LocalPlan:
    """Resolve the step of ``spec`` for a local run (inputs, code folder, distribution)."""
    if spec.kind == "sweep":
        raise UserError(
            f"{display_path(spec.path)} is a hyperparameter sweep, which only Azure ML runs "
            "(`python -m scripts submit`); try one trial locally with e.g. "
            "`python -m scripts run training/jobs/single.yml --set inputs.batch_size=128`"
        )
    step, component = spec.step, spec.component
    source = component if component is not None else step
    command = getattr(source, "command", None)
    if not command:
        raise UserError(f"{display_path(spec.path)}: the step has no command to run")
    declared = dict(source.inputs or {})
    notes: list[str] = []
    inputs = {
        name: _local_input(spec, name, declared.get(name), (step.inputs or {}).get(name), notes)
        for name in set(declared) | set(step.inputs or {})
    }
    resources = getattr(step, "resources", None)
    environment_variables = {
        **{k: str(v) for k, v in (getattr(component, "environment_variables", None) or {}).items()},
        **{k: str(v) for k, v in (getattr(step, "environment_variables", None) or {}).items()},
    }
    return LocalPlan(
        spec=spec,
        command_template=command,
        code_dir=_code_dir(spec, source),
        inputs=inputs,
        outputs=sorted((source.outputs or {}).keys()),
        distribution=getattr(step, "distribution", None),
        instance_count=int(getattr(resources, "instance_count", None) or 1),
        environment_variables=environment_variables,
        experiment_name=getattr(spec.job, "experiment_name", None),
        notes=notes,
    )


def _code_dir(spec: Spec, source: Any) -> Path:
    code = getattr(source, "code", None)
    if code is None:
        raise UserError(f"{display_path(spec.path)}: the step has no `code` folder to run in")
    if not isinstance(code, str | Path):
        code = getattr(code, "path", code)
    base = Path(getattr(source, "base_path", None) or spec.path.parent)
    folder = (base / str(code)).resolve()
    if not folder.is_dir():
        raise UserError(f"{display_path(spec.path)}: its code folder {folder} does not exist")
    return folder


def _local_input(spec: Spec, name: str, declared: Any, bound: Any, notes: list[str]) -> str | None:
    value = getattr(bound, "_data", bound)
    if isinstance(value, str) and value.startswith("${{parent.inputs."):
        parent = value.strip("${} ").split(".", 2)[2]
        value = getattr(spec.job.inputs.get(parent), "_data", spec.job.inputs.get(parent))
    optional = bool(getattr(declared, "optional", False))
    if value is None:
        value = getattr(declared, "default", None)
    if value is None:
        return None
    if getattr(value, "type", None) in DATA_TYPES or hasattr(value, "path"):
        return _local_data(spec, name, value, optional, notes)
    if hasattr(value, "default") and not isinstance(value, str | int | float | bool):
        value = value.default
    return None if value is None else str(value)


def _local_data(spec: Spec, name: str, value: Any, optional: bool, notes: list[str]) -> str | None:
    raw = str(value.path or "")
    local = Path(raw.removeprefix("file:")).expanduser()
    if not local.is_absolute():
        local = spec.path.parent / local
    if local.exists():
        return str(local.resolve())
    remote = "://" in raw or parse_asset_ref("data", raw) is not None
    if not remote:
        raise UserError(f"inputs.{name}: {raw} does not exist on this machine")
    if optional:
        notes.append(
            f"inputs.{name} is {raw!r} in the workspace; here the step runs without this "
            "optional input (training then reads $MNIST_DATA_DIR or its download cache); "
            f"--set inputs.{name}=FOLDER picks a local folder"
        )
        return None
    raise UserError(
        f"inputs.{name} is {raw!r}, which exists only in the workspace: "
        f"pass a local copy with --set inputs.{name}=FOLDER"
    )


def render_command(
    template: str, inputs: Mapping[str, str | None], outputs: Mapping[str, str]
) -> str:
    """The command with ``${{inputs.*}}``/``${{outputs.*}}`` filled in, as Azure ML fills it.

    A ``$[[...]]`` block is kept only when every input it names has a value. Values are
    shell-quoted (local paths may hold spaces). Raises ``UserError`` for a required input
    without a value or a placeholder this runner does not know.
    """

    def block(match: re.Match[str]) -> str:
        names = [
            m.group(2) for m in _PLACEHOLDER.finditer(match.group(1)) if m.group(1) == "inputs"
        ]
        return match.group(1) if all(inputs.get(n) is not None for n in names) else ""

    def value(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        source = inputs if kind == "inputs" else outputs if kind == "outputs" else None
        if source is None:
            raise UserError(
                f"the command uses ${{{{{kind}.{name}}}}}, which a local run cannot fill"
            )
        if name not in source:
            raise UserError(
                f"the command uses ${{{{{kind}.{name}}}}}, but the step has no {kind[:-1]} {name!r}"
            )
        text = source[name]
        if text is None:
            raise UserError(f"inputs.{name} is required: set it with --set inputs.{name}=VALUE")
        return shlex.quote(text)

    command = _OPTIONAL_BLOCK.sub(block, template)
    return " ".join(_PLACEHOLDER.sub(value, command).split())


# ---------------------------------------------------------------------------- running it

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
    if parameter_servers and "parameter_server" not in CLUSTER_RUNTIMES:
        raise _left_out(plan, "parameter_server")
    return tensorflow_tasks(argv, workers, parameter_servers)


def _left_out(plan: LocalPlan, kind: str) -> UserError:
    """The refusal of a spec whose distribution this project does not have."""
    asks, option = LEFT_OUT[kind]
    return UserError(
        f"{display_path(plan.spec.path)} asks for {asks}, which this project does not have: it "
        f"was made from the template with {option}=no, or that support was removed. Run the "
        "step without it, e.g. training/jobs/multi_worker.yml (`distribution: type: "
        "tensorflow`, workers only), or make the project again with "
        f"{option}=yes. Nothing was started or written."
    )


def _launcher(plan: LocalPlan, kind: str) -> Launcher | None:
    """The launcher of a distribution type; None when it has none (or its module is gone)."""
    launcher = LAUNCHERS.get(kind)
    if not isinstance(launcher, str):
        return launcher
    module, _, function = launcher.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None


# distribution type -> its launcher, or "module:function" for one imported on first use (its
# module and the environment it needs exist only in projects made with that option)
LAUNCHERS: dict[str, Launcher | str] = {
    "tensorflow": _tensorflow,
    # fork:begin horovod
    "mpi": "scripts.horovod_launch:mpi_tasks",
    # fork:end horovod
}

# What a distribution the template may leave out asks for, and the template option it needs.
LEFT_OUT = {
    "mpi": ("`distribution: type: mpi` (Horovod over MPI)", "horovod"),
    "parameter_server": (
        "parameter servers (`parameter_server_count` in its `distribution`)",
        "parameter_server",
    ),
}


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
    launcher = _launcher(plan, kind)
    if launcher is None and kind in LEFT_OUT:
        raise _left_out(plan, kind)
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
