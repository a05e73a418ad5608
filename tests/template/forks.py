"""What both template test modules check a fork against, written out once: the repository's
own files (template machinery left out, as a bake leaves it) and the files each feature
answered "no" takes away (not read from template/features.json)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MACHINERY = ("template/", "tests/template/")
FEATURES = ("horovod", "parameter_server", "github_actions")

# What each feature answered "no" takes away (the rest of the tree stays).
REMOVED = {
    "horovod": {
        "docs/horovod.md",
        "scripts/horovod_launch.py",
        "tests/scripts/test_horovod_launch.py",
        "tests/training/test_horovod.py",
        "training/environments/horovod/Dockerfile",
        "training/environments/horovod/build_env.py",
        "training/environments/horovod/environment.yml",
        "training/environments/horovod/requirements.txt",
        "training/horovod_runtime.py",
        "training/jobs/horovod.yml",
    },
    "parameter_server": {
        "tests/training/test_parameter_server_runtime.py",
        "training/jobs/parameter_server.yml",
        "training/parameter_server_runtime.py",
    },
    "github_actions": {
        ".github/scripts/job_report.py",
        ".github/workflows/ci.yml",
        ".github/workflows/deploy.yml",
        ".github/workflows/infra.yml",
        ".github/workflows/train.yml",
        "docs/ci-cd.md",
        "infra/bootstrap/Pulumi.yaml",
        "infra/bootstrap/__init__.py",
        "infra/bootstrap/__main__.py",
        "infra/bootstrap/config.py",
        "infra/bootstrap/program.py",
        "tests/infra/bootstrap/bootstrap_harness.py",
        "tests/infra/bootstrap/conftest.py",
        "tests/infra/bootstrap/test_bootstrap_program.py",
        "tests/workflows/test_job_report.py",
        "tests/workflows/test_workflow_lint.py",
        "tests/workflows/test_workflow_log_contract.py",
        "tests/workflows/test_workflow_policy.py",
        "tests/workflows/test_workflow_references.py",
        "tests/workflows/workflow_files.py",
    },
}


def tracked_files() -> list[str]:
    """The tracked files as they are on disk, without the template machinery."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return sorted(
        path
        for path in listed.split("\0")
        if path and not path.startswith(MACHINERY) and (ROOT / path).is_file()
    )


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
