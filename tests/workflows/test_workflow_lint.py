"""`make lint-workflows` (zizmor --offline, check-jsonschema with the vendored workflow schema):
clean on the repository's workflows, and red on a copy broken in each way it must catch."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.workflows.workflow_files import ROOT, WORKFLOW_DIR


def lint(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "lint-workflows", f"WORKFLOWS={folder}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "workflows"
    shutil.copytree(WORKFLOW_DIR, folder)
    return folder


def test_the_workflows_lint_clean(copy: Path):
    result = lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout
    assert "ok -- validation done" in result.stdout


CHECKOUT = "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1"


@pytest.mark.parametrize(
    ("old", "new", "finding"),
    [
        pytest.param(CHECKOUT, "actions/checkout@v7", "unpinned-uses", id="unpinned-action"),
        pytest.param(
            "      - name: make test\n",
            "      - name: Greet\n"
            '        run: echo "${{ github.event.pull_request.title }}"\n'
            "      - name: make test\n",
            "template-injection",
            id="template-injection",
        ),
        pytest.param(
            "    timeout-minutes: 60\n",
            "    timeout-minutes: 60\n    timeout-mins: 5\n",
            "'timeout-mins' was unexpected",
            id="unknown-key",
        ),
        pytest.param(
            "permissions:\n  contents: read\n",
            "permissions: write-all\n",
            "excessive-permissions",
            id="write-all",
        ),
        pytest.param(
            "  pull_request:\n",
            "  pull_request_target:\n",
            "dangerous-triggers",
            id="pull-request-target",
        ),
    ],
)
def test_a_broken_workflow_fails_the_lint(copy: Path, old: str, new: str, finding: str):
    ci = copy / "ci.yml"
    text = ci.read_text(encoding="utf-8")
    assert old in text
    ci.write_text(text.replace(old, new, 1), encoding="utf-8")
    result = lint(copy)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert finding in output, output
