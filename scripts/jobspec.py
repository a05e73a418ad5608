"""Job specs (training/jobs/*.yml) as azure-ai-ml loads them, checked, with ``--set`` applied.

Every job in ``training/jobs/`` is a one-step pipeline around one command component,
``training/jobs/components/train.yml`` (the only place that says what training runs: code,
command, inputs, outputs, environment). A variant adds what differs: node count,
``distribution``, a hyperparameter search. Each file is a complete spec that ``az ml job
create -f`` accepts, and this module loads it with azure-ai-ml's own ``load_job`` so the local
runner (``scripts/localjob.py``) and ``submit`` read the same object.

``--set KEY=VALUE`` overrides work like the Azure CLI's ``--set`` (``params_override``), with
one convenience: ``inputs.NAME`` addresses the input of the job's single step, and for a data
input it replaces the path (a local folder is made absolute here, so it means what the user
typed).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
JOBS_DIR = REPO_ROOT / "training" / "jobs"
DATA_SPECS_DIR = JOBS_DIR / "data"
ENVIRONMENTS_DIR = REPO_ROOT / "training" / "environments"

DATA_TYPES = frozenset({"uri_folder", "uri_file", "mltable", "mlflow_model", "custom_model"})
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
# azureml:NAME@LABEL, azureml:NAME:VERSION (the prefix is optional once the SDK has loaded it)
_ASSET_REF = re.compile(
    r"^(?:azureml:)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<label>\w+)|:(?P<version>[^:/]+))$"
)


def quiet_sdk() -> None:
    """Hide azure-ai-ml's 'experimental class' notices, which say nothing about the user's spec."""
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Spec:
    """A loaded job spec: the azure-ai-ml job, and its single step when it is a pipeline."""

    path: Path
    job: Any  # azure.ai.ml.entities.Job (PipelineJob, CommandJob, SweepJob)
    step_name: str | None  # the pipeline's only node, None for a standalone job
    overrides: tuple[dict[str, Any], ...] = ()

    @property
    def step(self) -> Any:
        """What runs: the pipeline's node (Command or Sweep), or the job itself."""
        return self.job.jobs[self.step_name] if self.step_name else self.job

    @property
    def component(self) -> Any:
        """The command component of the step (a sweep's trial), or None for a command job."""
        step = self.step
        return getattr(step, "trial", None) or getattr(step, "component", None)

    @property
    def kind(self) -> str:
        """``command`` or ``sweep``."""
        return str(self.step.type)


def parse_sets(items: Iterable[str]) -> list[tuple[str, Any]]:
    """``KEY=VALUE`` pairs; each VALUE is read as YAML (``2`` an int, ``1e-3`` a float)."""
    pairs = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set inputs.epochs=2")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 as text
        pairs.append((key, text if isinstance(value, dict | list) else value))
    return pairs


def _load_job(path: Path, overrides: Sequence[dict[str, Any]] = (), sets: str = "") -> Any:
    """azure-ai-ml's ``load_job``; ``sets`` names the ``--set`` options when they are to blame."""
    quiet_sdk()
    from azure.ai.ml import load_job
    from azure.ai.ml.exceptions import ValidationException
    from marshmallow import ValidationError

    try:
        return load_job(path, params_override=list(overrides))
    except (ValidationError, ValidationException) as exc:
        if sets:
            raise UserError(
                f"{sets} makes {display_path(path)} invalid: {_first_error(exc)}"
            ) from None
        raise UserError(
            f"{display_path(path)} is not a valid Azure ML job spec: {_first_error(exc)}"
        ) from None


def _first_error(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc)
    messages = re.findall(r'"message":\s*"((?:[^"\\]|\\.)*)"', text)
    if messages:
        text = messages[0].encode().decode("unicode_escape")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:6])[:600]


def display_path(path: Path) -> str:
    """``path`` relative to the working folder when it is under it (for messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_spec(
    path: str | Path, sets: Sequence[tuple[str, Any]] = (), *, cwd: Path | None = None
) -> Spec:
    """Load a job spec with azure-ai-ml's ``load_job`` and apply ``--set`` overrides.

    Raises ``UserError`` for a missing, unreadable or non-UTF-8 file, an invalid spec, a
    component file that does not exist, or an override that names no input or a bad value.
    """
    path = Path(path)
    _check_spec_file(path)
    base = _load_job(path)
    step_name = _single_step(base, path)
    overrides = tuple(
        _override(base, step_name, key, value, cwd or Path.cwd()) for key, value in sets
    )
    named = " ".join(f"--set {key}={_shown(value)}" for key, value in sets)
    job = _load_job(path, overrides, named) if overrides else base
    _apply_step_environment(job, step_name)
    return Spec(path.resolve(), job, step_name, overrides)


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_spec_file(path: Path) -> None:
    """Refuse what ``load_job`` would answer with a traceback or an obscure message."""
    hint = ", ".join(sorted(p.name for p in JOBS_DIR.glob("*.yml")))
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a job spec: name a file, e.g. {hint}")
    if not path.is_file():
        raise UserError(
            f"no job spec at {path} (the specs are in {display_path(JOBS_DIR)}: {hint})"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"cannot read the job spec {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}): a job spec is a YAML file; save it as UTF-8"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # load_job says where the syntax breaks
    for step_name, reference in _component_files(raw):
        component = (path.parent / reference).resolve()
        if not component.is_file():
            raise UserError(
                f"{display_path(path)}: step {step_name!r} runs the component file {reference}, "
                f"which does not exist at {component}: fix the path (relative to the spec)"
            )


def _component_files(raw: Any) -> list[tuple[str, str]]:
    """(step, path) for each pipeline step whose component (or trial) is a local file."""
    steps = raw.get("jobs") if isinstance(raw, dict) else None
    found = []
    for name, step in steps.items() if isinstance(steps, dict) else ():
        reference = step.get("component") or step.get("trial") if isinstance(step, dict) else None
        if isinstance(reference, str) and not reference.startswith("azureml:"):
            found.append((str(name), reference))
    return found


def _apply_step_environment(job: Any, step_name: str | None) -> None:
    """Make a step's ``environment`` the one its component runs in.

    azure-ai-ml loads a pipeline step's ``environment`` but does not send it (the REST body
    of a step has no environment: the component's wins), so the Horovod step would run in the
    component's TensorFlow 2.21 image. Setting it on the step's own copy of the component
    makes the SDK register an anonymous component with that environment.
    """
    step = job.jobs[step_name] if step_name else None
    component = getattr(step, "component", None)
    environment = getattr(step, "environment", None)
    if environment and component is not None and not isinstance(component, str):
        component.environment = environment


def _single_step(job: Any, path: Path) -> str | None:
    if job.type != "pipeline":
        return None
    if len(job.jobs) != 1:
        raise UserError(
            f"{display_path(path)} has {len(job.jobs)} steps; these commands handle one-step "
            "pipelines (one command or sweep node), like every spec in training/jobs/"
        )
    return next(iter(job.jobs))


def _override(job: Any, step_name: str | None, key: str, value: Any, cwd: Path) -> dict[str, Any]:
    """One ``--set`` as a ``params_override`` entry on the YAML of the spec."""
    if not key.startswith("inputs."):
        return {key: value}
    name = key.split(".", 1)[1]
    step = job.jobs[step_name] if step_name else job
    component = getattr(step, "trial", None) or getattr(step, "component", None)
    declared = dict(component.inputs) if component is not None else dict(step.inputs)
    if name not in declared:
        raise UserError(
            f"--set {key}: the job has no input {name!r} "
            f"(its inputs: {', '.join(sorted(declared))})"
        )
    prefix = f"jobs.{step_name}.inputs.{name}" if step_name else f"inputs.{name}"
    input_type = _input_type(declared[name], step.inputs.get(name))
    if input_type in DATA_TYPES:
        if not str(value).strip():
            raise UserError(f"--set {key}=: give a folder, e.g. --set {key}=/data/mnist")
        local = Path(str(value)).expanduser()
        local = local if local.is_absolute() else cwd / local
        path = str(local.resolve()) if local.exists() else str(value)
        return {prefix: {"type": input_type, "path": path}}
    _check_literal(key, declared[name], value)
    return {prefix: value}


_LITERAL_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _check_literal(key: str, declared: Any, value: Any) -> None:
    """Check a literal against the component's declared type and bounds, as Azure ML would."""
    expected = _LITERAL_TYPES.get(str(getattr(declared, "type", "")))
    if expected is None:
        return
    shown = _shown(value)
    if (
        not isinstance(value, expected)
        or (isinstance(value, bool) and bool not in expected)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        finite = "finite " if isinstance(value, float) and not math.isfinite(value) else ""
        noun = f"{finite}{declared.type}"
        article = "an" if noun[0] in "aeiou" else "a"
        raise UserError(f"--set {key}={shown}: expected {article} {noun}")
    low, high = getattr(declared, "min", None), getattr(declared, "max", None)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UserError(f"--set {key}={shown}: must be {bounds}")


def _input_type(declared: Any, bound: Any) -> str | None:
    data = getattr(bound, "_data", bound)
    return getattr(data, "type", None) or getattr(declared, "type", None)


# ---------------------------------------------------------------------------- assets


@dataclass(frozen=True)
class AssetRef:
    """``azureml:NAME@LABEL`` or ``azureml:NAME:VERSION`` in a spec."""

    kind: str  # environment | data
    name: str
    version: str | None
    label: str | None


def parse_asset_ref(kind: str, text: str | None) -> AssetRef | None:
    """The workspace asset ``text`` names, or None for a path, a URL or an inline definition."""
    if not isinstance(text, str) or "://" in text or text.startswith(("/", ".", "file:")):
        return None
    match = _ASSET_REF.match(text.strip())
    if not match or (kind == "data" and not (match["label"] or match["version"])):
        return None
    return AssetRef(kind, match["name"], match["version"], match["label"])


def asset_refs(spec: Spec) -> list[AssetRef]:
    """Environments and data assets the spec refers to by name (what must exist to submit)."""
    refs: list[AssetRef | None] = []
    step, component = spec.step, spec.component
    # both: azure-ai-ml resolves the component's environment even when the step overrides it
    for environment in (
        getattr(step, "environment", None),
        getattr(component, "environment", None),
    ):
        refs.append(parse_asset_ref("environment", _as_text(environment)))
    for source in (getattr(spec.job, "inputs", {}) or {}, step.inputs or {}):
        for value in source.values():
            data = getattr(value, "_data", value)
            if getattr(data, "type", None) in DATA_TYPES:
                refs.append(parse_asset_ref("data", getattr(data, "path", None)))
    unique: dict[tuple[str, str], AssetRef] = {}
    for ref in refs:
        if ref is not None:
            unique.setdefault((ref.kind, ref.name), ref)
    return list(unique.values())


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return None  # an inline Environment object: nothing to look up


@dataclass(frozen=True)
class LocalAssetSpec:
    """An environment or data asset spec file in this repository."""

    kind: str
    name: str
    version: str
    path: Path


def local_asset_specs() -> dict[tuple[str, str], LocalAssetSpec]:
    """(kind, name) -> spec file, for training/environments/*/environment.yml and the data specs."""
    found: dict[tuple[str, str], LocalAssetSpec] = {}
    sources = [("environment", p) for p in sorted(ENVIRONMENTS_DIR.glob("*/environment.yml"))]
    sources += [("data", p) for p in sorted(DATA_SPECS_DIR.glob("*.yml"))]
    for kind, path in sources:
        raw = yaml.safe_load(path.read_text()) or {}
        if raw.get("name") and raw.get("version") is not None:
            found[(kind, str(raw["name"]))] = LocalAssetSpec(
                kind, str(raw["name"]), str(raw["version"]), path
            )
    return found


def dump_job(job: Any) -> str:
    """The job as YAML, the way azure-ai-ml serialises it (what ``--dry-run`` prints)."""
    return yaml.safe_dump(job._to_dict(), sort_keys=False, default_flow_style=False)
