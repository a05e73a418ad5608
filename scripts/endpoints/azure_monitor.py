"""Azure Monitor for the online endpoint: diagnostic settings and autoscale (azure-mgmt-monitor).

Both are applied by the rollout (scripts/endpoints/rollout.py), not by the Pulumi stack: the
endpoint and its blue/green deployments are created and deleted by ``python -m scripts deploy``,
after the stack exists, so a resource declared in the stack could not point at a deployment that
does not exist yet, and would point at a deleted one after the next rollout. The stack provides
what they need as outputs: the Log Analytics workspace (``logAnalyticsWorkspaceId``) and the
instance range (``endpointMinInstances``/``endpointMaxInstances``).

- :func:`send_to_log_analytics`: the new deployment's platform metrics (AllMetrics: CPU, memory,
  disk per instance) and the endpoint's logs (console, traffic and event logs) and metrics into
  the stack's Log Analytics workspace, where the stack's CPU and memory alerts query them
  (AzureMetrics; infra/operations.py).
- :func:`autoscale`: one autoscale setting per endpoint, moved to the colour that serves: out by
  one instance when CPU or requests per instance run high, in by one when both are low.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.mgmt.monitor import MonitorManagementClient

# The same name as the stack's own diagnostic settings (infra/diagnostics.py SETTING_NAME).
SETTING_NAME = "send-to-log-analytics"
DEPLOYMENT_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments"
ENDPOINT_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"


class MonitorError(Exception):
    """A setting was refused; the message says which and how to fix it."""


@dataclass(frozen=True)
class ScaleRules:
    """When the deployment scales (Azure Monitor "Supported metrics" of online endpoints).

    Scale-out: average CPU (CpuUtilizationPercentage of the deployment, over its instances)
    above ``cpu_out_percent``, or requests per minute per instance (RequestsPerMinute of the
    endpoint for this deployment, divided by its instances) above ``requests_out_per_instance``,
    over ``window``. Scale-in needs both below their ``*_in_*`` values for ``in_window``
    (Azure scales in only when every scale-in rule holds). One instance per action, then a
    cooldown, so a burst cannot overshoot.
    """

    cpu_out_percent: int = 70
    cpu_in_percent: int = 25
    # score.py answers ~1,100 single-image requests/s per worker on the development machine
    # (README, Serving performance): a Standard_DS3_v2 instance (4 workers) ~270,000 a minute
    # before the network and the gateway. Scale out at under a quarter of that, in far below.
    requests_out_per_instance: int = 60_000
    requests_in_per_instance: int = 15_000
    window: datetime.timedelta = datetime.timedelta(minutes=5)
    in_window: datetime.timedelta = datetime.timedelta(minutes=15)
    out_cooldown: datetime.timedelta = datetime.timedelta(minutes=5)
    in_cooldown: datetime.timedelta = datetime.timedelta(minutes=15)


@dataclass(frozen=True)
class Scale:
    """The instance range of the serving deployment (from the stack's outputs)."""

    min_instances: int
    max_instances: int
    rules: ScaleRules = ScaleRules()

    def __post_init__(self) -> None:
        if not 1 <= self.min_instances <= self.max_instances:
            raise MonitorError(
                f"Autoscale needs 1 <= minimum <= maximum instances, got {self.min_instances} "
                f"to {self.max_instances}: fix endpointMinInstances/endpointMaxInstances in the "
                "stack config and run `pulumi up`."
            )


@dataclass(frozen=True)
class Operations:
    """What the rollout applies to each deployment besides the deployment itself."""

    monitor: MonitorManagementClient
    resource_group: str
    log_analytics_workspace_id: str
    scale: Scale | None


def autoscale_name(endpoint: str) -> str:
    """One setting per endpoint: the rollout moves it from colour to colour."""
    return f"{endpoint}-autoscale"


def _refused(what: str, exc: Exception) -> MonitorError:
    message = " ".join(str(getattr(exc, "message", None) or exc).split())[:400]
    return MonitorError(
        f"Azure Monitor refused the {what} ({message}). Creating it needs the Monitoring "
        "Contributor role on the resource group (or Contributor)."
    )


def send_to_log_analytics(operations: Operations, *, endpoint_id: str, deployment_id: str) -> None:
    """Diagnostic settings: the endpoint's logs and metrics, the deployment's metrics."""
    from azure.mgmt.monitor.models import DiagnosticSettingsResource, LogSettings, MetricSettings

    targets = (
        ("endpoint", endpoint_id, [LogSettings(category_group="allLogs", enabled=True)]),
        ("deployment", deployment_id, []),  # a deployment has metrics only
    )
    for kind, resource_id, logs in targets:
        setting = DiagnosticSettingsResource(
            workspace_id=operations.log_analytics_workspace_id,
            log_analytics_destination_type="Dedicated",
            logs=logs,
            metrics=[MetricSettings(category="AllMetrics", enabled=True)],
        )
        try:
            operations.monitor.diagnostic_settings.create_or_update(
                resource_id, SETTING_NAME, setting
            )
        except Exception as exc:
            raise _refused(f"diagnostic setting of the {kind} {resource_id}", exc) from exc


def _rule(
    metric: str,
    resource_id: str,
    namespace: str,
    *,
    above: bool,
    threshold: int,
    window: datetime.timedelta,
    cooldown: datetime.timedelta,
    deployment: str | None = None,
) -> Any:
    from azure.mgmt.monitor.models import (
        MetricTrigger,
        ScaleAction,
        ScaleRule,
        ScaleRuleMetricDimension,
    )

    dimensions = None
    if deployment is not None:  # an endpoint metric, for this deployment's share only
        dimensions = [
            ScaleRuleMetricDimension(
                dimension_name="deployment", operator="Equals", values=[deployment]
            )
        ]
    return ScaleRule(
        metric_trigger=MetricTrigger(
            metric_name=metric,
            metric_namespace=namespace,
            metric_resource_uri=resource_id,
            time_grain=datetime.timedelta(minutes=1),
            statistic="Average",
            time_window=window,
            time_aggregation="Average",
            operator="GreaterThan" if above else "LessThan",
            threshold=threshold,
            dimensions=dimensions,
            divide_per_instance=True if deployment is not None else None,
        ),
        scale_action=ScaleAction(
            direction="Increase" if above else "Decrease",
            type="ChangeCount",
            value="1",
            cooldown=cooldown,
        ),
    )


def autoscale_setting(
    scale: Scale, *, endpoint_id: str, deployment: str, location: str, tags: dict[str, str]
) -> Any:
    """The autoscale setting of ``deployment`` (a colour of the endpoint ``endpoint_id``)."""
    from azure.mgmt.monitor.models import AutoscaleProfile, AutoscaleSettingResource, ScaleCapacity

    deployment_id = f"{endpoint_id}/deployments/{deployment}"
    r = scale.rules
    rules = [
        _rule(
            "CpuUtilizationPercentage",
            deployment_id,
            DEPLOYMENT_NAMESPACE,
            above=True,
            threshold=r.cpu_out_percent,
            window=r.window,
            cooldown=r.out_cooldown,
        ),
        _rule(
            "RequestsPerMinute",
            endpoint_id,
            ENDPOINT_NAMESPACE,
            above=True,
            threshold=r.requests_out_per_instance,
            window=r.window,
            cooldown=r.out_cooldown,
            deployment=deployment,
        ),
        _rule(
            "CpuUtilizationPercentage",
            deployment_id,
            DEPLOYMENT_NAMESPACE,
            above=False,
            threshold=r.cpu_in_percent,
            window=r.in_window,
            cooldown=r.in_cooldown,
        ),
        _rule(
            "RequestsPerMinute",
            endpoint_id,
            ENDPOINT_NAMESPACE,
            above=False,
            threshold=r.requests_in_per_instance,
            window=r.in_window,
            cooldown=r.in_cooldown,
            deployment=deployment,
        ),
    ]
    capacity = ScaleCapacity(
        minimum=str(scale.min_instances),
        maximum=str(scale.max_instances),
        default=str(scale.min_instances),  # used while the metrics are unavailable
    )
    return AutoscaleSettingResource(
        location=location,
        tags=tags,
        enabled=True,
        target_resource_uri=deployment_id,
        profiles=[AutoscaleProfile(name="cpu-and-requests", capacity=capacity, rules=rules)],
    )


def autoscale(
    operations: Operations,
    *,
    endpoint: str,
    endpoint_id: str,
    deployment: str,
    location: str,
    tags: dict[str, str] | None = None,
) -> None:
    """Point the endpoint's autoscale setting at ``deployment`` (created, or moved there)."""
    if operations.scale is None:
        return
    setting = autoscale_setting(
        operations.scale,
        endpoint_id=endpoint_id,
        deployment=deployment,
        location=location,
        tags=dict(tags or {}),
    )
    try:
        operations.monitor.autoscale_settings.create_or_update(
            operations.resource_group, autoscale_name(endpoint), setting
        )
    except Exception as exc:
        raise _refused(f"autoscale setting {autoscale_name(endpoint)}", exc) from exc
