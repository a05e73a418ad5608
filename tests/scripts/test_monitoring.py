"""The prediction-drift monitor: its YAML through azure-ai-ml's loader, the reference data from the
real MNIST training labels, and ``apply_monitor`` / ``python -m scripts monitor`` through the
SDK down to its HTTP transport (``tests.azure_fakes.FakeWorkspace``)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import yaml

from scripts.endpoints import drift_schedule as schedule
from scripts.endpoints import rollout
from tests.azure_fakes import WS_PATH, FakeWorkspace, right_answers

# Digit counts of the 60,000 MNIST training labels (train-labels-idx1-ubyte).
TRAINING_COUNTS = {0: 5923, 1: 6742, 2: 5958, 3: 6131, 4: 5842, 5: 5421, 6: 5918, 7: 6265,
                   8: 5851, 9: 5949}  # fmt: skip


def test_the_schedule_yaml_loads_with_azure_ai_ml_for_the_serving_colour():
    monitor = schedule.load_monitor("mnist-digits", "green", ["oncall@contoso.com"])
    assert monitor.name == "mnist-digits-prediction-drift"
    assert (monitor.trigger.frequency, monitor.trigger.interval) == ("day", 1)
    assert (monitor.trigger.schedule.hours, monitor.trigger.schedule.minutes) == (3, 0)
    definition = monitor.create_monitor
    assert definition.monitoring_target.endpoint_deployment_id == "azureml:mnist-digits:green"
    assert definition.monitoring_target.ml_task == "classification"
    assert (definition.compute.instance_type, definition.compute.runtime_version) == (
        "standard_e4s_v3",
        "3.4",
    )
    (name,) = definition.monitoring_signals
    signal = definition.monitoring_signals[name]
    assert signal.type == "prediction_drift"
    assert signal.production_data is None  # azure-ai-ml takes it from the data collector
    reference = signal.reference_data
    assert (reference.input_data.path, reference.input_data.type) == (
        "mnist-training-labels:1",
        "mltable",
    )
    assert reference.data_column_names == {"prediction": "digit"}
    thresholds = signal.metric_thresholds
    assert thresholds.categorical.jensen_shannon_distance == 0.1
    assert signal.alert_enabled is True
    assert definition.alert_notification.emails == ["oncall@contoso.com"]
    assert schedule.load_monitor("mnist-digits", "blue").create_monitor.alert_notification is None


def test_the_reference_table_holds_the_real_training_labels(mnist_dir, tmp_path):
    from training.data import FILES, read_idx

    labels = read_idx(mnist_dir / "train-labels-idx1-ubyte.gz", FILES["train_labels"])
    folder = schedule.write_reference_table(labels, tmp_path / "labels")
    lines = (folder / "labels.csv").read_text().splitlines()
    assert lines[0] == "digit" and len(lines) == 60_001
    assert collections.Counter(int(v) for v in lines[1:]) == TRAINING_COUNTS
    table = yaml.safe_load((folder / "MLTable").read_text())
    assert table["type"] == "mltable"
    assert table["paths"] == [{"file": "./labels.csv"}]
    read = table["transformations"][0]["read_delimited"]
    assert (read["delimiter"], read["header"]) == (",", "all_files_same_headers")


@pytest.mark.parametrize("labels", [np.array([1, 10]), np.array([-1, 2]), np.zeros((2, 2))])
def test_labels_that_are_not_digits_are_refused(tmp_path, labels):
    with pytest.raises(schedule.MonitorError):
        schedule.write_reference_table(labels, tmp_path / "labels")
    assert not (tmp_path / "labels").exists()


# ----------------------------------------------------------------- through the SDK


@pytest.fixture
def fake(monkeypatch) -> FakeWorkspace:
    fake = FakeWorkspace(scorer=right_answers)
    fake.use_for_storage(monkeypatch)
    for version in ("1", "2"):
        fake.seed_model("tf-mnist", version)
    return fake


@pytest.fixture
def ml_client(fake):
    return fake.ml_client()


def test_apply_registers_the_reference_and_monitors_the_serving_colour(fake, ml_client):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    rollout.rollout(ml_client, steps=[100], log=lambda _: None)  # green, with its data collector
    messages: list[str] = []
    labels = np.array([0, 1, 1, 7])
    schedule.apply_monitor(
        ml_client,
        endpoint="mnist-digits",
        labels=lambda: labels,
        emails=["oncall@contoso.com"],
        log=messages.append,
    )
    # The reference data: an MLTable folder uploaded, registered as mnist-training-labels:1.
    (data_put,) = fake.arm_calls("PUT", "/data/mnist-training-labels/versions/1")
    assert data_put.json()["properties"]["dataType"] == "mltable"
    uploaded = {name.rsplit("/", 1)[1]: body for name, body in fake.blobs.items()}
    assert uploaded["labels.csv"] == b"digit\n0\n1\n1\n7\n"
    assert b"read_delimited" in uploaded["MLTable"]

    (put,) = fake.arm_calls("PUT", "/schedules/mnist-digits-prediction-drift")
    action = put.json()["properties"]["action"]
    assert action["actionType"] == "CreateMonitor"
    monitor = action["monitorDefinition"]
    assert monitor["monitoringTarget"]["deploymentId"] == (
        f"{WS_PATH}/onlineEndpoints/mnist-digits/deployments/green"
    )
    assert monitor["alertNotificationSetting"]["emailNotificationSetting"]["emails"] == [
        "oncall@contoso.com"
    ]
    assert monitor["computeConfiguration"]["computeType"] == "ServerlessSpark"
    assert put.json()["properties"]["trigger"]["schedule"] == {"hours": [3], "minutes": [0]}
    (signal,) = monitor["signals"].values()
    assert (signal["signalType"], signal["mode"]) == ("PredictionDrift", "Enabled")
    assert signal["metricThresholds"] == [
        {"metric": "jensenShannonDistance", "threshold": {"value": 0.1}, "dataType": "Categorical"}
    ]
    # Production data: the model_outputs asset azure-ai-ml registered for green's collector.
    assert signal["productionData"]["uri"] == (
        f"{WS_PATH}/data/mnist-digits-green-model_outputs/versions/1"
    )
    assert signal["productionData"]["dataContext"] == "model_outputs"
    assert signal["referenceData"]["uri"] == f"{WS_PATH}/data/mnist-training-labels/versions/1"
    assert signal["referenceData"]["columns"] == {"prediction": "digit"}
    assert any("Registered reference data mnist-training-labels:1" in m for m in messages)


def test_a_rerun_after_the_next_rollout_follows_the_new_colour_and_reuses_the_reference(
    fake, ml_client
):
    fake.seed_endpoint("mnist-digits", {"blue": 100}, ["blue"])
    rollout.rollout(ml_client, steps=[100], log=lambda _: None)  # green serves
    schedule.apply_monitor(ml_client, endpoint="mnist-digits", labels=lambda: np.arange(10))
    rollout.rollout(ml_client, steps=[100], log=lambda _: None)  # blue serves again

    def unreadable():
        raise AssertionError("the labels are read only to register the reference")

    schedule.apply_monitor(ml_client, endpoint="mnist-digits", labels=unreadable)
    assert len(fake.arm_calls("PUT", "/data/mnist-training-labels/")) == 1
    targets = [
        c.json()["properties"]["action"]["monitorDefinition"]["monitoringTarget"]["deploymentId"]
        for c in fake.arm_calls("PUT", "/schedules/mnist-digits-prediction-drift")
    ]
    assert [t.rsplit("/", 1)[1] for t in targets] == ["green", "blue"]
    (stored,) = fake.schedules.values()
    action = stored["properties"]["action"]
    assert "alertNotificationSetting" not in action["monitorDefinition"]  # no alertEmails


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        ({"blue": 50, "green": 50}, "sends traffic to blue, green"),
        ({}, "sends traffic to no deployment"),
        (None, "Endpoint mnist-digits does not exist"),
    ],
    ids=["split", "idle", "missing"],
)
def test_no_single_serving_colour_is_refused_before_anything_changes(
    fake, ml_client, traffic, message
):
    if traffic is not None:
        fake.seed_endpoint("mnist-digits", traffic, ["blue", "green"])
    with pytest.raises(schedule.MonitorError, match=message):
        schedule.apply_monitor(ml_client, endpoint="mnist-digits", labels=lambda: np.arange(10))
    assert not [c for c in fake.requests if c.method != "GET"]
