"""DiagnosticLogs: every resource that emits resource logs sends them, and its platform metrics,
to the stack's Log Analytics workspace, as the Azure Verified Modules' ``diagnosticSettings``
parameter does (category group ``allLogs``, metric category ``AllMetrics``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import monitor

COMPONENT_TYPE = "mlplatform:azure:DiagnosticLogs"
# The name of the setting on every resource (a resource may hold up to five settings).
SETTING_NAME = "send-to-log-analytics"


@dataclass(frozen=True)
class LogSource:
    """A resource and what it exports.

    Attributes:
        key: short name, used in the Pulumi resource name (``<component>-<key>``).
        resource_id: ARM ID of the resource (or of a sub-resource such as a blob service).
        log_groups: log category groups to export (``allLogs`` covers ``audit``); empty for a
            resource that has metrics only (a storage account itself: its logs are per
            service).
        metric_category: metric category to export; ``AllMetrics`` for most resources,
            ``Transaction`` for storage (whose metric categories are ``Transaction`` and
            ``Capacity``; capacity is sampled hourly and is not needed for alerting).
    """

    key: str
    resource_id: pulumi.Input[str]
    log_groups: tuple[str, ...] = ("allLogs",)
    metric_category: str = "AllMetrics"


def core_log_sources(
    workspace_id: pulumi.Input[str],
    storage_account_id: pulumi.Input[str],
    key_vault_id: pulumi.Input[str],
    container_registry_id: pulumi.Input[str],
    log_analytics_id: pulumi.Input[str],
) -> list[LogSource]:
    """The stack's resources that emit logs, with the log categories each supports (Azure
    Monitor reference, "Supported logs" per resource type):

    - Azure ML workspace: ``allLogs`` (AmlComputeClusterEvent, AmlComputeJobEvent,
      AmlRunStatusChangedEvent, ...; group ``audit`` is part of it).
    - Storage: logs live on each service (``.../blobServices/default``: StorageRead,
      StorageWrite, StorageDelete); the account itself has metrics only.
    - Key vault: ``allLogs`` (AuditEvent, AzurePolicyEvaluationDetails).
    - Container registry: ``allLogs`` (ContainerRegistryLoginEvents,
      ContainerRegistryRepositoryEvents).
    - Log Analytics workspace: ``allLogs`` (Audit: who queried what; SummaryLogs), into itself,
      as the Verified Module's ``useThisWorkspace`` option does.
    """
    blob_service_id = pulumi.Output.concat(storage_account_id, "/blobServices/default")
    return [
        LogSource("workspace", workspace_id),
        LogSource("storage", storage_account_id, log_groups=(), metric_category="Transaction"),
        LogSource("blob", blob_service_id, metric_category="Transaction"),
        LogSource("keyvault", key_vault_id),
        LogSource("registry", container_registry_id),
        LogSource("logs", log_analytics_id),
    ]


@dataclass
class DiagnosticLogsArgs:
    """Inputs of ``DiagnosticLogs``.

    Attributes:
        log_analytics_id: ARM ID of the Log Analytics workspace that receives everything.
        sources: the resources whose logs and metrics are exported.
    """

    log_analytics_id: pulumi.Input[str]
    sources: Sequence[LogSource]


class DiagnosticLogs(pulumi.ComponentResource):
    """One diagnostic setting per log source. Logs go to resource-specific tables
    (``Dedicated``: StorageBlobLogs, AZKVAuditLogs, AmlComputeJobEvent, ...) rather than the
    shared AzureDiagnostics table; metrics go to AzureMetrics."""

    def __init__(
        self, name: str, args: DiagnosticLogsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        self.settings: dict[str, monitor.DiagnosticSetting] = {
            source.key: monitor.DiagnosticSetting(
                f"{name}-{source.key}",
                name=SETTING_NAME,
                resource_uri=source.resource_id,
                workspace_id=args.log_analytics_id,
                log_analytics_destination_type="Dedicated",
                logs=[
                    monitor.DiagnosticsLogSettingsArgs(category_group=group, enabled=True)
                    for group in source.log_groups
                ],
                metrics=[
                    monitor.DiagnosticsMetricSettingsArgs(
                        category=source.metric_category, enabled=True
                    )
                ],
                opts=pulumi.ResourceOptions(parent=self),
            )
            for source in args.sources
        }
        self.register_outputs({"setting_count": len(self.settings)})
