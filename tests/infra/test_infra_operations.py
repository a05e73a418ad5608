"""Policy on operating the stack: diagnostic settings, the action group, the alert rules on the
online endpoints and the cost budget, as the real program declares them under the mocks."""

from __future__ import annotations

import datetime

import pytest

from infra.config import load_project, read_stack_values
from infra.operations import budget_start_date
from tests.infra.infra_harness import SUBSCRIPTION, Deployment, deploy

DIAGNOSTIC = "azure-native:monitor:DiagnosticSetting"
ACTION_GROUP = "azure-native:monitor:ActionGroup"
ALERT = "azure-native:monitor:ScheduledQueryRule"
BUDGET = "azure-native:consumption:Budget"
LOGS = "azure-native:operationalinsights:Workspace"

# Resource types that emit resource logs, written out: each must have one diagnostic setting
# per (sub-resource path, log category groups, metric category) listed here. Storage logs live
# on the blob service, the account itself exports metrics only.
EMITS_LOGS: dict[str, list[tuple[str, list[str], str]]] = {
    "azure-native:machinelearningservices:Workspace": [("", ["allLogs"], "AllMetrics")],
    "azure-native:storage:StorageAccount": [
        ("", [], "Transaction"),
        ("/blobServices/default", ["allLogs"], "Transaction"),
    ],
    "azure-native:keyvault:Vault": [("", ["allLogs"], "AllMetrics")],
    "azure-native:containerregistry:Registry": [("", ["allLogs"], "AllMetrics")],
    LOGS: [("", ["allLogs"], "AllMetrics")],
}
# Every other type the stack declares, and why it needs no diagnostic setting. A new resource
# type must be put in one of the two tables: the test fails until someone decides.
NO_RESOURCE_LOGS: dict[str, str] = {
    "random:index/randomString:RandomString": "not an Azure resource",
    "azure-native:resources:ResourceGroup": "its operations are in the activity log",
    "azure-native:storage:BlobContainer": "logged by the blob service's setting",
    "azure-native:applicationinsights:Component": "workspace-based: its tables are in the logs",
    "azure-native:machinelearningservices:Datastore": "part of the workspace",
    "azure-native:machinelearningservices:Compute": "AmlCompute* events come from the workspace",
    "azure-native:managedidentity:UserAssignedIdentity": "no resource logs",
    "azure-native:authorization:RoleAssignment": "activity log",
    "azure-native:network:VirtualNetwork": "VMProtectionAlerts only; it holds no VMs",
    "azure-native:network:Subnet": "no resource logs",
    "azure-native:network:PrivateEndpoint": "metrics only",
    "azure-native:network:PrivateDnsZoneGroup": "no resource logs",
    "azure-native:privatedns:PrivateZone": "metrics only",
    "azure-native:privatedns:VirtualNetworkLink": "no resource logs",
    DIAGNOSTIC: "the settings themselves",
    ACTION_GROUP: "no resource logs; its notifications are in the alert history",
    ALERT: "fired alerts are in Azure Monitor's alert history",
    BUDGET: "no resource logs",
}

FIRST_OF_THIS_MONTH = datetime.datetime.now(datetime.UTC).date().replace(day=1).isoformat()
ONCALL = ["oncall@contoso.com", "ml-lead@contoso.com"]
FINANCE = ["finance@contoso.com"]


@pytest.fixture(scope="module", params=["standard", "private"])
def any_profile(request: pytest.FixtureRequest) -> Deployment:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def with_emails() -> Deployment:
    return deploy({"alertEmails": ONCALL, "budgetContactEmails": FINANCE})


def _group_id(deployment: Deployment) -> str:
    group = deployment.one("azure-native:resources:ResourceGroup").inputs["resourceGroupName"]
    return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}"


# --- diagnostic settings ----------------------------------------------------------------


def test_every_resource_that_emits_logs_sends_them_to_the_stacks_log_analytics(
    any_profile: Deployment,
) -> None:
    custom = [r for r in any_profile.registrations if r.custom]
    unclassified = {r.type for r in custom} - set(EMITS_LOGS) - set(NO_RESOURCE_LOGS)
    assert not unclassified, f"does it emit resource logs? classify {unclassified}"

    workspace_id = any_profile.one(LOGS).id
    assert workspace_id.startswith(f"{_group_id(any_profile)}/providers/")
    # The rollout reads it to send each online deployment's metrics to the same place.
    assert any_profile.outputs["logAnalyticsWorkspaceId"] == workspace_id
    settings = {s.inputs["resourceUri"]: s.inputs for s in any_profile.of_type(DIAGNOSTIC)}
    expected = {
        f"{r.id}{path}": (groups, metric)
        for r in custom
        if r.type in EMITS_LOGS
        for path, groups, metric in EMITS_LOGS[r.type]
    }
    assert len(expected) == 6  # workspace, storage + blob, key vault, registry, logs
    assert set(settings) == set(expected)  # one each, none pointing elsewhere
    for uri, (groups, metric) in expected.items():
        setting = settings[uri]
        assert setting["workspaceId"] == workspace_id, uri
        assert setting["logAnalyticsDestinationType"] == "Dedicated", uri
        assert [g["categoryGroup"] for g in setting.get("logs", [])] == groups, uri
        assert all(g["enabled"] for g in setting.get("logs", [])), uri
        assert setting["metrics"] == [{"category": metric, "enabled": True}], uri
    assert len(any_profile.of_type(DIAGNOSTIC)) == len(settings)


# --- alerts -----------------------------------------------------------------------------


def _alerts(deployment: Deployment) -> dict[str, dict]:
    return {r.inputs["ruleName"]: r.inputs for r in deployment.of_type(ALERT)}


def _condition(alert: dict) -> dict:
    (condition,) = alert["criteria"]["allOf"]
    return condition


def test_alerts_watch_the_endpoints_through_the_stacks_workspace(standard: Deployment) -> None:
    """The four alerts of the issue with their default thresholds, each querying the stack's
    Log Analytics workspace (which exists before any endpoint) and notifying its action
    group."""
    alerts = _alerts(standard)
    rows = {
        name: (
            _condition(a)["metricMeasureColumn"],
            _condition(a)["operator"],
            _condition(a)["threshold"],
            a["severity"],
        )
        for name, a in alerts.items()
    }
    assert rows == {
        "alert-mnist-dev-server-errors": ("ServerErrorPercent", "GreaterThan", 5, 1),
        "alert-mnist-dev-latency-p99": ("LatencyP99Ms", "GreaterThan", 1000, 2),
        "alert-mnist-dev-cpu": ("CpuPercent", "GreaterThan", 80, 2),
        "alert-mnist-dev-memory": ("MemoryPercent", "GreaterThan", 85, 2),
    }
    group = _group_id(standard)
    logs_id = standard.one(LOGS).id
    action_group = standard.one(ACTION_GROUP)
    assert action_group.id.startswith(f"{group}/providers/Microsoft.Insights/actionGroups/")
    for name, alert in alerts.items():
        assert alert["scopes"] == [logs_id], name
        assert alert["actions"] == {"actionGroups": [action_group.id]}, name
        assert alert["kind"] == "LogAlert" and alert["enabled"] is True, name
        assert alert["location"] == "westeurope", name  # the workspace's region
        assert (alert["windowSize"], alert["evaluationFrequency"]) == ("PT5M", "PT5M"), name
        assert alert["autoMitigate"] is True, name
        assert _condition(alert)["metricMeasureColumn"] in _condition(alert)["query"], name


def test_alert_queries_read_the_metrics_azure_names(standard: Deployment) -> None:
    """The metric names of Azure Monitor's reference for online deployments, and the columns
    the inference server's request telemetry fills, written out."""
    alerts = _alerts(standard)
    errors = _condition(alerts["alert-mnist-dev-server-errors"])
    assert errors["query"].startswith("AppRequests\n")
    assert "countif(toint(ResultCode) >= 500)" in errors["query"]
    assert "where Requests >= 10" in errors["query"]
    assert errors["dimensions"] == [{"name": "Service", "operator": "Include", "values": ["*"]}]
    latency = _condition(alerts["alert-mnist-dev-latency-p99"])
    assert "percentile(DurationMs, 99)" in latency["query"]
    for name, metric in (
        ("alert-mnist-dev-cpu", '"CpuUtilizationPercentage"'),
        ("alert-mnist-dev-memory", '"CpuMemoryUtilizationPercentage"'),
    ):
        condition = _condition(alerts[name])
        assert condition["query"].startswith("AzureMetrics\n"), name
        assert f"MetricName == {metric}" in condition["query"], name
        assert '_ResourceId has "/onlineendpoints/"' in condition["query"], name  # not clusters
        assert condition["resourceIdColumn"] == "_ResourceId", name


def test_alert_thresholds_come_from_the_prod_stack_file() -> None:
    deployment = deploy(read_stack_values("prod", load_project()), stack="prod")
    thresholds = {
        name: _condition(alert)["threshold"] for name, alert in _alerts(deployment).items()
    }
    assert thresholds == {
        "alert-mnist-prod-server-errors": 1,
        "alert-mnist-prod-latency-p99": 500,
        "alert-mnist-prod-cpu": 70,
        "alert-mnist-prod-memory": 75,
    }
    assert deployment.one(BUDGET).inputs["amount"] == 3000


def test_the_action_group_mails_the_configured_addresses(
    standard: Deployment, with_emails: Deployment
) -> None:
    empty = standard.one(ACTION_GROUP).inputs
    assert empty["emailReceivers"] == []
    assert empty["location"] == "global" and empty["enabled"] is True
    inputs = with_emails.one(ACTION_GROUP).inputs
    assert [r["emailAddress"] for r in inputs["emailReceivers"]] == ONCALL
    assert len({r["name"] for r in inputs["emailReceivers"]}) == 2  # names must be unique
    assert all(r["useCommonAlertSchema"] for r in inputs["emailReceivers"])
    assert inputs["groupShortName"] == "mnistdev"


def test_action_group_short_name_fits_azures_12_characters() -> None:
    deployment = deploy({"project": "visionteam", "environment": "prod99"})
    assert deployment.one(ACTION_GROUP).inputs["groupShortName"] == "visionteampr"


# --- budget -----------------------------------------------------------------------------


def test_budget_on_the_resource_group_with_its_thresholds(standard: Deployment) -> None:
    budget = standard.one(BUDGET)
    inputs = budget.inputs
    assert inputs["scope"] == _group_id(standard)
    assert (inputs["amount"], inputs["category"], inputs["timeGrain"]) == (500, "Cost", "Monthly")
    notifications = {
        (n["thresholdType"], n["threshold"], n["operator"])
        for n in inputs["notifications"].values()
    }
    assert notifications == {
        ("Actual", 50, "GreaterThanOrEqualTo"),
        ("Actual", 80, "GreaterThanOrEqualTo"),
        ("Actual", 100, "GreaterThanOrEqualTo"),
        ("Forecasted", 100, "GreaterThan"),
    }
    action_group = standard.one(ACTION_GROUP).id
    for notification in inputs["notifications"].values():
        assert notification["enabled"] is True
        assert notification["contactGroups"] == [action_group]  # someone is always told
        assert notification["contactEmails"] == []


def test_budget_mails_its_contacts_and_the_action_group(with_emails: Deployment) -> None:
    action_group = with_emails.one(ACTION_GROUP).id
    for notification in with_emails.one(BUDGET).inputs["notifications"].values():
        assert notification["contactEmails"] == FINANCE
        assert notification["contactGroups"] == [action_group]


def test_budget_start_is_set_once_and_then_left_alone(standard: Deployment) -> None:
    """A start date computed at every run would diff every month; a fixed one would be refused
    by Azure (a past start must be in the current month): it is set on creation, then the
    engine is told to ignore it."""
    budget = standard.one(BUDGET)
    assert budget.inputs["timePeriod"] == {"startDate": f"{FIRST_OF_THIS_MONTH}T00:00:00Z"}
    assert budget.ignore_changes == ["timePeriod.startDate"]


@pytest.mark.parametrize(
    ("today", "start"),
    [
        (datetime.date(2026, 11, 30), "2026-11-01T00:00:00Z"),
        (datetime.date(2027, 1, 1), "2027-01-01T00:00:00Z"),
        (datetime.date(2028, 2, 29), "2028-02-01T00:00:00Z"),
    ],
)
def test_budget_start_is_the_first_of_the_month(today: datetime.date, start: str) -> None:
    assert budget_start_date(today) == start
