""".github/scripts/job_report.py: train.yml's accuracy gate and job summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workflows.workflow_files import ROOT

SCRIPT = ROOT / ".github" / "scripts" / "job_report.py"


def gate(tmp_path: Path, metrics: object, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    path = tmp_path / "metrics.json"
    path.write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    summary = tmp_path / "summary.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), *args],
        capture_output=True,
        text=True,
        env={"GITHUB_STEP_SUMMARY": str(summary), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    return result, summary.read_text() if summary.exists() else ""


METRICS = {"test_accuracy": 0.9812, "test_loss": 0.0631, "epochs": 20}


def test_passes_at_or_above_the_threshold_and_writes_the_metrics_table(tmp_path):
    result, summary = gate(tmp_path, METRICS, "--min-accuracy", "0.9812", "--job", "brave_fox")
    assert result.returncode == 0, result.stderr
    assert "### Training job `brave_fox`" in summary
    assert "passed: test_accuracy 0.9812 >= 0.9812" in summary
    assert "| `test_loss` | 0.0631 |" in summary and "| `epochs` | 20 |" in summary


@pytest.mark.parametrize(
    ("metrics", "words"),
    [
        ({**METRICS, "test_accuracy": 0.9689}, "FAILED: test_accuracy 0.9689 is below 0.9700"),
        ({"test_loss": 0.1}, "FAILED: the run reported no test_accuracy"),
        ({"test_accuracy": "high"}, "FAILED: the run reported no test_accuracy"),
    ],
)
def test_fails_below_the_threshold_or_without_accuracy(tmp_path, metrics, words):
    result, summary = gate(tmp_path, metrics, "--min-accuracy", "0.97")
    assert result.returncode == 1
    assert words in summary


def test_unreadable_metrics_and_bad_thresholds_fail_with_a_message(tmp_path):
    result, _ = gate(tmp_path, "{not json", "--min-accuracy", "0.9")
    assert result.returncode == 1 and "is not JSON" in result.stderr
    result, _ = gate(tmp_path, METRICS, "--min-accuracy", "97")
    assert result.returncode == 2 and "not between 0 and 1" in result.stderr
    result, _ = gate(tmp_path, METRICS, "--min-accuracy", "high")
    assert result.returncode == 2 and "--min-accuracy" in result.stderr
