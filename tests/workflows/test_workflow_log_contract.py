"""train.yml and deploy.yml read a few facts from the commands' output (the job name, the
registered model, the endpoint). Their `sed` patterns, taken from the workflow files, must match
what the real commands print: `submit` and `register` run against the offline Azure ML
workspace of tests/scripts (azure-ai-ml down to its HTTP transport), `deploy` with its rollout
replaced by a report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scripts.__main__ import build_parser
from tests.azure_fakes import EntraIdCredential, FakeWorkspace
from tests.workflows.workflow_files import ROOT, load_workflows
from training.data import MIRRORS

WORKFLOWS = {w.name: w for w in load_workflows()}


def sed_pattern(workflow: str, step_id: str, marker: str) -> re.Pattern[str]:
    """The `sed -n 's/PATTERN/\\1/p'` whose pattern contains ``marker``, as a Python regex."""
    job = next(iter(WORKFLOWS[workflow].jobs.values()))
    script = next(s["run"] for s in job["steps"] if s.get("id") == step_id)
    found = [p for p in re.findall(r"sed -n 's/(.+?)/\\1/p'", script) if marker in p]
    assert len(found) == 1, f"{workflow} step {step_id}: {found}"
    return re.compile(found[0].replace(r"\(", "(").replace(r"\)", ")"))


def first_match(pattern: re.Pattern[str], output: str) -> str | None:
    for line in output.splitlines():
        match = pattern.match(line)
        if match:
            return match.group(1)
    return None


@pytest.fixture
def workspace(monkeypatch: pytest.MonkeyPatch) -> FakeWorkspace:
    fake = FakeWorkspace()
    fake.use_for_storage(monkeypatch)
    fake.add_asset("data", "mnist", "1", {"dataType": "uri_folder", "dataUri": MIRRORS[0]})
    return fake


def run(fake: FakeWorkspace, *argv: str) -> int:
    flags = ["--subscription", fake.subscription, "--resource-group", fake.resource_group]
    args = build_parser().parse_args([*argv, *flags, "--workspace", fake.workspace])
    return args.func(args, credential=EntraIdCredential(), transport=fake.transport())


def test_train_reads_the_submitted_job_name(workspace: FakeWorkspace, capsys):
    spec = str(ROOT / "training" / "jobs" / "single.yml")
    assert run(workspace, "submit", spec, "--compute", "gpu-cluster", "--no-wait") == 0
    job = first_match(sed_pattern("train.yml", "submit", "submitted"), capsys.readouterr().out)
    assert job, "the job name was not found in submit's output"
    assert workspace.calls("PUT", f"/jobs/{job}$"), f"no job {job} was created"


def test_train_reads_the_registered_model(workspace: FakeWorkspace, tmp_path: Path, capsys):
    model = tmp_path / "model"
    (model / "data").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors:\n  tensorflow: {model_type: keras}\n")
    (model / "requirements.txt").write_text("tensorflow==2.21.0\n")
    (model / "data" / "model.keras").write_bytes(b"\x00" * 16)
    assert run(workspace, "register", "--model-dir", str(model)) == 0
    found = first_match(sed_pattern("train.yml", "register", "registered"), capsys.readouterr().out)
    (put,) = workspace.calls("PUT", "/models/tf-mnist/versions/")
    assert found == f"tf-mnist:{put.path.rsplit('/', 1)[1]}"


def test_deploy_reads_the_endpoint_from_the_rollout_report(monkeypatch, capsys):
    from scripts.azureml import workspace as ml_workspace
    from scripts.endpoints import rollout

    report = rollout.RolloutReport(
        "mnist-digits", "green", "blue", {"green": 100}, [{"green": 10, "blue": 90}]
    )
    # A workspace without stack outputs: no Log Analytics or instance range to apply.
    target = ml_workspace.Target("sub", "rg", "ws", None, None, "the flags")
    monkeypatch.setattr(ml_workspace, "connect", lambda args: (target, object()))
    monkeypatch.setattr(rollout, "rollout", lambda client, **kwargs: report)
    args = build_parser().parse_args(["deploy", "--model", "azureml:tf-mnist:3", "--stack", "dev"])
    assert args.func(args) == 0
    pattern = sed_pattern("deploy.yml", "rollout", "all traffic on")
    assert first_match(pattern, capsys.readouterr().out) == "mnist-digits"
