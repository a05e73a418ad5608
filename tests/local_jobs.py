"""The job specs run locally once per session: ``local_job(spec)`` (a pytest plugin, loaded by
tests/conftest.py).

tests/scripts/test_jobs_run.py checks what ``python -m scripts run training/jobs/<spec>.yml``
prints and leaves (log, metrics.json, MLflow runs); tests/training/test_model_export.py loads and
serves the models those runs write. Both take the same run from here instead of training their own:
the first test that asks for a spec runs it (one epoch on real MNIST), later ones reuse it.

A shared run is read, never written: a test that changes a run's folder copies it first
(``shutil.copytree(job.outputs, tmp_path / ...)``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Specs whose run is given the MNIST folder as its input; the others fall back to training's
# own lookup ($MNIST_DATA_DIR), as a workspace data asset (mnist@latest) does locally.
DATA_FROM_A_FOLDER = {"single"}


@dataclass(frozen=True)
class LocalJob:
    """One ``python -m scripts run`` of a spec, as it finished."""

    spec: str
    result: subprocess.CompletedProcess
    outputs: Path  # --outputs: the run is in outputs/job/run, its MLflow store beside it
    tracking_uri: str
    sets: tuple[str, ...]  # the --set flags it ran with

    @property
    def run(self) -> Path:
        """The job's ``run`` output: model/, metrics.json, pictures."""
        return self.outputs / "job" / "run"

    @property
    def log(self) -> str:
        return self.result.stdout + self.result.stderr


def scripts_run(spec: str, folder: Path, sets: tuple[str, ...], timeout: float = 900) -> LocalJob:
    """``python -m scripts run training/jobs/<spec>.yml --outputs folder --name job`` with
    ``--set`` for each of ``sets``, logging to an MLflow store of its own in ``folder``."""
    command = [sys.executable, "-m", "scripts", "run", f"training/jobs/{spec}.yml"]
    command += ["--outputs", str(folder), "--name", "job"]
    for setting in sets:
        command += ["--set", setting]
    tracking_uri = f"sqlite:///{folder}/mlflow.db"
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        capture_output=True,
        text=True,
        timeout=timeout,  # the Horovod spec builds its environment on first use (minutes)
    )
    return LocalJob(spec, result, folder, tracking_uri, sets)


def one_epoch(spec: str, mnist_dir: Path) -> tuple[str, ...]:
    """The shared runs' --set flags: one epoch; the MNIST folder for specs that take one."""
    data = (f"inputs.mnist={mnist_dir}",) if spec in DATA_FROM_A_FOLDER else ()
    return ("inputs.epochs=1", *data)


def files_of(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )


@pytest.fixture(scope="session")
def local_job(
    mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], LocalJob]]:
    """spec name (``single``, ``multi_worker``, ...) -> its run, run the first time it is asked
    for. A failed run is kept too, so every test that needs it reports its log. At the end of
    the session each run's folder must be as its run left it (no test wrote into it)."""
    runs: dict[str, LocalJob] = {}
    as_run: dict[str, dict[str, str]] = {}

    def get(spec: str) -> LocalJob:
        if spec not in runs:
            folder = tmp_path_factory.mktemp(f"job-{spec}")
            runs[spec] = scripts_run(spec, folder, one_epoch(spec, mnist_dir))
            as_run[spec] = files_of(runs[spec].run)
        return runs[spec]

    yield get
    changed = {spec: changed_files(as_run[spec], files_of(job.run)) for spec, job in runs.items()}
    changed = {spec: names for spec, names in changed.items() if names}
    assert not changed, (
        f"Tests changed the shared runs' folders (spec: files): {changed}. A test that changes "
        "a run's files must work on a copy: shutil.copytree(job.outputs, tmp_path / 'run')."
    )
