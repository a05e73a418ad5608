"""``read_stack_outputs``: how the job and serving commands find the platform.

A stand-in ``pulumi`` executable on PATH plays the CLI (its stdout, stderr and exit status are
the real CLI's for each situation), so the subprocess handling is exercised for real.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.config import PROJECT_ROOT
from infra.outputs import OUTPUT_KEYS, StackOutputs
from scripts import UserError
from scripts.infra import read_stack_outputs
from tests.infra.infra_harness import Deployment

FakeCli = Callable[..., Path]

_SCRIPT = """#!{python}
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
with open(os.path.join(here, "answer.json")) as f:
    answer = json.load(f)
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["code"])
"""


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCli:
    """Put a ``pulumi`` on PATH that answers with the given stdout, stderr and exit code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "pulumi"
    script.write_text(_SCRIPT.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    def answer(stdout: str = "", stderr: str = "", code: int = 0) -> Path:
        (bin_dir / "answer.json").write_text(
            json.dumps({"stdout": stdout, "stderr": stderr, "code": code})
        )
        return bin_dir / "calls.jsonl"

    return answer


def test_outputs_of_a_deployed_stack_are_read_and_typed(
    fake_cli: FakeCli, standard: Deployment
) -> None:
    # What `pulumi stack output --json` prints for the stack the program declares.
    calls = fake_cli(stdout=json.dumps(standard.outputs, indent=2))
    outputs = read_stack_outputs("dev")
    assert isinstance(outputs, StackOutputs)
    assert outputs.workspace_name == standard.outputs["workspaceName"]
    assert outputs.resource_group == "rg-mnist-dev"
    assert (outputs.gpu_cluster, outputs.cpu_cluster) == ("gpu-cluster", "cpu-cluster")
    assert outputs.gpu_max_nodes == 2 and outputs.gpus_per_node == 1
    (call,) = [json.loads(line) for line in calls.read_text().splitlines()]
    assert call["argv"] == ["stack", "output", "--json", "--non-interactive", "--stack", "dev"]
    assert Path(call["cwd"]) == PROJECT_ROOT  # where Pulumi.yaml is


def test_the_selected_stack_is_used_when_none_is_named(fake_cli: FakeCli) -> None:
    values = {key: "x" for key in OUTPUT_KEYS.values()}
    values.update(
        gpuMaxNodes=2,
        gpusPerNode=1,
        cpuClusterName=None,
        endpointMinInstances=1,
        endpointMaxInstances=3,
        alertEmails=[],
    )
    calls = fake_cli(stdout=json.dumps(values))
    assert read_stack_outputs().cpu_cluster is None
    assert "--stack" not in json.loads(calls.read_text())["argv"]


def test_no_pulumi_cli_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="the Pulumi CLI is not installed"):
        read_stack_outputs("dev")


@pytest.mark.parametrize(
    ("stderr", "fix"),
    [
        ("error: no stack named 'dev' found\n", "pulumi stack init dev"),
        (
            "error: no stack selected; please use `pulumi stack select` to choose one\n",
            "pulumi stack select <name>",
        ),
        (
            "error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive "
            "CLI sessions\n",
            "pulumi login",
        ),
        (
            'error: constructing secrets manager of type "passphrase": unable to find either '
            "`PULUMI_CONFIG_PASSPHRASE` or `PULUMI_CONFIG_PASSPHRASE_FILE`\n",
            "set PULUMI_CONFIG_PASSPHRASE",
        ),
    ],
    ids=["no-stack", "none-selected", "not-logged-in", "passphrase"],
)
def test_cli_failures_become_user_errors_with_the_fix(
    fake_cli: FakeCli, stderr: str, fix: str
) -> None:
    fake_cli(stderr=stderr, code=255)
    with pytest.raises(UserError) as caught:
        read_stack_outputs("dev" if "named" in stderr else None)
    message = str(caught.value)
    assert message.startswith(f"cannot read the stack outputs: {stderr.strip()}")
    assert fix in message


def test_a_stack_never_deployed_says_to_run_pulumi_up(fake_cli: FakeCli) -> None:
    fake_cli(stdout="{}\n")
    with pytest.raises(UserError, match=r"stack 'dev' has no outputs: deploy it with `pulumi up`"):
        read_stack_outputs("dev")


def test_a_stack_from_an_older_program_names_the_missing_outputs(fake_cli: FakeCli) -> None:
    fake_cli(stdout=json.dumps({"workspaceName": "mlw-old", "resourceGroupName": "rg-old"}))
    with pytest.raises(UserError) as caught:
        read_stack_outputs("dev")
    assert "gpuClusterName" in str(caught.value) and "run `pulumi up` again" in str(caught.value)
