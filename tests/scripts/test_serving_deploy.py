"""``deploy``: the safe rollout through the real azure-ai-ml SDK, down to its HTTP transport.

The workspace is ``tests.azure_fakes.FakeWorkspace`` (no credentials, no network): the tests
assert the REST calls the SDK makes (method, path, bodies, traffic) and what the endpoint is
left serving. In the end-to-end test, the fake forwards scoring to the real local azmlinfsrv.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from scripts.endpoints import rollout
from tests.azure_fakes import (
    LOG_ANALYTICS_ID,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    TOKEN,
    WORKSPACE,
    WS_PATH,
    FakeWorkspace,
    StaticCredential,
    right_answers,
)
from tests.mlflow_nocode import score_nocode

DIGITS = rollout.load_sample_digits()


def wrong_answers(deployment: str | None, body: bytes) -> tuple[int, bytes]:
    """A deployment serving a broken model: always says 1."""
    n = len(json.loads(body)["data"])
    probabilities = [[0.0, 1.0] + [0.0] * 8] * n
    return 200, json.dumps({"predictions": [1] * n, "probabilities": probabilities}).encode()


@pytest.fixture
def fake(monkeypatch) -> FakeWorkspace:
    fake = FakeWorkspace(scorer=right_answers)
    fake.use_for_storage(monkeypatch)  # the blob uploader's own transport too
    for version in ("1", "2"):
        fake.seed_model("tf-mnist", version)
    return fake


@pytest.fixture
def ml_client(fake):
    return fake.ml_client()


def deploy(ml_client, messages: list[str] | None = None, **kwargs) -> rollout.RolloutReport:
    log = messages.append if messages is not None else (lambda _: None)
    return rollout.rollout(ml_client, log=log, sleep=lambda _: None, **kwargs)


@pytest.mark.slow
def test_first_rollout_creates_the_endpoint_and_serves_the_real_scorer(
    fake, ml_client, scoring_server
):
    """End to end: endpoint, environment, code upload, blue deployment, smoke test against
    score.py under the real azmlinfsrv, all traffic to blue."""

    def real_server(deployment: str | None, body: bytes) -> tuple[int, bytes]:
        reply = scoring_server.client.score(body)
        return reply.status, reply.body

    fake.scorer = real_server
    report = deploy(ml_client, model="azureml:tf-mnist:2")

    assert (report.deployment, report.previous, report.traffic) == ("blue", None, {"blue": 100})
    endpoint_put = fake.endpoint_puts("mnist-digits")[0].json()
    assert endpoint_put["properties"]["authMode"] == "AADToken"

    environment = fake.arm_calls("PUT", "/environments/tf-mnist-serving/versions/5")[0].json()
    assert environment["properties"]["image"].startswith("mcr.microsoft.com/azureml/openmpi5.0")
    assert "azureml-inference-server-http==1.4.1" in environment["properties"]["condaFile"]
    assert "azureml-ai-monitoring==1.0.0" in environment["properties"]["condaFile"]

    # Only the scoring code is uploaded (serving/code/), under the folder's own name.
    assert sorted(name.rsplit("/", 2)[-2:][1] for name in fake.blobs) == [
        "contract.py",
        "npy_body.py",
        "predictor.py",
        "request_log.py",
        "score.py",
    ]
    assert all("/code/" in name for name in fake.blobs)
    uploaded = {name.rsplit("/", 1)[1]: body for name, body in fake.blobs.items()}
    assert uploaded["score.py"] == (rollout.specs.SERVING_DIR / "code" / "score.py").read_bytes()

    (put,) = fake.arm_calls("PUT", "/onlineEndpoints/mnist-digits/deployments/blue")
    properties = put.json()["properties"]
    assert properties["model"] == f"{WS_PATH}/models/tf-mnist/versions/2"
    assert properties["environmentId"] == f"{WS_PATH}/environments/tf-mnist-serving/versions/5"
    assert properties["codeConfiguration"]["scoringScript"] == "score.py"
    assert properties["codeConfiguration"]["codeId"].startswith(f"{WS_PATH}/codes/")
    assert properties["instanceType"] == "Standard_DS3_v2"
    assert properties["requestSettings"] == {
        "maxConcurrentRequestsPerInstance": 4,
        "requestTimeout": "PT5S",
    }
    assert properties["environmentVariables"]["WORKER_COUNT"] == "4"
    assert properties["livenessProbe"]["initialDelay"] == "PT30S"
    assert put.json()["sku"]["capacity"] == 2

    # The smoke test went to blue alone, with the caller's Entra ID token.
    scoring = fake.scoring_calls()
    assert scoring and all(c.headers["azureml-model-deployment"] == "blue" for c in scoring)
    assert all(c.headers["Authorization"] == f"Bearer {TOKEN}" for c in scoring)
    assert fake.traffic_updates("mnist-digits") == [{}, {"blue": 100}]
    assert fake.endpoints["mnist-digits"]["properties"]["traffic"] == {"blue": 100}


def test_blue_to_green_shifts_traffic_in_steps_after_a_smoke_test(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    environment = rollout.specs.load_serving_environment()
    conda = rollout.specs.ENVIRONMENT_SPEC.with_name("conda.yml").read_text()
    fake.seed_environment("tf-mnist-serving", "5", environment.image, conda)
    messages: list[str] = []
    report = deploy(ml_client, messages, model="azureml:tf-mnist:2")

    assert (report.deployment, report.previous) == ("green", "blue")
    assert not fake.arm_calls("PUT", "/environments/")  # an existing version is reused
    assert fake.traffic_updates("mnist-digits") == [
        {"green": 10, "blue": 90},
        {"green": 50, "blue": 50},
        {"green": 100},  # the SDK leaves out zero shares
    ]
    # Smoke tests before any traffic and after each step, always on green alone.
    scoring = fake.scoring_calls()
    assert len(scoring) == 4
    assert {c.headers["azureml-model-deployment"] for c in scoring} == {"green"}
    first_step = fake.requests.index(fake.endpoint_puts("mnist-digits")[0])
    assert fake.requests.index(scoring[0]) < first_step
    assert ("mnist-digits", "blue") in fake.deployments  # kept for a quick way back
    assert any("Smoke test of green passed (20 digits)" in m for m in messages)


def test_a_changed_environment_needs_a_new_version(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    conda = rollout.specs.ENVIRONMENT_SPEC.with_name("conda.yml").read_text()
    old = conda.replace("tensorflow-cpu==2.21.0", "tensorflow-cpu==2.20.0")
    image = rollout.specs.load_serving_environment().image
    fake.seed_environment("tf-mnist-serving", "5", image, old)
    with pytest.raises(rollout.RolloutError, match="differs from serving/environment/environment"):
        deploy(ml_client)
    assert not [c for c in fake.requests if c.method not in ("GET", "HEAD")]


def test_delete_old_removes_the_previous_colour(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"green": 100}, ["green"])
    report = deploy(ml_client, delete_old=True, steps=[100])
    assert (report.deployment, report.previous) == ("blue", "green")
    assert fake.traffic_updates("mnist-digits") == [{"blue": 100}]
    (delete,) = fake.arm_calls("DELETE")
    assert delete.path.endswith("/onlineEndpoints/mnist-digits/deployments/green")
    assert ("mnist-digits", "green") not in fake.deployments


def test_failed_smoke_test_rolls_back_before_any_traffic_moves(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    fake.scorer = wrong_answers
    with pytest.raises(rollout.RolloutError) as failure:
        deploy(ml_client, model="azureml:tf-mnist:2")
    message = str(failure.value)
    assert "Smoke test of green failed" in message
    assert "only 10% of the sample digits are right" in message
    assert "all traffic is back on blue" in message and "deleted green" in message
    assert fake.traffic_updates("mnist-digits") == [{"blue": 100}]
    assert ("mnist-digits", "green") not in fake.deployments
    assert fake.endpoints["mnist-digits"]["properties"]["traffic"] == {"blue": 100}


def test_probabilities_that_do_not_sum_to_one_fail_the_smoke_test(fake, ml_client):
    """Right digits, wrong numbers: softmax left out, say. Every digit is right, so only the
    probabilities-sum check can stop this rollout."""

    def unnormalised(deployment, body):
        scores = [[0.5 if d == label else 0.1 for d in range(10)] for label in DIGITS.labels]
        return 200, json.dumps({"predictions": DIGITS.labels, "probabilities": scores}).encode()

    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    fake.scorer = unnormalised
    with pytest.raises(rollout.RolloutError) as failure:
        deploy(ml_client, model="azureml:tf-mnist:2")
    message = str(failure.value)
    assert "Smoke test of green failed" in message
    assert "probabilities do not sum to 1 (sums [1.4, 1.4," in message
    assert "of the sample digits are right" not in message  # accuracy was not the reason
    assert "all traffic is back on blue" in message and "deleted green" in message
    assert fake.traffic_updates("mnist-digits") == [{"blue": 100}]
    assert ("mnist-digits", "green") not in fake.deployments


def test_failure_half_way_moves_traffic_back(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    answers = iter([right_answers, right_answers, wrong_answers])  # breaks after the 10% step

    def degrading(deployment, body):
        return next(answers, wrong_answers)(deployment, body)

    fake.scorer = degrading
    with pytest.raises(rollout.RolloutError, match="all traffic is back on blue"):
        deploy(ml_client)
    assert fake.traffic_updates("mnist-digits") == [
        {"green": 10, "blue": 90},
        {"green": 50, "blue": 50},
        {"blue": 100},
    ]
    assert fake.arm_calls("DELETE")[-1].path.endswith("/deployments/green")


def test_scoring_errors_fail_the_smoke_test(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    fake.scorer = lambda deployment, body: (
        500,
        b'{"message": "An unexpected error occurred in scoring script."}',
    )
    with pytest.raises(rollout.RolloutError) as failure:
        deploy(ml_client)
    assert "Smoke test of green failed" in str(failure.value)
    assert "unexpected error occurred in scoring script" in str(failure.value)
    assert "all traffic is back on blue" in str(failure.value)


def test_service_error_creating_the_deployment_is_one_clear_message(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    fake.fail(
        "PUT",
        r"/deployments/green$",
        409,
        "QuotaExceeded",
        "Not enough quota available for Standard_DS3_v2 in SubscriptionId ... Required: 8.",
    )
    with pytest.raises(rollout.RolloutError) as failure:
        deploy(ml_client)
    message = str(failure.value)
    assert message.startswith("Creating deployment green failed: ")
    assert "Not enough quota available for Standard_DS3_v2" in message
    assert "all traffic is back on blue" in message
    assert not fake.scoring_calls()


def test_split_traffic_is_refused_before_anything_changes(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"blue": 50, "green": 50}, ["blue", "green"])
    with pytest.raises(rollout.RolloutError, match="splits its traffic"):
        deploy(ml_client)
    assert not [c for c in fake.requests if c.method != "GET"]


def test_bad_steps_are_refused(ml_client):
    with pytest.raises(rollout.RolloutError, match="must rise within 1-100 and end at 100"):
        deploy(ml_client, steps=[50, 10])


@pytest.fixture(scope="module")
def nocode_model(trained_output) -> Callable[[str | None, bytes], tuple[int, bytes]]:
    """A no-code deployment of the real model folder training wrote: Azure ML's MLflow scoring
    emulated in a clean process that cannot import this repository (tests/mlflow_nocode.py).
    Answers are kept per request body (the rollout sends the same digits after each step)."""
    model = trained_output / "model"

    @functools.cache
    def answer(body: bytes) -> tuple[int, bytes]:
        status, payload = score_nocode(model, body)
        return status, json.dumps(payload).encode()

    return lambda deployment, body: answer(body)


@pytest.mark.slow
def test_no_code_deploys_the_real_mlflow_model_without_script_or_environment(
    fake, ml_client, nocode_model
):
    fake.scorer = nocode_model
    messages: list[str] = []
    report = deploy(ml_client, messages, no_code=True)
    assert report.endpoint == "mnist-digits-mlflow"
    assert report.traffic == {"blue": 100}
    (put,) = fake.arm_calls("PUT", "/onlineEndpoints/mnist-digits-mlflow/deployments/blue")
    properties = put.json()["properties"]
    assert "codeConfiguration" not in properties and "environmentId" not in properties
    assert properties["model"].startswith(f"{WS_PATH}/models/tf-mnist/versions/")
    assert not fake.blobs and not fake.arm_calls("PUT", "/environments/")
    # The smoke test scored the 20 sample digits in MLflow's format, through the real model.
    (request,) = {call.body for call in fake.scoring_calls()}
    assert set(json.loads(request)) == {"input_data"}
    status, body = nocode_model("blue", request)
    assert status == 200
    probabilities = np.asarray(json.loads(body))
    assert probabilities.shape == (20, 10)
    assert (probabilities.argmax(axis=1) == DIGITS.labels).mean() >= 0.9


# ----------------------------------------------------------------- the command line


# What `pulumi stack output --json` gives the commands: a prod-like stack (2-6 instances).
STACK_OUTPUTS = {
    "subscriptionId": SUBSCRIPTION,
    "tenantId": "00000000-0000-0000-0000-0000000000aa",
    "resourceGroupName": RESOURCE_GROUP,
    "location": "swedencentral",
    "workspaceName": WORKSPACE,
    "gpuClusterName": "gpu-cluster",
    "gpuVmSize": "Standard_NC4as_T4_v3",
    "gpuMaxNodes": 2,
    "gpusPerNode": 1,
    "cpuClusterName": "cpu-cluster",
    "storageAccountName": "stmnistdev",
    "datasetsContainerName": "datasets",
    "datasetsDatastoreName": "datasets",
    "containerRegistryName": "crmnistdev",
    "keyVaultName": "kv-mnist-dev",
    "computeIdentityId": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/x",
    "computeIdentityClientId": "00000000-0000-0000-0000-0000000000cc",
    "networkProfile": "standard",
    "logAnalyticsWorkspaceId": LOG_ANALYTICS_ID,
    "endpointMinInstances": 2,
    "endpointMaxInstances": 6,
    "alertEmails": ["oncall@contoso.com"],
}


stack_reads: list[str | None] = []  # the stacks the cli fixture's commands read


@pytest.fixture
def cli(monkeypatch, fake, ml_client):
    """``python -m scripts`` with the serving commands, using the offline workspace and a
    deployed stack's outputs; Azure Monitor calls reach the same fake through the SDK."""
    from azure.mgmt.monitor import MonitorManagementClient

    import scripts.__main__ as entry
    import scripts.azureml.workspace
    import scripts.infra
    import scripts.serving
    from infra.outputs import parse_stack_outputs

    def read_stack_outputs(stack):
        stack_reads.append(stack)  # each read runs the Pulumi CLI: seconds, so once a command
        return parse_stack_outputs(STACK_OUTPUTS)

    stack_reads.clear()
    monkeypatch.setattr(entry, "COMMAND_MODULES", ("scripts.serving",))
    # the real choice between the flags and the stack, then the offline workspace's client
    workspace = scripts.azureml.workspace
    monkeypatch.setattr(
        workspace, "connect", lambda args: (workspace.resolve_target(args), ml_client)
    )
    monkeypatch.setattr(scripts.infra, "read_stack_outputs", read_stack_outputs)

    def monitor_client(client, subscription_id):
        assert client is ml_client and subscription_id == SUBSCRIPTION
        return MonitorManagementClient(
            StaticCredential(), subscription_id, transport=fake.transport()
        )

    monkeypatch.setattr(scripts.serving, "_monitor_client", monitor_client)
    return entry.main


def test_deploy_command_reports_a_service_error_without_a_traceback(fake, cli, capsys):
    fake.fail("GET", r"/onlineEndpoints/mnist-digits$", 403, "AuthorizationFailed",
              "The client does not have authorization to perform action read.")  # fmt: skip
    code = cli(["deploy", "--step-wait", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: Azure ML refused the request (HTTP 403)")
    assert "does not have authorization" in err and "Traceback" not in err


def test_deploy_command_rolls_out(fake, cli, capsys):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    assert cli(["deploy", "--model", "azureml:tf-mnist:2", "--steps", "50", "100",
                "--step-wait", "0"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "mnist-digits: all traffic on green; blue kept at 0%." in out
    assert fake.traffic_updates("mnist-digits") == [{"green": 50, "blue": 50}, {"green": 100}]
    assert stack_reads == [None]  # the selected stack, read once for workspace and monitoring


def test_deploy_command_applies_the_stack_s_instance_range_and_log_analytics(
    fake, cli, capsys, monkeypatch
):
    import azure.ai.ml

    loaded: list[str] = []  # each deployment spec azure-ai-ml's loader reads
    real_loader = azure.ai.ml.load_online_deployment

    def counting_loader(source, **kwargs):
        loaded.append(Path(source).name)
        return real_loader(source, **kwargs)

    monkeypatch.setattr(azure.ai.ml, "load_online_deployment", counting_loader)
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    assert cli(["deploy", "--steps", "100", "--step-wait", "0", "--sampling-rate", "0.5"]) == 0
    # one load per deploy: checked (sampling rate, consistency), named, then made green
    assert loaded == ["deployment.yml"]
    out = capsys.readouterr().out
    assert "Autoscale: green runs 2 to 6 instances" in out
    (autoscale,) = fake.autoscale_settings.values()
    (profile,) = autoscale["properties"]["profiles"]
    assert profile["capacity"] == {"minimum": "2", "maximum": "6", "default": "2"}
    assert set(fake.diagnostic_settings) == {ENDPOINT_ID, f"{ENDPOINT_ID}/deployments/green"}
    assert all(
        setting["properties"]["workspaceId"] == LOG_ANALYTICS_ID
        for setting in fake.diagnostic_settings.values()
    )
    collections = fake.deployments[("mnist-digits", "green")]["properties"]["dataCollector"]
    assert {c["samplingRate"] for c in collections["collections"].values()} == {0.5}
    assert not fake.schedules  # the monitor only with --monitor


def test_deploy_with_flags_instead_of_the_stack_skips_what_the_stack_provides(
    fake, cli, capsys, monkeypatch
):
    import scripts.infra

    def no_stack(stack):
        raise AssertionError("the flags name the workspace: the stack is not read")

    monkeypatch.setattr(scripts.infra, "read_stack_outputs", no_stack)
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    flags = ["--subscription", SUBSCRIPTION, "--resource-group", RESOURCE_GROUP,
             "--workspace", WORKSPACE]  # fmt: skip
    assert cli(["deploy", "--steps", "100", "--step-wait", "0", *flags]) == 0
    assert "no diagnostic settings or autoscale" in capsys.readouterr().out
    assert not fake.autoscale_settings and not fake.diagnostic_settings


@pytest.mark.parametrize("rate", ["0", "1.01", "-1", "ten", "nan"])
def test_a_bad_sampling_rate_is_a_usage_error(cli, fake, capsys, rate):
    with pytest.raises(SystemExit) as exit_:
        cli(["deploy", "--sampling-rate", rate])
    assert exit_.value.code == 2
    assert "is not a share of requests: give a number above 0 and at most 1" in (
        capsys.readouterr().err
    )
    assert not fake.requests


def test_deploy_monitor_points_the_drift_monitor_at_the_new_colour(fake, cli, capsys, mnist_dir):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    code = cli(["deploy", "--steps", "100", "--step-wait", "0", "--monitor",
                "--data-folder", str(mnist_dir)])  # fmt: skip
    assert code == 0
    (stored,) = fake.schedules.values()
    definition = stored["properties"]["action"]["monitorDefinition"]
    assert definition["monitoringTarget"]["deploymentId"] == f"{ENDPOINT_ID}/deployments/green"
    assert definition["alertNotificationSetting"]["emailNotificationSetting"]["emails"] == [
        "oncall@contoso.com"
    ]
    labels = next(body for name, body in fake.blobs.items() if name.endswith("/labels.csv"))
    assert labels.count(b"\n") == 60_001  # header + the 60,000 training labels
    assert "Monitor mnist-digits-prediction-drift" in capsys.readouterr().out


def test_monitor_command_without_an_endpoint_says_deploy_first(fake, cli, capsys):
    assert cli(["monitor", "--email", "me@contoso.com"]) == 2
    err = capsys.readouterr().err
    assert "Endpoint mnist-digits does not exist: deploy first" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_deploy_no_code_command_serves_the_real_model(fake, cli, nocode_model, capsys):
    fake.scorer = nocode_model
    assert cli(["deploy", "--no-code", "--step-wait", "0"]) == 0
    assert "mnist-digits-mlflow: all traffic on blue." in capsys.readouterr().out


def test_deploy_command_needs_all_three_workspace_flags(monkeypatch, capsys):
    import scripts.__main__ as entry

    monkeypatch.setattr(entry, "COMMAND_MODULES", ("scripts.serving",))
    assert entry.main(["deploy", "--subscription", "x"]) == 2
    err = capsys.readouterr().err
    assert "Which workspace? --subscription alone names only part of one: also pass " in err
    assert "--resource-group and --workspace" in err


def test_the_workspace_comes_from_the_pulumi_stack_by_default(monkeypatch):
    import argparse

    import scripts.azureml.workspace
    import scripts.infra
    from infra.outputs import OUTPUT_KEYS, parse_stack_outputs

    values = {key: f"value-{key}" for key in OUTPUT_KEYS.values()}
    values.update(
        subscriptionId=SUBSCRIPTION,
        gpuMaxNodes=2,
        gpusPerNode=1,
        endpointMinInstances=1,
        endpointMaxInstances=3,
        alertEmails=[],
    )
    stacks: list[str | None] = []

    def read(stack):
        stacks.append(stack)
        return parse_stack_outputs(values)

    monkeypatch.setattr(scripts.infra, "read_stack_outputs", read)
    args = argparse.Namespace(stack="prod", subscription=None, resource_group=None, workspace=None)
    target = scripts.azureml.workspace.resolve_target(args)
    assert (target.subscription_id, target.resource_group, target.workspace_name) == (
        SUBSCRIPTION,
        "value-resourceGroupName",
        "value-workspaceName",
    )
    assert stacks == ["prod"]


def test_dry_run_prints_the_deployment_without_azure(monkeypatch, capsys):
    import scripts.__main__ as entry

    monkeypatch.setattr(entry, "COMMAND_MODULES", ("scripts.serving",))
    assert entry.main(["deploy", "--dry-run", "--model", "azureml:tf-mnist:3"]) == 0
    out = capsys.readouterr().out
    assert "model: azureml:tf-mnist:3" in out and "instance_type: Standard_DS3_v2" in out
    assert "app_insights_enabled: true" in out and "sampling_rate: 0.1" in out
    assert entry.main(["deploy", "--dry-run", "--sampling-rate", "0.3"]) == 0
    assert "sampling_rate: 0.3" in capsys.readouterr().out


# ----------------------------------------------------------------- monitoring and autoscale

ENDPOINT_ID = f"{WS_PATH}/onlineEndpoints/mnist-digits"


@pytest.fixture
def operations(fake):
    from azure.mgmt.monitor import MonitorManagementClient

    from scripts.endpoints import azure_monitor

    monitor = MonitorManagementClient(StaticCredential(), SUBSCRIPTION, transport=fake.transport())
    return azure_monitor.Operations(
        monitor=monitor,
        resource_group=RESOURCE_GROUP,
        log_analytics_workspace_id=LOG_ANALYTICS_ID,
        scale=azure_monitor.Scale(min_instances=1, max_instances=3),
    )


def _rule(metric: str, operator: str, threshold: float, window: str, cooldown: str, **extra):
    direction = "Increase" if operator == "GreaterThan" else "Decrease"
    namespace = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
    resource = ENDPOINT_ID
    if metric == "CpuUtilizationPercentage":
        namespace += "/deployments"
        resource = f"{ENDPOINT_ID}/deployments/green"
    trigger = {
        "metricName": metric,
        "metricNamespace": namespace,
        "metricResourceUri": resource,
        "timeGrain": "PT1M",
        "statistic": "Average",
        "timeWindow": window,
        "timeAggregation": "Average",
        "operator": operator,
        "threshold": threshold,
        **extra,
    }
    action = {"direction": direction, "type": "ChangeCount", "value": "1", "cooldown": cooldown}
    return {"metricTrigger": trigger, "scaleAction": action}


GREEN_ONLY = {
    "dimensions": [{"DimensionName": "deployment", "Operator": "Equals", "Values": ["green"]}],
    "dividePerInstance": True,
}


def test_the_new_colour_reports_to_log_analytics_before_it_serves_and_then_autoscales(
    fake, ml_client, operations
):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    messages: list[str] = []
    deploy(ml_client, messages, model="azureml:tf-mnist:2", operations=operations)

    # Requests are reported under the endpoint's name; the data collector samples 10%.
    (put,) = [c for c in fake.arm_calls("PUT") if c.path == f"{ENDPOINT_ID}/deployments/green"]
    properties = put.json()["properties"]
    assert properties["environmentVariables"]["SERVICE_NAME"] == "mnist-digits"
    assert properties["appInsightsEnabled"] is True
    collections = properties["dataCollector"]["collections"]
    assert set(collections) == {"model_inputs", "model_outputs"}
    assert {c["samplingRate"] for c in collections.values()} == {0.1}
    assert {c["dataCollectionMode"] for c in collections.values()} == {"enabled"}
    assert collections["model_outputs"]["dataId"] == (
        f"{WS_PATH}/data/mnist-digits-green-model_outputs/versions/1"
    )
    assert fake.data[("mnist-digits-green-model_outputs", "1")]["properties"]["dataUri"] == (
        "azureml://datastores/workspaceblobstore/paths/modelDataCollector/mnist-digits/green/"
        "model_outputs"
    )

    # Diagnostic settings: the endpoint's logs and metrics, green's metrics, before any
    # smoke test or traffic.
    diagnostics = fake.arm_calls("PUT", "/diagnosticSettings/send-to-log-analytics")
    assert [c.path for c in diagnostics] == [
        f"{ENDPOINT_ID}/providers/Microsoft.Insights/diagnosticSettings/send-to-log-analytics",
        f"{ENDPOINT_ID}/deployments/green/providers/Microsoft.Insights/diagnosticSettings/"
        "send-to-log-analytics",
    ]
    assert {c.query["api-version"] for c in diagnostics} == {"2021-05-01-preview"}
    endpoint_setting, green_setting = (c.json()["properties"] for c in diagnostics)
    assert endpoint_setting == {
        "workspaceId": LOG_ANALYTICS_ID,
        "logAnalyticsDestinationType": "Dedicated",
        "logs": [{"categoryGroup": "allLogs", "enabled": True}],
        "metrics": [{"category": "AllMetrics", "enabled": True}],
    }
    assert green_setting["metrics"] == [{"category": "AllMetrics", "enabled": True}]
    assert green_setting["logs"] == [] and green_setting["workspaceId"] == LOG_ANALYTICS_ID
    assert fake.requests.index(diagnostics[-1]) < fake.requests.index(fake.scoring_calls()[0])

    # Autoscale once green takes all traffic: 1-3 instances on CPU and requests per instance.
    (autoscale,) = fake.arm_calls("PUT", "/autoscalesettings/")
    assert autoscale.path == (
        f"/subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}"  # the SDK's spelling
        "/providers/Microsoft.Insights/autoscalesettings/mnist-digits-autoscale"
    )
    assert autoscale.query["api-version"] == "2022-10-01"
    assert autoscale.headers["Authorization"] == f"Bearer {TOKEN}"
    assert fake.requests.index(autoscale) > fake.requests.index(
        fake.endpoint_puts("mnist-digits")[-1]
    )
    body = autoscale.json()
    assert body["location"] == "swedencentral"
    assert body["properties"]["enabled"] is True
    assert body["properties"]["targetResourceUri"] == f"{ENDPOINT_ID}/deployments/green"
    (profile,) = body["properties"]["profiles"]
    assert profile["capacity"] == {"minimum": "1", "maximum": "3", "default": "1"}
    assert profile["rules"] == [
        _rule("CpuUtilizationPercentage", "GreaterThan", 70, "PT5M", "PT5M"),
        _rule("RequestsPerMinute", "GreaterThan", 60000, "PT5M", "PT5M", **GREEN_ONLY),
        _rule("CpuUtilizationPercentage", "LessThan", 25, "PT15M", "PT15M"),
        _rule("RequestsPerMinute", "LessThan", 15000, "PT15M", "PT15M", **GREEN_ONLY),
    ]
    assert any("Autoscale: green runs 1 to 3 instances" in m for m in messages)


def test_the_autoscale_setting_follows_the_serving_colour(fake, ml_client, operations):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    deploy(ml_client, steps=[100], operations=operations)
    deploy(ml_client, steps=[100], operations=operations, delete_old=True)
    targets = [
        c.json()["properties"]["targetResourceUri"].rsplit("/", 1)[1]
        for c in fake.arm_calls("PUT", "/autoscalesettings/")
    ]
    assert targets == ["green", "blue"]
    (setting,) = fake.autoscale_settings.values()  # one per endpoint, moved, never duplicated
    assert setting["properties"]["targetResourceUri"] == f"{ENDPOINT_ID}/deployments/blue"
    assert ("mnist-digits", "green") not in fake.deployments


def test_a_refused_diagnostic_setting_rolls_back_before_any_traffic(fake, ml_client, operations):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    fake.fail("PUT", r"/diagnosticSettings/", 403, "AuthorizationFailed",
              "The client does not have authorization to perform action "
              "'microsoft.insights/diagnosticSettings/write'.")  # fmt: skip
    with pytest.raises(rollout.RolloutError) as failure:
        deploy(ml_client, operations=operations)
    message = str(failure.value)
    assert "Azure Monitor refused the diagnostic setting of the endpoint" in message
    assert "Monitoring Contributor" in message
    assert "all traffic is back on blue" in message and "deleted green" in message
    assert fake.traffic_updates("mnist-digits") == [{"blue": 100}]
    assert not fake.scoring_calls() and not fake.arm_calls("PUT", "/autoscalesettings/")


def test_a_refused_autoscale_leaves_the_new_colour_serving_and_says_so(fake, ml_client, operations):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    fake.fail("PUT", r"/autoscalesettings/", 403, "AuthorizationFailed",
              "no permission for microsoft.insights/autoscalesettings/write")  # fmt: skip
    with pytest.raises(rollout.RolloutError) as failure:
        deploy(ml_client, steps=[100], operations=operations)
    message = str(failure.value)
    assert message.startswith("green serves all traffic of mnist-digits, but autoscale was not")
    assert "autoscalesettings/write" in message and "Rolled back" not in message
    assert fake.endpoints["mnist-digits"]["properties"]["traffic"] == {"green": 100}


def test_the_sampling_rate_overrides_the_spec(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    deploy(ml_client, steps=[100], sampling_rate=0.25)
    (put,) = fake.arm_calls("PUT", "/deployments/green")
    collections = put.json()["properties"]["dataCollector"]["collections"]
    assert [c["samplingRate"] for c in collections.values()] == [0.25, 0.25]


@pytest.mark.parametrize("rate", [0, -0.1, 1.5])
def test_a_sampling_rate_outside_0_to_1_is_refused_before_azure(fake, ml_client, rate):
    with pytest.raises(rollout.RolloutError, match="must be above 0 and at most 1"):
        deploy(ml_client, sampling_rate=rate)
    assert not fake.requests


def test_the_no_code_deployment_has_nothing_to_sample(fake, ml_client):
    with pytest.raises(rollout.RolloutError, match=r"mlflow-deployment\.yml has no data_collector"):
        deploy(ml_client, no_code=True, sampling_rate=0.5)
    assert not fake.requests
