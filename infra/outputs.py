"""The stack outputs: the contract between ``pulumi up`` and the commands that use the platform.

The program exports exactly ``OUTPUT_KEYS``; ``parse_stack_outputs`` turns the JSON of
``pulumi stack output --json`` back into a typed ``StackOutputs``. Both sides import this
module, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StackOutputs:
    """What the job and deployment commands need to find the platform."""

    subscription_id: str
    tenant_id: str
    resource_group: str
    location: str
    workspace_name: str
    gpu_cluster: str
    gpu_vm_size: str
    gpu_max_nodes: int
    gpus_per_node: int
    cpu_cluster: str | None
    storage_account: str
    datasets_container: str
    datasets_datastore: str
    container_registry: str
    key_vault: str
    compute_identity_id: str
    compute_identity_client_id: str
    network_profile: str
    # Where the rollout points each online deployment's diagnostic setting (its CPU and
    # memory metrics feed the stack's alerts).
    log_analytics_workspace_id: str
    # The online deployment's autoscale range (the rollout applies it) and who hears about the
    # endpoint (the model monitor's alert e-mails).
    endpoint_min_instances: int
    endpoint_max_instances: int
    alert_emails: tuple[str, ...]


# Field name -> output key (camelCase, Pulumi's convention for stack outputs).
OUTPUT_KEYS: dict[str, str] = {
    "subscription_id": "subscriptionId",
    "tenant_id": "tenantId",
    "resource_group": "resourceGroupName",
    "location": "location",
    "workspace_name": "workspaceName",
    "gpu_cluster": "gpuClusterName",
    "gpu_vm_size": "gpuVmSize",
    "gpu_max_nodes": "gpuMaxNodes",
    "gpus_per_node": "gpusPerNode",
    "cpu_cluster": "cpuClusterName",
    "storage_account": "storageAccountName",
    "datasets_container": "datasetsContainerName",
    "datasets_datastore": "datasetsDatastoreName",
    "container_registry": "containerRegistryName",
    "key_vault": "keyVaultName",
    "compute_identity_id": "computeIdentityId",
    "compute_identity_client_id": "computeIdentityClientId",
    "network_profile": "networkProfile",
    "log_analytics_workspace_id": "logAnalyticsWorkspaceId",
    "endpoint_min_instances": "endpointMinInstances",
    "endpoint_max_instances": "endpointMaxInstances",
    "alert_emails": "alertEmails",
}
_OPTIONAL = {"cpu_cluster", "alert_emails"}
_INTEGERS = {"gpu_max_nodes", "gpus_per_node", "endpoint_min_instances", "endpoint_max_instances"}
_LISTS = {"alert_emails"}


def parse_stack_outputs(data: Mapping[str, Any]) -> StackOutputs:
    """Build ``StackOutputs`` from output key -> value; ``ValueError`` names missing keys."""
    missing = [
        key
        for name, key in OUTPUT_KEYS.items()
        if name not in _OPTIONAL and data.get(key) in (None, "")
    ]
    if missing:
        raise ValueError(f"the stack has no output {', '.join(missing)}")
    values: dict[str, Any] = {}
    for name, key in OUTPUT_KEYS.items():
        value = data.get(key)
        if name in _LISTS:
            if not isinstance(value or [], list):
                raise ValueError(f"stack output {key} is not a list: {value!r}")
            values[name] = tuple(str(item) for item in value or [])
        elif name in _OPTIONAL:
            values[name] = value or None
        elif name in _INTEGERS:
            try:
                values[name] = int(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ValueError(f"stack output {key} is not an integer: {value!r}") from None
        else:
            values[name] = str(value)
    return StackOutputs(**values)
