"""Operations: who is told when the online endpoint fails or the bill grows.

An action group (the on-call e-mails), four alert rules on the online endpoints and their
deployments, and a monthly cost budget on the resource group that notifies the same group.

Why log search alerts, not metric alerts: the online endpoints and their deployments are
created by the rollout (``python -m scripts deploy``), after the stack, and blue/green
deployments come and go. A metric alert needs its target to exist when it is created, and
Azure Monitor's multi-resource metric alerts (scope: a resource group plus
``targetResourceType``), which would cover endpoints created later, are supported only for the
resource types in "Monitor multiple resources with one alert rule" (Azure Monitor docs,
alerts-types): virtual machines, SQL databases, key vaults, Redis, ... but no Azure Machine
Learning type. A log search alert on the stack's Log Analytics workspace exists before any
endpoint, and covers every endpoint and deployment the rollout creates, under any name.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import consumption, monitor

from infra.config import AlertThresholds

COMPONENT_TYPE = "mlplatform:azure:Operations"

# Alert evaluation: every 5 minutes over the last 5 minutes (ISO 8601 durations).
ALERT_WINDOW = "PT5M"
# Fewer scored requests than this in a window never raise the 5xx alert (one failed request
# out of two is not an outage).
MIN_REQUESTS_FOR_ERROR_RATE = 10

# Budget notifications: (key, threshold type, percent of the monthly amount). Azure allows up
# to five notifications per budget.
BUDGET_NOTIFICATIONS: tuple[tuple[str, str, int], ...] = (
    ("actual-50", "Actual", 50),
    ("actual-80", "Actual", 80),
    ("actual-100", "Actual", 100),
    ("forecast-100", "Forecasted", 100),
)

# Where the data comes from.
# - AppRequests: the requests table of the workspace-based Application Insights, filled when a
#   deployment runs with `app_insights_enabled: true`; the Azure ML inference server
#   (azureml-inference-server-http, server/appinsights_client.py `log_request`) writes one row
#   per scoring request with ResultCode, DurationMs and the "Service Name" property (the
#   server's SERVICE_NAME variable, "ML service" when unset: then every endpoint shares one
#   series). Rows without that property are not scoring requests and are left out.
# - AzureMetrics: platform metrics exported by diagnostic settings. CpuUtilizationPercentage
#   and CpuMemoryUtilizationPercentage are metrics of
#   Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments (Azure Monitor
#   reference, "Supported metrics" for that type: Percent, per instanceId, "DS Export: Yes");
#   they reach this table once the deployment has a diagnostic setting that sends AllMetrics
#   to the stack's Log Analytics workspace. The Azure ML workspace's own metrics use the same
#   two names for training clusters, hence the filter on online endpoint resource IDs.
_REQUESTS = (
    "AppRequests\n"
    '| extend Service = tostring(Properties["Service Name"])\n'
    "| where isnotempty(Service)\n"
)
_DEPLOYMENT_METRIC = (
    "AzureMetrics\n"
    '| where ResourceProvider == "MICROSOFT.MACHINELEARNINGSERVICES"\n'
    '| where _ResourceId has "/onlineendpoints/" and MetricName == "{metric}"\n'
    "| summarize {column} = avg(Average) by _ResourceId\n"
)


@dataclass(frozen=True)
class AlertRule:
    """A log search alert: fires when ``measure`` in the query's result exceeds ``threshold``.

    ``split_by``: a result column with one alert per value (``Service``), or ``None`` when the
    result carries the Azure resource ID (``_ResourceId``), which Azure then makes the alert's
    target resource.
    """

    key: str
    title: str
    severity: int
    query: str
    measure: str
    threshold: int
    config_key: str
    split_by: str | None = None


def endpoint_alert_rules(thresholds: AlertThresholds) -> list[AlertRule]:
    """The four alert rules of the issue: 5xx rate, p99 latency, instance CPU and memory."""
    return [
        AlertRule(
            key="server-errors",
            title="Online endpoint answers 5xx",
            severity=1,
            query=(
                f"{_REQUESTS}"
                "| summarize Requests = count(), ServerErrors = countif(toint(ResultCode) >= 500)"
                " by Service\n"
                f"| where Requests >= {MIN_REQUESTS_FOR_ERROR_RATE}\n"
                "| extend ServerErrorPercent = 100.0 * ServerErrors / Requests\n"
            ),
            measure="ServerErrorPercent",
            threshold=thresholds.server_error_percent,
            config_key="alertServerErrorPercent",
            split_by="Service",
        ),
        AlertRule(
            key="latency-p99",
            title="Online endpoint p99 latency",
            severity=2,
            query=f"{_REQUESTS}| summarize LatencyP99Ms = percentile(DurationMs, 99) by Service\n",
            measure="LatencyP99Ms",
            threshold=thresholds.latency_p99_ms,
            config_key="alertLatencyP99Ms",
            split_by="Service",
        ),
        AlertRule(
            key="cpu",
            title="Online deployment CPU",
            severity=2,
            query=_DEPLOYMENT_METRIC.format(metric="CpuUtilizationPercentage", column="CpuPercent"),
            measure="CpuPercent",
            threshold=thresholds.cpu_percent,
            config_key="alertCpuPercent",
        ),
        AlertRule(
            key="memory",
            title="Online deployment memory",
            severity=2,
            query=_DEPLOYMENT_METRIC.format(
                metric="CpuMemoryUtilizationPercentage", column="MemoryPercent"
            ),
            measure="MemoryPercent",
            threshold=thresholds.memory_percent,
            config_key="alertMemoryPercent",
        ),
    ]


def budget_start_date(today: datetime.date) -> str:
    """The first day of ``today``'s month, as the budget API wants it.

    Azure requires the first of a month, no more than 12 months ahead, and refuses a past
    start date outside the current month when the budget is created. So the date is taken
    when the budget is created and then kept: the budget ignores later changes to it
    (``ignore_changes``), otherwise every `pulumi up` in a new month would try to move it."""
    return f"{today.year:04d}-{today.month:02d}-01T00:00:00Z"


@dataclass
class OperationsArgs:
    """Inputs of ``Operations``.

    Attributes:
        resource_group_name: resource group of the action group and alert rules.
        resource_group_id: ARM ID of the resource group, the budget's scope.
        location: region of the alert rules (that of the Log Analytics workspace).
        name_prefix: ``<project>-<environment>``, the start of every name.
        log_analytics_id: ARM ID of the Log Analytics workspace the alerts query.
        alert_emails: the action group's e-mail receivers.
        thresholds: when each alert fires.
        monthly_budget: the budget amount, in the subscription's billing currency.
        budget_emails: addresses notified by the budget besides the action group.
        budget_start: the budget's start date (``budget_start_date``).
        tags: tags for the action group and alert rules.
    """

    resource_group_name: pulumi.Input[str]
    resource_group_id: pulumi.Input[str]
    location: str
    name_prefix: str
    log_analytics_id: pulumi.Input[str]
    alert_emails: Sequence[str]
    thresholds: AlertThresholds
    monthly_budget: int
    budget_emails: Sequence[str]
    budget_start: str
    tags: Mapping[str, str]


class Operations(pulumi.ComponentResource):
    """The action group, the alert rules (see the module docstring) and the cost budget."""

    def __init__(
        self, name: str, args: OperationsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        prefix = args.name_prefix

        self.action_group = monitor.ActionGroup(
            f"{name}-action-group",
            action_group_name=f"ag-{prefix}-oncall",
            resource_group_name=args.resource_group_name,
            location="global",  # action groups are global resources
            group_short_name=prefix.replace("-", "")[:12],  # at most 12 characters (SMS)
            enabled=True,
            email_receivers=[
                monitor.MicrosoftCommonEmailReceiverArgs(
                    name=f"email-{index}", email_address=address, use_common_alert_schema=True
                )
                for index, address in enumerate(args.alert_emails, start=1)
            ],
            tags=tags,
            opts=child,
        )

        self.alert_rules: dict[str, monitor.ScheduledQueryRule] = {
            rule.key: self._alert(name, args, rule, tags)
            for rule in endpoint_alert_rules(args.thresholds)
        }

        self.budget = consumption.Budget(
            f"{name}-budget",
            budget_name=f"budget-{prefix}",
            scope=args.resource_group_id,
            amount=args.monthly_budget,
            category="Cost",
            time_grain="Monthly",
            time_period=consumption.BudgetTimePeriodArgs(start_date=args.budget_start),
            notifications={
                key: consumption.NotificationArgs(
                    enabled=True,
                    threshold=percent,
                    threshold_type=kind,
                    operator="GreaterThan" if kind == "Forecasted" else "GreaterThanOrEqualTo",
                    contact_emails=list(args.budget_emails),
                    # Azure needs an e-mail or a group at resource-group scope: the action
                    # group is always there, even before anyone sets alertEmails.
                    contact_groups=[self.action_group.id],
                )
                for key, kind, percent in BUDGET_NOTIFICATIONS
            },
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["timePeriod.startDate"]),
        )

        self.register_outputs(
            {
                "action_group_id": self.action_group.id,
                "alert_rule_ids": [rule.id for rule in self.alert_rules.values()],
                "budget_id": self.budget.id,
            }
        )

    def _alert(
        self, name: str, args: OperationsArgs, rule: AlertRule, tags: dict[str, str]
    ) -> monitor.ScheduledQueryRule:
        dimensions = (
            [monitor.DimensionArgs(name=rule.split_by, operator="Include", values=["*"])]
            if rule.split_by
            else None
        )
        return monitor.ScheduledQueryRule(
            f"{name}-alert-{rule.key}",
            rule_name=f"alert-{args.name_prefix}-{rule.key}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind="LogAlert",
            display_name=f"{rule.title} ({args.name_prefix})",
            description=(
                f"{rule.title} over {rule.threshold} (stack config {rule.config_key}); "
                f"severity {rule.severity}"
            ),
            severity=rule.severity,
            enabled=True,
            scopes=[args.log_analytics_id],
            evaluation_frequency=ALERT_WINDOW,
            window_size=ALERT_WINDOW,
            criteria=monitor.ScheduledQueryRuleCriteriaArgs(
                all_of=[
                    monitor.ConditionArgs(
                        query=rule.query,
                        time_aggregation="Maximum",
                        metric_measure_column=rule.measure,
                        resource_id_column=None if rule.split_by else "_ResourceId",
                        dimensions=dimensions,
                        operator="GreaterThan",
                        threshold=rule.threshold,
                        failing_periods=monitor.ConditionFailingPeriodsArgs(
                            number_of_evaluation_periods=1, min_failing_periods_to_alert=1
                        ),
                    )
                ]
            ),
            # AppRequests and AzureMetrics appear in the workspace with their first rows
            # (the first scored request, the first exported metric): until then Azure would
            # refuse the query as naming an unknown table.
            skip_query_validation=True,
            auto_mitigate=True,
            actions=monitor.ActionsArgs(action_groups=[self.action_group.id]),
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
