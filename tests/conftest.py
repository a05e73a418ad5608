"""Shared fixtures. Tests that need MNIST take the ``mnist_dir`` fixture: ``MNIST_DATA_DIR``, else
../shared/data/mnist. Without the data they skip on a laptop and fail in CI (``CI=true``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def find_mnist(env: dict[str, str]) -> Path | None:
    """The MNIST folder: ``MNIST_DATA_DIR`` if set, else ../shared/data/mnist; None if neither
    holds the four files."""
    folder = Path(env["MNIST_DATA_DIR"]) if env.get("MNIST_DATA_DIR") else SHARED_MNIST
    if all((folder / name).is_file() for name in MNIST_FILES):
        return folder
    return None


def missing_mnist_outcome(env: dict[str, str]) -> tuple[str, str]:
    """("fail" | "skip", why) for a test that needs MNIST and has none: CI has the data, so
    there a missing folder is a broken setup, not a reason to pass quietly."""
    where = env.get("MNIST_DATA_DIR") or str(SHARED_MNIST)
    why = (
        f"MNIST is not in {where} (the four IDX .gz files). Point MNIST_DATA_DIR at a folder "
        "that has them, or run the suite with `make test`, which uses ../shared/data/mnist."
    )
    ci = env.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ("fail" if ci else "skip"), why


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = find_mnist(dict(os.environ))
    if folder is None:
        outcome, why = missing_mnist_outcome(dict(os.environ))
        if outcome == "fail":
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    # Subprocesses (training, the local runner, the scoring server) read it from here.
    os.environ["MNIST_DATA_DIR"] = str(folder)
    return folder


def run_main(*args: str) -> int:
    """``python -m training.train ARGS`` in this process, its signal handlers put back after."""
    from training.train import main

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return main(list(args))
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@pytest.fixture
def run_python(tmp_path):
    """Run ``python -m ...`` from the project root; returns the CompletedProcess.

    MLflow logs to a store in the test's own folder, never to the developer's mlflow.db."""
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 600):
        return subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


# The trained model and the scoring server, shared by tests/serving and tests/scripts;
# the job specs run once (local_job), shared by tests/scripts and
# tests/training/test_model_export.py.
pytest_plugins = ["tests.serving.server_fixtures", "tests.local_jobs"]
