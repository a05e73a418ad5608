"""A stand-in ``pulumi`` command for the commands that read a deployed stack's outputs."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any


def fake_pulumi(tmp_path: Path, monkeypatch: Any, outputs: dict[str, Any]) -> dict[str, Any]:
    """A stand-in ``pulumi`` on PATH whose ``pulumi stack output --json`` prints ``outputs``
    (what a deployed stack would); the workspace variables are cleared so that the commands
    take the workspace from the stack. Returns ``outputs``."""
    script = tmp_path / "bin" / "pulumi"
    script.parent.mkdir()
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"assert sys.argv[1:4] == ['stack', 'output', '--json'], sys.argv\n"
        f"print(json.dumps({outputs!r}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"):
        monkeypatch.delenv(name, raising=False)
    return outputs
