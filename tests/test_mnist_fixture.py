"""The ``mnist_dir`` fixture: a test that needs MNIST skips on a laptop without the data and
fails in CI (``CI=true``), where the data is always laid beside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NEEDS_MNIST = """
def test_needs_mnist(mnist_dir):
    assert (mnist_dir / "t10k-labels-idx1-ubyte.gz").is_file()
"""


def _run_pytest(tmp_path: Path, env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    """Run a one-test file that asks for ``mnist_dir`` under this repository's conftest."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (suite / "test_needs_mnist.py").write_text(NEEDS_MNIST)
    env = {k: v for k, v in os.environ.items() if k not in env_changes}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(suite)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("ci", "exit_code", "summary"),
    [
        ("true", 1, "1 error"),
        ("1", 1, "1 error"),
        (None, 0, "1 skipped"),
        ("false", 0, "1 skipped"),
    ],
)
def test_missing_mnist_fails_in_ci_and_skips_elsewhere(
    tmp_path: Path, ci: str | None, exit_code: int, summary: str
) -> None:
    result = _run_pytest(tmp_path, {"CI": ci, "MNIST_DATA_DIR": str(tmp_path / "nowhere")})
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output
    assert summary in output, output
    assert "MNIST_DATA_DIR" in output and str(tmp_path / "nowhere") in output, output


def test_present_mnist_is_used_in_ci(tmp_path: Path, mnist_dir: Path) -> None:
    result = _run_pytest(tmp_path, {"CI": "true", "MNIST_DATA_DIR": str(mnist_dir)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
