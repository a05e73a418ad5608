"""The Pulumi program: read and validate the config, then compose the components.

``main()`` is what ``pulumi up`` runs (through ``infra/__main__.py``); ``build()`` takes an
already validated ``InfraConfig`` and returns the stack outputs.
"""

from __future__ import annotations

import datetime

import pulumi
import pulumi_random as random
from pulumi_azure_native import authorization, resources

from infra.access import AccessControl, AccessControlArgs
from infra.compute import ComputeClusters, ComputeClustersArgs
from infra.config import (
    ConfigError,
    InfraConfig,
    ResourceNames,
    load_project,
    resource_names,
    stack_values,
    validate_config,
)
from infra.diagnostics import DiagnosticLogs, DiagnosticLogsArgs, core_log_sources
from infra.network import PrivateNetwork, PrivateNetworkArgs, private_link_targets
from infra.operations import Operations, OperationsArgs, budget_start_date
from infra.outputs import OUTPUT_KEYS
from infra.workspace import WorkspaceCore, WorkspaceCoreArgs


def read_config() -> InfraConfig:
    """The stack's config (``pulumi config``), with ``Pulumi.yaml`` defaults, validated; every
    key of the project's namespace is checked, so a mistyped key is refused, not ignored."""
    project = load_project()
    return validate_config(stack_values(project), project)


def build(cfg: InfraConfig) -> dict[str, pulumi.Input[object]]:
    """Declare every resource of the stack; return the stack outputs (``OUTPUT_KEYS``)."""
    client = authorization.get_client_config_output()
    # Random part of the names that Azure keeps after deletion (see ResourceNames). It lives
    # in the stack state: stable across updates, new after `pulumi destroy`.
    suffix = random.RandomString(
        "name-suffix", length=6, special=False, upper=False, numeric=True, lower=True
    )
    names: pulumi.Output[ResourceNames] = suffix.result.apply(
        lambda s: resource_names(cfg.project, cfg.environment, s)
    )
    group = resources.ResourceGroup(
        "resource-group",
        resource_group_name=names.apply(lambda n: n.resource_group),
        location=cfg.location,
        tags=cfg.tags,
    )

    core = WorkspaceCore(
        "core",
        WorkspaceCoreArgs(
            resource_group_name=group.name,
            location=cfg.location,
            names=names,
            tags=cfg.tags,
            tenant_id=client.tenant_id,
            private=cfg.private,
            log_retention_days=cfg.log_retention_days,
            # With the registry behind a private endpoint, images are built on a cluster
            # inside the managed network.
            image_build_compute=cfg.cpu.name if cfg.private and cfg.cpu else None,
        ),
    )

    access = AccessControl(
        "access",
        AccessControlArgs(
            resource_group_name=group.name,
            location=cfg.location,
            identity_name=names.apply(lambda n: n.compute_identity),
            subscription_id=client.subscription_id,
            workspace_id=core.workspace.id,
            storage_account_id=core.storage_account.id,
            container_registry_id=core.container_registry.id,
            data_scientists=cfg.data_scientists,
            seed=suffix.result,
            tags=cfg.tags,
        ),
    )

    compute = ComputeClusters(
        "compute",
        ComputeClustersArgs(
            resource_group_name=group.name,
            location=cfg.location,
            workspace_name=core.workspace.name,
            identity_id=access.compute_identity.id,
            clusters=cfg.clusters,
            tags=cfg.tags,
            depends_on=access.assignments,
        ),
    )

    if cfg.private:
        PrivateNetwork(
            "network",
            PrivateNetworkArgs(
                resource_group_name=group.name,
                location=cfg.location,
                vnet_name=names.apply(lambda n: n.virtual_network),
                address_prefix=cfg.private_address_prefix,
                targets=private_link_targets(
                    core.workspace.id,
                    core.storage_account.id,
                    core.key_vault.id,
                    core.container_registry.id,
                ),
                tags=cfg.tags,
            ),
        )

    DiagnosticLogs(
        "diagnostics",
        DiagnosticLogsArgs(
            log_analytics_id=core.log_analytics.id,
            sources=core_log_sources(
                core.workspace.id,
                core.storage_account.id,
                core.key_vault.id,
                core.container_registry.id,
                core.log_analytics.id,
            ),
        ),
    )

    Operations(
        "operations",
        OperationsArgs(
            resource_group_name=group.name,
            resource_group_id=group.id,
            location=cfg.location,
            name_prefix=f"{cfg.project}-{cfg.environment}",
            log_analytics_id=core.log_analytics.id,
            alert_emails=cfg.alert_emails,
            thresholds=cfg.alerts,
            monthly_budget=cfg.monthly_budget,
            budget_emails=cfg.budget_emails,
            # Used when the budget is created, ignored afterwards (see budget_start_date).
            budget_start=budget_start_date(datetime.datetime.now(datetime.UTC).date()),
            tags=cfg.tags,
        ),
    )

    values: dict[str, pulumi.Input[object]] = {
        "subscription_id": client.subscription_id,
        "tenant_id": client.tenant_id,
        "resource_group": group.name,
        "location": cfg.location,
        "workspace_name": core.workspace.name,
        "gpu_cluster": compute.clusters[cfg.gpu.name].name,
        "gpu_vm_size": cfg.gpu.vm_size,
        "gpu_max_nodes": cfg.gpu.max_nodes,
        "gpus_per_node": cfg.gpu.gpus_per_node,
        "cpu_cluster": compute.clusters[cfg.cpu.name].name if cfg.cpu else None,
        "storage_account": core.storage_account.name,
        "datasets_container": core.datasets_container.name,
        "datasets_datastore": core.datasets_datastore.name,
        "container_registry": core.container_registry.name,
        "key_vault": core.key_vault.name,
        "compute_identity_id": access.compute_identity.id,
        "compute_identity_client_id": access.compute_identity.client_id,
        "network_profile": cfg.profile,
        "log_analytics_workspace_id": core.log_analytics.id,
        "endpoint_min_instances": cfg.endpoint.min_instances,
        "endpoint_max_instances": cfg.endpoint.max_instances,
        "alert_emails": list(cfg.alert_emails),
    }
    return {OUTPUT_KEYS[name]: value for name, value in values.items()}


def main() -> dict[str, pulumi.Input[object]]:
    """Entry point of ``pulumi up``: validate first (nothing is created on a bad config)."""
    try:
        cfg = read_config()
    except ConfigError as exc:
        # RunError ends the program with the message alone, without a Python traceback.
        raise pulumi.RunError(str(exc)) from None
    outputs = build(cfg)
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
