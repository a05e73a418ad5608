"""``submit``, ``register``, ``download`` and ``register-data`` through the real azure-ai-ml SDK,
down to its HTTP transport: ``tests.azure_fakes.FakeWorkspace`` answers like Azure (no
credentials, no network). The tests assert the REST requests the commands send and the one
sentence a user reads when Azure says no."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError

from infra.outputs import OUTPUT_KEYS
from scripts import UserError
from scripts.__main__ import build_parser
from scripts.jobspec import JOBS_DIR
from tests.azure_fakes import ACCOUNT, CONTAINER, EntraIdCredential, FakeWorkspace, fake_pulumi
from training.data import MIRRORS

MIRROR = MIRRORS[0]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeWorkspace:
    workspace = FakeWorkspace()
    workspace.use_for_storage(monkeypatch)
    # jobs.stream polls with growing pauses; the fake's runs advance on every poll
    monkeypatch.setattr(
        "azure.ai.ml.operations._job_ops_helper._wait_before_polling", lambda seconds: 0
    )
    return workspace


def mirror_data(fake: FakeWorkspace) -> None:
    fake.add_asset("data", "mnist", "1", {"dataType": "uri_folder", "dataUri": MIRROR})


def cli(fake: FakeWorkspace, *argv: str, credential: Any = None, flags: bool = True) -> int:
    """Run ``python -m scripts ARGV`` against the fake workspace (named by flags, not a stack)."""
    workspace = [
        "--subscription",
        fake.subscription,
        "--resource-group",
        fake.resource_group,
        "--workspace",
        fake.workspace,
    ]
    args = build_parser().parse_args([*argv, *(workspace if flags else [])])
    return args.func(args, credential=credential or EntraIdCredential(), transport=fake.transport())


def submit(fake: FakeWorkspace, spec: str, *extra: str, **kwargs: Any) -> int:
    return cli(fake, "submit", str(JOBS_DIR / spec), "--compute", "gpu-cluster", *extra, **kwargs)


def job_body(fake: FakeWorkspace) -> dict[str, Any]:
    (put,) = fake.calls("PUT", r"/jobs/[^/]+$")
    return put.json()["properties"]


# ---------------------------------------------------------------------------- submit


def test_submit_sends_the_job_the_spec_declares(fake: FakeWorkspace, capsys) -> None:
    mirror_data(fake)
    assert submit(fake, "multi_worker.yml", "--no-wait", "--set", "inputs.epochs=3") == 0

    ws = fake.ws
    first = fake.arm_calls()[0]  # the cluster is checked first
    assert (first.method, first.path) == ("GET", f"{ws}/computes/gpu-cluster")
    # the environment was missing: registered from training/environments/train/environment.yml
    (environment,) = fake.calls("PUT", "/environments/tf-mnist-train/versions/2$")
    assert environment.json()["properties"]["image"].startswith("mcr.microsoft.com/azureml/")
    assert "tensorflow[and-cuda]==2.21.0" in environment.json()["properties"]["condaFile"]
    assert not fake.calls("PUT", "/data/")  # the data asset exists: nothing re-registered

    # the code snapshot is the training package only
    uploaded = {
        r.path.rsplit("/training/", 1)[-1]
        for r in fake.calls("PUT")
        if r.host.endswith(".blob.core.windows.net") and not r.query.get("comp")
    }
    assert {"train.py", "data.py", "distribute.py"} <= uploaded
    assert not any("tests" in name or "scripts" in name for name in uploaded)

    (component,) = fake.calls("PUT", "/components/")
    spec = component.json()["properties"]["componentSpec"]
    assert spec["command"].startswith("python -m training.train ")
    assert "--output-dir ${{outputs.run}}" in spec["command"]
    assert spec["environment"] == f"azureml:{ws}/environments/tf-mnist-train/versions/2"
    assert spec["code"].startswith(f"azureml:{ws}/codes/")

    body = job_body(fake)
    assert (body["jobType"], body["experimentName"]) == ("Pipeline", "tf-mnist")
    assert body["settings"]["default_compute"] == f"{ws}/computes/gpu-cluster"
    step = body["jobs"]["train"]
    assert step["componentId"] == component.path
    assert step["distribution"] == {
        "distribution_type": "TensorFlow",
        "worker_count": 2,
        "parameter_server_count": 0,
    }
    assert step["resources"] == {"instance_count": 2}
    assert step["inputs"]["mnist"] == {
        "uri": f"{ws}/data/mnist/versions/1",
        "mode": "Download",
        "job_input_type": "uri_folder",
    }
    assert step["inputs"]["epochs"] == {"value": "3", "job_input_type": "literal"}
    assert body["outputs"] == {"run": {"jobOutputType": "uri_folder"}}
    out = capsys.readouterr().out
    assert "registered environment tf-mnist-train:2" in out
    assert "submitted " in out and "studio: https://ml.azure.com/runs/" in out


def test_a_registered_environment_is_reused_not_rebuilt(fake: FakeWorkspace) -> None:
    mirror_data(fake)
    fake.add_asset("environments", "tf-mnist-train", "2", {"image": "built"})
    submit(fake, "multi_worker.yml", "--no-wait")
    assert not fake.calls("PUT", "/environments/")
    (component,) = fake.calls("PUT", "/components/")
    environment = component.json()["properties"]["componentSpec"]["environment"]
    assert environment == f"azureml:{fake.ws}/environments/tf-mnist-train/versions/2"


# fork:begin parameter_server
def test_the_parameter_server_step_is_submitted_with_its_cluster(fake: FakeWorkspace) -> None:
    mirror_data(fake)
    submit(fake, "parameter_server.yml", "--no-wait")
    step = job_body(fake)["jobs"]["train"]
    assert step["distribution"] == {
        "distribution_type": "TensorFlow",
        "worker_count": 3,
        "parameter_server_count": 1,
    }
    assert step["environment_variables"] == {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}


# fork:end parameter_server
def test_submit_registers_the_data_asset_when_the_workspace_lacks_it(fake: FakeWorkspace) -> None:
    submit(fake, "single.yml", "--no-wait")
    (data,) = fake.calls("PUT", "/data/mnist/versions/1$")
    assert data.json()["properties"]["dataUri"] == MIRROR
    assert data.json()["properties"]["dataType"] == "uri_folder"


def test_submit_follows_the_step_and_waits_for_the_job(fake: FakeWorkspace, capsys) -> None:
    mirror_data(fake)
    assert submit(fake, "single.yml", "--set", "inputs.epochs=2") == 0
    out = capsys.readouterr().out
    assert "epoch 1/1  test_acc 0.9700" in out  # the step's log, streamed
    assert out.rstrip().endswith("Completed")
    name = job_body(fake)["displayName"]
    assert name == "mnist-dnn-single-node"


# fork:begin horovod
def test_the_horovod_step_runs_in_the_horovod_environment(fake: FakeWorkspace) -> None:
    """azure-ai-ml drops a step's own `environment` from the REST body; submit must carry it
    into the component, or the step would run in TensorFlow 2.21 without Horovod."""
    mirror_data(fake)
    submit(fake, "horovod.yml", "--no-wait")
    (environment,) = fake.calls("PUT", "/environments/")
    assert environment.path.endswith("/environments/tf-mnist-horovod/versions/1")
    build = environment.json()["properties"]["build"]
    assert build["dockerfilePath"] == "Dockerfile"
    dockerfile = [r for r in fake.calls("PUT") if r.path.endswith("/horovod/Dockerfile")]
    assert dockerfile, "the Docker build context is uploaded"
    (component,) = fake.calls("PUT", "/components/")
    spec = component.json()["properties"]["componentSpec"]
    assert spec["environment"] == f"azureml:{fake.ws}/environments/tf-mnist-horovod/versions/1"
    step = job_body(fake)["jobs"]["train"]
    assert step["distribution"] == {"distribution_type": "Mpi", "process_count_per_instance": 1}
    assert step["resources"] == {"instance_count": 2}


# fork:end horovod
def test_the_sweep_is_submitted_with_its_objective_and_early_termination(
    fake: FakeWorkspace,
) -> None:
    mirror_data(fake)
    submit(fake, "sweep.yml", "--no-wait")
    step = job_body(fake)["jobs"]["sweep"]
    assert step["type"] == "sweep"
    assert step["objective"] == {"goal": "maximize", "primary_metric": "test_accuracy"}
    assert step["early_termination"]["policy_type"] == "Bandit"
    assert set(step["search_space"]) == {
        "batch_size",
        "first_layer_neurons",
        "second_layer_neurons",
        "learning_rate",
    }
    assert step["search_space"]["learning_rate"]["type"] == "loguniform"


def test_dry_run_prints_the_job_and_sends_nothing(fake: FakeWorkspace, capsys) -> None:
    rc = cli(fake, "submit", str(JOBS_DIR / "multi_worker.yml"), "--dry-run", "--compute", "gpu-x")
    assert rc == 0 and fake.requests == []
    printed = capsys.readouterr().out
    assert "default_compute: azureml:gpu-x" in printed
    assert "worker_count: 2" in printed and "python -m training.train" in printed


# ---------------------------------------------------------------------------- the stack


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeWorkspace) -> dict[str, Any]:
    """A stand-in ``pulumi`` on PATH that prints the deployed stack's outputs."""
    outputs = {key: f"value-{key}" for key in OUTPUT_KEYS.values()}
    outputs.update(
        subscriptionId=fake.subscription,
        resourceGroupName=fake.resource_group,
        workspaceName=fake.workspace,
        gpuClusterName="gpu-cluster",
        gpuMaxNodes=1,
        gpusPerNode=1,
        endpointMinInstances=1,
        endpointMaxInstances=3,
        alertEmails=[],
    )
    return fake_pulumi(tmp_path, monkeypatch, outputs)


def test_submit_finds_workspace_and_cluster_in_the_stack_outputs(
    fake: FakeWorkspace, stack: dict[str, Any]
) -> None:
    mirror_data(fake)
    assert cli(fake, "submit", str(JOBS_DIR / "sweep.yml"), "--no-wait", flags=False) == 0
    body = job_body(fake)
    assert body["settings"]["default_compute"] == f"{fake.ws}/computes/gpu-cluster"
    # the cluster scales to 1 node (gpuMaxNodes): no more trials at once than that
    assert body["jobs"]["sweep"]["limits"]["max_concurrent_trials"] == 1


def test_a_job_larger_than_the_cluster_is_refused_before_anything_is_sent(
    fake: FakeWorkspace, stack: dict[str, Any]
) -> None:
    with pytest.raises(UserError, match=r"asks for 2 nodes but cluster gpu-cluster scales to 1"):
        cli(fake, "submit", str(JOBS_DIR / "multi_worker.yml"), flags=False)
    assert fake.requests == []


def test_without_a_stack_the_error_also_offers_the_flags(
    fake: FakeWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no pulumi
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError) as error:
        cli(fake, "submit", str(JOBS_DIR / "single.yml"), flags=False)
    assert "Pulumi CLI is not installed" in str(error.value)
    assert "--subscription, --resource-group, --workspace and --compute" in str(error.value)
    assert fake.requests == []


def test_part_of_a_workspace_on_the_command_line_is_a_user_error(fake: FakeWorkspace) -> None:
    args = build_parser().parse_args(
        ["submit", str(JOBS_DIR / "single.yml"), "--workspace", "w", "--subscription", "s"]
    )
    with pytest.raises(UserError, match=r"also pass --resource-group"):
        args.func(args, credential=EntraIdCredential(), transport=fake.transport())


# ---------------------------------------------------------------------------- errors


def test_a_missing_cluster_says_how_to_get_one(fake: FakeWorkspace) -> None:
    with pytest.raises(UserError) as error:
        cli(fake, "submit", str(JOBS_DIR / "single.yml"), "--compute", "gpu-typo")
    assert str(error.value).startswith("compute cluster 'gpu-typo' does not exist in workspace")
    assert "pulumi up" in str(error.value)
    assert not fake.calls("PUT")


def test_a_missing_workspace_says_so_not_that_the_cluster_is_missing(
    fake: FakeWorkspace,
) -> None:
    fake.fail(
        "GET",
        r"/computes/",
        404,
        "ResourceNotFound",
        "The Resource 'Microsoft.MachineLearningServices/workspaces/mlw-mnist-dev' under "
        "resource group 'rg-mnist-dev' was not found.",
    )
    with pytest.raises(UserError, match=r"^workspace mlw-mnist-dev was not found in resource"):
        submit(fake, "single.yml")


def test_quota_exceeded_reads_as_one_sentence_with_the_fix(fake: FakeWorkspace) -> None:
    mirror_data(fake)
    fake.fail(
        "PUT",
        r"/jobs/",
        400,
        "QuotaExceeded",
        "Operation could not be completed as it results in exceeding approved "
        "standardNCASv3_T4Family Cores quota. Current Limit: 0",
    )
    with pytest.raises(UserError) as error:
        submit(fake, "single.yml", "--no-wait")
    message = str(error.value)
    assert message.startswith("the subscription's Azure ML vCPU quota")
    assert "standardNCASv3_T4Family" in message and "LowPriority" in message
    assert "\n" not in message and "Traceback" not in message


def test_a_failed_environment_build_says_where_to_look(fake: FakeWorkspace) -> None:
    mirror_data(fake)
    fake.job_outcome = (
        "Failed",
        {
            "code": "UserError",
            "message": "Image build failed: pip could not install tensorflow[and-cuda]==2.21.0",
            "innerError": {"code": "ImageBuildFailure"},
        },
    )
    with pytest.raises(UserError) as error:
        submit(fake, "single.yml")
    message = str(error.value)
    assert "could not build the job's environment image" in message
    assert "pip could not install" in message and "training/environments/" in message
    assert "studio: https://ml.azure.com/runs/" in message


def test_a_failed_job_reports_the_services_message(fake: FakeWorkspace) -> None:
    mirror_data(fake)
    fake.job_outcome = ("Failed", {"code": "UserError", "message": "Execution failed: exit 2"})
    with pytest.raises(UserError, match=r"failed: Execution failed: exit 2 \(studio: "):
        submit(fake, "single.yml")


def test_ctrl_c_while_following_leaves_the_job_running(fake: FakeWorkspace) -> None:
    mirror_data(fake)
    fake.interrupt("GET", r"/runs/[^/]+_step/details$")
    with pytest.raises(UserError, match=r"^stopped following job \S+; it keeps running"):
        submit(fake, "single.yml")
    assert not fake.calls("POST", r"/cancel")


def test_an_asset_the_workspace_lacks_is_named_in_plain_text(fake: FakeWorkspace) -> None:
    """azure-ai-ml's own errors come formatted for a terminal; the message is the sentence."""
    with pytest.raises(UserError) as error:
        submit(fake, "single.yml", "--no-wait", "--set", "inputs.mnist=azureml:digits@latest")
    assert str(error.value).startswith(
        "Asset digits does not exist in workspace mlw-mnist-dev: fix the name in the spec, or "
        "register it first"
    )
    assert not fake.calls("PUT", "/jobs/")


class SignedOut:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")


def test_not_signed_in_says_az_login(fake: FakeWorkspace) -> None:
    with pytest.raises(UserError, match=r"^you are not signed in to Azure.*`az login`"):
        submit(fake, "single.yml", credential=SignedOut())


def test_no_permission_names_the_role_to_ask_for(fake: FakeWorkspace) -> None:
    fake.fail("GET", r"/computes/", 403, "AuthorizationFailed", "The client does not have access")
    with pytest.raises(UserError, match=r"may not use workspace mlw-mnist-dev.*Data Scientist"):
        submit(fake, "single.yml")


# ---------------------------------------------------------------------------- data


def test_register_data_points_the_asset_at_the_public_mirror(fake: FakeWorkspace) -> None:
    assert cli(fake, "register-data") == 0
    (put,) = fake.calls("PUT", "/data/mnist/versions/1$")
    properties = put.json()["properties"]
    assert (properties["dataType"], properties["dataUri"]) == ("uri_folder", MIRROR)
    assert not [r for r in fake.requests if r.host.endswith(".blob.core.windows.net")]

    cli(fake, "register-data")  # again: it exists, nothing is sent but the lookup
    assert len(fake.calls("PUT")) == 1


def test_register_data_uploads_a_verified_local_copy(fake: FakeWorkspace, mnist_dir: Path) -> None:
    mirror_data(fake)
    assert cli(fake, "register-data", "--from-folder", str(mnist_dir)) == 0
    uploaded = {
        r.path.rsplit("/", 1)[1]
        for r in fake.calls("PUT")
        if r.host == f"{ACCOUNT}.blob.core.windows.net" and not r.query.get("comp")
    }
    assert {"train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"} <= uploaded
    (put,) = fake.calls("PUT", "/data/mnist/versions/2$")  # the next version
    uri = put.json()["properties"]["dataUri"]
    assert uri.startswith("azureml://datastores/workspaceblobstore/paths/LocalUpload/")


def test_a_broken_local_copy_is_refused_before_upload(fake: FakeWorkspace, tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match=r"lacks"):
        cli(fake, "register-data", "--from-folder", str(tmp_path))
    assert not fake.calls("PUT")


# ---------------------------------------------------------------------------- models


def fake_model(folder: Path, tensorflow: str = "2.21.0") -> Path:
    """An MLflow model folder as training writes it (its files, not a trained network)."""
    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors:\n  tensorflow: {model_type: keras}\n")
    (folder / "requirements.txt").write_text(f"mlflow==3.17.2\ntensorflow=={tensorflow}\n")
    (folder / "data").mkdir()
    (folder / "data" / "model.keras").write_bytes(b"\x00" * 64)
    return folder


def test_register_uploads_the_model_folder_itself_tagged_with_its_framework(
    fake: FakeWorkspace, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    model = fake_model(run / "model")
    (run / "metrics.json").write_text('{"test_accuracy": 0.98}')  # beside the model: stays here
    assert cli(fake, "register", "--model-dir", str(model)) == 0
    (put,) = fake.calls("PUT", "/models/tf-mnist/versions/")
    properties = put.json()["properties"]
    assert properties["modelType"] == "mlflow_model"
    assert properties["tags"] == {"framework": "TensorFlow", "framework_version": "2.21.0"}
    # the model is the uploaded folder `model` itself: MLmodel at its top, nothing beside it
    workspace = (
        f"azureml://subscriptions/{fake.subscription}/resourcegroups/{fake.resource_group}"
        f"/workspaces/{fake.workspace}/datastores/workspaceblobstore/paths/LocalUpload/"
    )
    assert properties["modelUri"].startswith(workspace)
    upload, folder = properties["modelUri"].removeprefix(workspace).split("/")
    assert folder == "model" and re.fullmatch(r"[0-9a-f]{32,64}", upload)
    prefix = f"/{CONTAINER}/LocalUpload/{upload}/"
    uploaded = {
        key.removeprefix(prefix): data for key, data in fake.blobs.items() if key.startswith(prefix)
    }
    assert uploaded == {
        "model/MLmodel": b"flavors:\n  tensorflow: {model_type: keras}\n",
        "model/requirements.txt": b"mlflow==3.17.2\ntensorflow==2.21.0\n",
        "model/data/model.keras": b"\x00" * 64,
    }
    assert not any("metrics.json" in key for key in fake.blobs)


def finished_job(fake: FakeWorkspace, name: str, status: str = "Completed") -> None:
    fake.arm[f"{fake.ws}/jobs/{name}"] = {
        "properties": {
            "jobType": "Pipeline",
            "status": status,
            "properties": {},
            "jobs": {},
            "outputs": {"run": {"jobOutputType": "uri_folder"}},
        }
    }
    for path, data in {
        "metrics.json": json.dumps({"test_accuracy": 0.981}).encode(),
        "model/MLmodel": b"flavors:\n  tensorflow: {model_type: keras}\n",
        "model/requirements.txt": b"tensorflow==2.21.0\n",
        "model/data/model.keras": b"\x00" * 64,
    }.items():
        fake.put_blob(CONTAINER, f"azureml/{name}/run/{path}", data)


def test_register_a_jobs_model_in_place_after_reading_its_framework(
    fake: FakeWorkspace, tmp_path: Path, capsys
) -> None:
    finished_job(fake, "calm_river_42")
    assert cli(fake, "register", "--job", "calm_river_42", "--to", str(tmp_path)) == 0
    local = tmp_path / "calm_river_42" / "named-outputs" / "run"
    assert json.loads((local / "metrics.json").read_text())["test_accuracy"] == 0.981
    (put,) = fake.calls("PUT", "/models/tf-mnist/versions/")
    properties = put.json()["properties"]
    assert properties["modelUri"] == "azureml://jobs/calm_river_42/outputs/run/paths/model"
    assert properties["modelType"] == "mlflow_model"
    assert properties["tags"]["framework_version"] == "2.21.0"
    assert properties["tags"]["job"] == "calm_river_42"
    assert "registered model tf-mnist:" in capsys.readouterr().out


def test_download_brings_a_finished_jobs_output_home(fake: FakeWorkspace, tmp_path: Path) -> None:
    finished_job(fake, "calm_river_42")
    assert cli(fake, "download", "--job", "calm_river_42", "--to", str(tmp_path)) == 0
    model = tmp_path / "calm_river_42" / "named-outputs" / "run" / "model"
    assert (model / "MLmodel").is_file() and (model / "data" / "model.keras").is_file()


def test_a_running_job_cannot_be_registered_yet(fake: FakeWorkspace, tmp_path: Path) -> None:
    finished_job(fake, "busy_bee_7", status="Running")
    with pytest.raises(UserError, match=r"^job busy_bee_7 is Running: its outputs can be down"):
        cli(fake, "register", "--job", "busy_bee_7", "--to", str(tmp_path))
    assert not fake.calls("PUT", "/models/")


def test_a_folder_that_is_not_an_mlflow_model_is_refused(
    fake: FakeWorkspace, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=r"is not an MLflow model \(no MLmodel file\)"):
        cli(fake, "register", "--model-dir", str(tmp_path))
    assert fake.requests == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("register", "--job", "../../elsewhere"), "argument --job: job name '../../elsewhere'"),
        (("download", "--job", "a/b"), "argument --job: job name 'a/b' is not valid"),
        (("download", "--job", "calm_river_42", "--output", "../run"), "'../run' is not an output"),
        (("register", "--job", "calm_river_42", "--output", "run/model"), "'run/model' is not an"),
    ],
)
def test_job_and_output_names_that_are_paths_are_usage_errors(
    fake: FakeWorkspace, tmp_path: Path, capsys, argv: tuple[str, ...], message: str
) -> None:
    finished_job(fake, "calm_river_42")
    with pytest.raises(SystemExit) as exited:
        cli(fake, *argv, "--to", str(tmp_path / "to"))
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert fake.requests == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["download", "register"])
def test_a_file_in_the_way_of_the_download_is_refused_before_signing_in(
    fake: FakeWorkspace, tmp_path: Path, command: str
) -> None:
    finished_job(fake, "calm_river_42")
    (tmp_path / "notes").write_text("keep me")
    with pytest.raises(UserError, match=rf"^--to: {tmp_path}/notes is a file, not a folder"):
        cli(fake, command, "--job", "calm_river_42", "--to", str(tmp_path / "notes"))
    assert fake.requests == []
    assert (tmp_path / "notes").read_text() == "keep me"


def test_a_model_whose_requirements_are_not_text_is_refused(
    fake: FakeWorkspace, tmp_path: Path
) -> None:
    model = fake_model(tmp_path / "model")
    (model / "requirements.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match=r"does not say which TensorFlow made it"):
        cli(fake, "register", "--model-dir", str(model))
    assert fake.requests == []
