"""Shared fixtures. Tests that need MNIST read it from MNIST_DATA_DIR (``.ci/run`` and the
Makefile point it at ../shared/data/mnist when that folder exists)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = os.environ.get("MNIST_DATA_DIR")
    if not folder or not Path(folder).is_dir():
        pytest.skip(
            "MNIST_DATA_DIR is not set to a folder with the four MNIST .gz files "
            "(run the suite with `make test`, which points it at ../shared/data/mnist)"
        )
    return Path(folder)


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
