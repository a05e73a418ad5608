"""``batch-deploy`` and ``batch-score --input`` through the real azure-ai-ml SDK, down to its HTTP
transport (``tests.azure_fakes.FakeWorkspace``, the offline workspace): the
requests and bodies the commands send, and what a user reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.outputs import OUTPUT_KEYS
from scripts import UserError
from scripts.__main__ import build_parser
from tests.azure_fakes import EntraIdCredential, FakeWorkspace, fake_pulumi

ENDPOINT = "/batchEndpoints/mnist-digits-batch"
DEPLOYMENT = f"{ENDPOINT}/deployments/digits-cpu"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeWorkspace:
    workspace = FakeWorkspace()
    workspace.use_for_storage(monkeypatch)
    monkeypatch.setattr(
        "azure.ai.ml.operations._job_ops_helper._wait_before_polling", lambda seconds: 0
    )
    for version in ("1", "2"):
        workspace.seed_model("tf-mnist", version)
    return workspace


def cli(fake: FakeWorkspace, *argv: str, credential: Any = None, flags: bool = True) -> int:
    """``python -m scripts ARGV`` against the fake, which the flags name (else the stack)."""
    workspace = ["--subscription", fake.subscription, "--resource-group", fake.resource_group]
    workspace += ["--workspace", fake.workspace]
    args = build_parser().parse_args([*argv, *(workspace if flags else [])])
    return args.func(args, credential=credential or EntraIdCredential(), transport=fake.transport())


def pulumi_outputs(
    fake: FakeWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **outputs: Any
) -> None:
    """A stand-in ``pulumi`` on PATH whose deployed stack has these outputs (and the fake's
    workspace)."""
    values = {key: f"value-{key}" for key in OUTPUT_KEYS.values()}
    values.update(
        subscriptionId=fake.subscription,
        resourceGroupName=fake.resource_group,
        workspaceName=fake.workspace,
        gpuMaxNodes=1,
        gpusPerNode=1,
        endpointMinInstances=1,
        endpointMaxInstances=3,
        alertEmails=[],
        **outputs,
    )
    fake_pulumi(tmp_path, monkeypatch, values)


def deployed(fake: FakeWorkspace) -> None:
    assert cli(fake, "batch-deploy") == 0
    fake.requests.clear()


def test_batch_deploy_creates_endpoint_environment_and_deployment_on_the_cpu_cluster(
    fake: FakeWorkspace, capsys
) -> None:
    assert cli(fake, "batch-deploy") == 0
    ws = fake.ws
    (env,) = fake.calls("PUT", "/environments/tf-mnist-batch/versions/1$")
    assert "azureml-dataset-runtime[fuse]" in env.json()["properties"]["condaFile"]
    endpoint_puts = fake.calls("PUT", f"{ENDPOINT}$")
    assert endpoint_puts[0].json()["properties"]["authMode"].lower() == "aadtoken"  # Entra ID
    (put,) = fake.calls("PUT", f"{DEPLOYMENT}$")
    body = put.json()["properties"]
    assert body["compute"] == f"{ws}/computes/cpu-cluster"
    assert body["model"] == {
        "referenceType": "Id",
        "assetId": f"{ws}/models/tf-mnist/versions/2",  # the latest
    }
    assert body["environmentId"] == f"{ws}/environments/tf-mnist-batch/versions/1"
    assert body["codeConfiguration"]["scoringScript"] == "batch_score.py"
    expected = {
        "miniBatchSize": 100,
        "outputAction": "AppendRow",
        "outputFileName": "predictions.csv",
        "errorThreshold": 0,
        "loggingLevel": "info",
        "maxConcurrencyPerInstance": 2,
        "retrySettings": {"maxRetries": 3, "timeout": "PT5M"},
        "resources": {"instanceCount": 1, "properties": {}},
        "environmentVariables": {"TF_CPP_MIN_LOG_LEVEL": "2"},
    }
    assert {key: body.get(key) for key in expected} == expected
    uploaded = [r.path for r in fake.requests if r.method == "PUT" and ".blob." in r.url]
    assert [p for p in uploaded if p.endswith(".py")] and all(
        p.endswith("batch_score.py") for p in uploaded if "LocalUpload" in p
    )
    # the endpoint's default is the deployment, set after it exists
    assert endpoint_puts[-1].json()["properties"]["defaults"] == {"deploymentName": "digits-cpu"}
    assert fake.requests.index(endpoint_puts[-1]) > fake.requests.index(put)
    assert "default deployment digits-cpu (tf-mnist:2) on cpu-cluster" in capsys.readouterr().out


def test_batch_deploy_takes_a_model_version_and_reuses_the_registered_environment(
    fake: FakeWorkspace,
) -> None:
    fake.add_asset("environments", "tf-mnist-batch", "1", {"image": "x"})
    assert (
        cli(fake, "batch-deploy", "--model", "azureml:tf-mnist:1", "--compute", "gpu-cluster") == 0
    )
    assert fake.calls("PUT", "/environments/") == []
    (put,) = fake.calls("PUT", f"{DEPLOYMENT}$")
    assert put.json()["properties"]["model"]["assetId"].endswith("/models/tf-mnist/versions/1")
    assert put.json()["properties"]["compute"].endswith("/computes/gpu-cluster")


def test_the_cluster_is_the_stacks_cpu_cluster(
    fake: FakeWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.arm[f"{fake.ws}/computes/cpu-small"] = fake.arm[f"{fake.ws}/computes/cpu-cluster"]
    pulumi_outputs(fake, tmp_path, monkeypatch, cpuClusterName="cpu-small")
    assert cli(fake, "batch-deploy", flags=False) == 0
    (put,) = fake.calls("PUT", f"{DEPLOYMENT}$")
    assert put.json()["properties"]["compute"] == f"{fake.ws}/computes/cpu-small"


def test_a_stack_without_cpu_cluster_says_how_to_get_one(
    fake: FakeWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pulumi_outputs(fake, tmp_path, monkeypatch, cpuClusterName=None)
    with pytest.raises(UserError, match=r"has no CPU cluster .* set cpuCluster to true"):
        cli(fake, "batch-deploy", flags=False)
    assert [r for r in fake.requests if r.method == "PUT"] == []


def test_a_missing_cluster_is_named_before_anything_is_created(fake: FakeWorkspace) -> None:
    with pytest.raises(UserError, match="compute cluster 'big-cluster' does not exist"):
        cli(fake, "batch-deploy", "--compute", "big-cluster")
    assert [r for r in fake.requests if r.method == "PUT"] == []


def test_batch_score_uploads_a_local_folder_and_starts_a_job(
    fake: FakeWorkspace, tmp_path: Path, capsys
) -> None:
    deployed(fake)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.png").write_bytes(b"\x89PNG fake")
    credential = EntraIdCredential()
    assert cli(fake, "batch-score", "--input", str(tmp_path / "in"), credential=credential) == 0
    uploads = [
        r
        for r in fake.requests
        if r.method == "PUT" and r.path.endswith("00000.png") and "comp" not in r.query
    ]
    assert len(uploads) == 1 and uploads[0].body == b"\x89PNG fake"
    (post,) = [r for r in fake.requests if r.method == "POST" and r.path == "/jobs"]
    assert post.url == "https://mnist-digits-batch.swedencentral.inference.ml.azure.com/jobs"
    data = post.json()["properties"]["inputData"]["images"]
    assert data["jobInputType"] == "UriFolder"
    assert data["uri"].startswith("azureml://") and data["uri"].endswith("/in/")
    assert "https://ml.azure.com/.default" in credential.scopes
    assert "started batch job batchjob-1 on endpoint mnist-digits-batch" in capsys.readouterr().out


def test_batch_score_waits_and_downloads_the_predictions(
    fake: FakeWorkspace, tmp_path: Path
) -> None:
    deployed(fake)
    out = tmp_path / "scores.csv"
    uri = "azureml://datastores/workspaceblobstore/paths/digits/"
    argv = ["batch-score", "--input", uri, "--wait", "--output", str(out), "--deployment"]
    assert cli(fake, *argv, "digits-cpu") == 0
    (post,) = [r for r in fake.requests if r.method == "POST" and r.path == "/jobs"]
    assert post.json()["properties"]["inputData"]["images"]["uri"] == uri
    assert out.read_bytes() == fake.predictions


def test_a_failed_job_exits_1(fake: FakeWorkspace, tmp_path: Path, capsys) -> None:
    deployed(fake)
    fake.job_outcome = ("Failed", {"code": "UserError", "message": "error_threshold exceeded"})
    uri = "azureml://datastores/workspaceblobstore/paths/digits/"
    out = tmp_path / "p.csv"
    assert cli(fake, "batch-score", "--input", uri, "--wait", "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert "batch job batchjob-1 failed: " in err and "error_threshold exceeded" in err
    assert not out.exists()


def test_an_input_that_is_neither_folder_nor_uri_is_refused_before_sign_in(
    fake: FakeWorkspace, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=r"is neither a folder here nor a URI"):
        cli(fake, "batch-score", "--input", str(tmp_path / "nothing"))
    assert fake.requests == []


def test_dry_run_prints_both_specs_and_sends_nothing(fake: FakeWorkspace, capsys) -> None:
    assert cli(fake, "batch-deploy", "--dry-run", "--endpoint", "digits-x") == 0
    printed = capsys.readouterr().out
    assert "name: digits-x" in printed and "endpoint_name: digits-x" in printed
    assert fake.requests == []
    json.dumps(printed)  # plain text
