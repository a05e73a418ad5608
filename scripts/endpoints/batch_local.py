"""Run a batch scoring script on this machine the way Azure ML's batch driver runs it.

Client side, not uploaded (.amlignore). ``python -m scripts batch-score --local DIR`` calls
:func:`run_local`. It reads its settings from the deployment spec (serving/batch/deployment.yml,
through azure-ai-ml's loader), so the local run and the endpoint score alike, and follows the
batch driver's rules for model deployments over a ``uri_folder`` input:

- every file under the input folder, subfolders included, is an input; mini-batches of
  ``mini_batch_size`` files are formed in file (path) order, the last one shorter;
- the script is imported once and ``init()`` runs once (per process: this runs one), with
  ``AZUREML_MODEL_DIR`` and the deployment's ``environment_variables`` set, and its log
  records at ``logging_level`` and above on stderr; an ``init()`` that raises fails the job;
- ``run(mini_batch)`` gets absolute file paths; one that raises is retried up to
  ``max_retries`` times, and then every file of its mini-batch has failed; one that returns
  fewer elements than files has failed that many (one element per file scored);
- failures add up over the whole input; once they exceed ``error_threshold`` the job stops
  and fails (``-1``: never);
- ``output_action: append_row`` appends every element of every mini-batch to one output file:
  a list element as its text on one line, a pandas DataFrame's rows space-separated without a
  header. The file appears only when the job completes (replacing any earlier one), as a job's
  output does; a failed job leaves none. ``summary_only`` writes no rows.

Not emulated: parallel processes and nodes (one process scores in order, so the output is in
file order; Azure appends mini-batches as they finish), and ``retry_settings.timeout``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BATCH_DIR = Path(__file__).resolve().parents[2] / "serving" / "batch"
DEPLOYMENT_SPEC = BATCH_DIR / "deployment.yml"
OUTPUT_ACTIONS = ("append_row", "summary_only")
LOGGING_LEVELS = ("debug", "info", "warning")


class BatchInputError(ValueError):
    """The input folder, output file, model folder or settings are unusable (what, where, fix)."""


class BatchJobFailed(RuntimeError):
    """The job failed as Azure's would: init() raised, or failures went over error_threshold."""


@dataclass(frozen=True)
class Settings:
    """The batch deployment's settings that decide how files are scored and written."""

    scoring_script: Path
    mini_batch_size: int = 10
    error_threshold: int = -1
    max_retries: int = 3
    output_action: str = "append_row"
    output_file_name: str = "predictions.csv"
    logging_level: str = "info"
    environment_variables: tuple[tuple[str, str], ...] = ()

    def check(self) -> None:
        problems = []
        if self.mini_batch_size < 1:
            problems.append(f"mini_batch_size is {self.mini_batch_size}; it must be 1 or more")
        if self.error_threshold < -1:
            problems.append(
                f"error_threshold is {self.error_threshold}; it must be -1 (ignore every "
                "failure) or a count of files, 0 or more"
            )
        if self.max_retries < 0:
            problems.append(f"max_retries is {self.max_retries}; it must be 0 or more")
        if self.output_action not in OUTPUT_ACTIONS:
            problems.append(f"output_action is {self.output_action!r}; one of {OUTPUT_ACTIONS}")
        if self.logging_level.lower() not in LOGGING_LEVELS:
            problems.append(f"logging_level is {self.logging_level!r}; one of {LOGGING_LEVELS}")
        if not self.scoring_script.is_file():
            problems.append(f"the scoring script {self.scoring_script} does not exist")
        if problems:
            raise BatchInputError("Unusable batch settings: " + "; ".join(problems) + ".")


def settings_from_spec(spec: Path = DEPLOYMENT_SPEC, **overrides: Any) -> Settings:
    """The settings of a batch deployment spec, loaded with azure-ai-ml; ``overrides`` that are
    not None replace them (the command line's flags)."""
    deployment = load_deployment(spec)
    code = Path(deployment.base_path) / (deployment.code_configuration.code or ".")
    retry = deployment.retry_settings
    settings = Settings(
        scoring_script=(code / deployment.code_configuration.scoring_script).resolve(),
        mini_batch_size=_or(deployment.mini_batch_size, 10),
        error_threshold=_or(deployment.error_threshold, -1),
        max_retries=_or(retry.max_retries if retry else None, 3),
        output_action=str(_or(deployment.output_action, "append_row")),
        output_file_name=_or(deployment.output_file_name, "predictions.csv"),
        logging_level=str(_or(deployment.logging_level, "info")),
        environment_variables=tuple(sorted((deployment.environment_variables or {}).items())),
    )
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def load_deployment(spec: Path = DEPLOYMENT_SPEC) -> Any:
    """The batch deployment spec as azure-ai-ml's ``BatchDeployment``."""
    from azure.ai.ml import load_batch_deployment

    with warnings_off():
        return load_batch_deployment(spec)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


@contextlib.contextmanager
def warnings_off() -> Iterator[None]:
    """azure-ai-ml warns that the flat (model) deployment form uses its base class: it is the
    form `az ml` and the SDK both read, so the warning tells users nothing."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class Report:
    """What a completed local job did (Azure's job overview, in short)."""

    files: int
    mini_batches: int
    failed_files: int
    retries: int
    rows: int
    output: Path | None
    seconds: float


def input_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (subfolders too), in path order: the job's input."""
    if not folder.exists():
        raise BatchInputError(
            f"Input folder {folder} does not exist: pass the folder that holds the images."
        )
    if not folder.is_dir():
        raise BatchInputError(
            f"Input {folder} is a file, not a folder: batch scoring reads every file in a "
            "folder; put the images in one and pass it."
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise BatchInputError(
            f"Input folder {folder} has no files: copy the images (PNG) into it first."
        )
    return files


def check_output(path: Path) -> None:
    """Refuse an output path that cannot become a file, before any scoring starts."""
    if path.is_dir():
        raise BatchInputError(
            f"Output {path} is a folder: name the CSV file to write, e.g. "
            f"{path / 'predictions.csv'}."
        )
    if not path.parent.is_dir():
        raise BatchInputError(
            f"Cannot write {path}: folder {path.parent} does not exist. Create it, or write "
            "the CSV somewhere that exists."
        )
    if not os.access(path.parent, os.W_OK):
        raise BatchInputError(f"Cannot write {path}: folder {path.parent} is not writable.")


def load_script(path: Path) -> Any:
    """Import the scoring script as a fresh module, as the driver does (by file, not package)."""
    name = f"batch_scoring_script_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BatchInputError(f"Cannot import the scoring script {path}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    for function in ("init", "run"):
        if not callable(getattr(module, function, None)):
            raise BatchInputError(
                f"The scoring script {path} has no {function}() function: a batch scoring "
                "script defines init() and run(mini_batch)."
            )
    return module


@contextlib.contextmanager
def job_environment(model_dir: Path, settings: Settings) -> Iterator[None]:
    """AZUREML_MODEL_DIR, the deployment's variables and its logging level, for the job only."""
    values = {**dict(settings.environment_variables), "AZUREML_MODEL_DIR": str(model_dir)}
    saved = {name: os.environ.get(name) for name in values}
    root = logging.getLogger()
    level = root.level
    handler = logging.StreamHandler()  # the script's log lines, as the job's user logs show them
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    os.environ.update(values)
    root.setLevel(settings.logging_level.upper())
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def elements(result: Any) -> tuple[list[str], int]:
    """The lines append_row writes for one run() result, and how many elements it has."""
    if hasattr(result, "to_csv") and hasattr(result, "columns"):  # a pandas DataFrame
        text = result.to_csv(sep=" ", header=False, index=False)
        return text.splitlines(), len(result)
    if isinstance(result, list | tuple):
        return [str(element) for element in result], len(result)
    raise TypeError(
        f"run() returned {type(result).__name__}; it must return a list or a pandas DataFrame "
        "with one element per file it scored"
    )


def run_local(
    input_dir: Path,
    output: Path,
    model_dir: Path,
    settings: Settings,
    *,
    log: Callable[[str], None] = lambda line: None,
) -> Report:
    """Score every file under ``input_dir`` with the settings' script; write ``output``.

    Raises :class:`BatchInputError` before anything runs when an input is unusable, and
    :class:`BatchJobFailed` when the job fails (nothing is written then).
    """
    settings.check()
    files = input_files(input_dir)
    check_output(output)
    if not model_dir.exists():
        raise BatchInputError(
            f"Model folder {model_dir} does not exist: train one (`python -m training.train`) "
            "and pass its outputs/model folder (or the folder above it) with --model-dir."
        )
    paths = [str(path.resolve()) for path in files]
    batches = [
        paths[i : i + settings.mini_batch_size]
        for i in range(0, len(paths), settings.mini_batch_size)
    ]
    start = time.monotonic()
    failed = retries = rows = 0
    with (
        job_environment(model_dir.resolve(), settings),
        tempfile.NamedTemporaryFile(
            "w", dir=output.parent, prefix=f".{output.name}.", suffix=".part", delete=False
        ) as part,
    ):
        try:
            script = load_script(settings.scoring_script)
            try:
                script.init()
            except Exception as exc:
                raise BatchJobFailed(
                    f"init() of {settings.scoring_script.name} failed, so the job failed before "
                    f"scoring any file: {exc}"
                ) from exc
            for number, batch in enumerate(batches, start=1):
                lines, scored, attempts = _run_with_retries(script, batch, settings, log, number)
                retries += attempts - 1
                failed += len(batch) - min(scored, len(batch))
                if settings.output_action == "append_row":
                    part.writelines(line + "\n" for line in lines)
                    rows += len(lines)
                if settings.error_threshold != -1 and failed > settings.error_threshold:
                    raise BatchJobFailed(
                        f"{failed} file(s) failed by mini-batch {number} of {len(batches)}, "
                        f"over error_threshold {settings.error_threshold}: the job stopped "
                        "(as Azure ML stops it) and wrote no output. Fix what failed (the "
                        "messages above), or raise --error-threshold (-1 ignores failures)."
                    )
            part.close()
            if settings.output_action == "append_row":
                os.replace(part.name, output)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part.name)
    written = output if settings.output_action == "append_row" else None
    seconds = time.monotonic() - start
    return Report(len(files), len(batches), failed, retries, rows, written, seconds)


def _run_with_retries(
    script: Any, batch: list[str], settings: Settings, log: Callable[[str], None], number: int
) -> tuple[list[str], int, int]:
    """(lines, elements, attempts) of one mini-batch; no lines and 0 elements when every
    attempt raised."""
    for attempt in range(1, settings.max_retries + 2):
        try:
            lines, count = elements(script.run(list(batch)))
            return lines, count, attempt
        except Exception as exc:
            log(
                f"mini-batch {number} ({os.path.basename(batch[0])}...): run() failed on "
                f"attempt {attempt} of {settings.max_retries + 1}: {type(exc).__name__}: {exc}"
            )
    return [], 0, settings.max_retries + 1
