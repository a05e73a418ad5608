"""Schemathesis (an OpenAPI fuzzer) against score.py under the real azmlinfsrv and a real model.

It reads the server's own /swagger.json and generates requests from it: valid ones must be
scored (200, and the answer must match the documented response schema), invalid ones refused
with a documented 4xx, and nothing may give a 5xx. Those are the checks that belong to the
scoring script. Authentication is the managed endpoint's front end (Entra ID tokens, checked
before a request reaches the container), so its checks are left out and no security
parameters are generated. Bounded: a fixed seed and a few dozen cases per operation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHECKS = [
    "not_a_server_error",
    "positive_data_acceptance",
    "negative_data_rejection",
    "response_schema_conformance",
]
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["200"]
[checks.negative_data_rejection]
expected-statuses = ["400", "408", "413"]
"""


@pytest.mark.parametrize(("version", "examples"), [("3", 30), ("2", 15)])
def test_schemathesis_finds_nothing_in_the_scoring_script(
    scoring_server, tmp_path: Path, version: str, examples: int
):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{scoring_server.server.url}/swagger.json?version={version}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(examples),
        "--seed",
        "1",
        "--workers",
        "1",
        "--generation-with-security-parameters",
        "false",  # authentication is the endpoint's front end, not the scoring script
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output, output[-3000:]
    assert "Operations:       2 selected / 2 total" in output  # the health route and /score
