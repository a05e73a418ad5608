"""ComputeClusters: the GPU training cluster and the optional CPU cluster (AmlCompute)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import machinelearningservices as ml

from infra.config import ClusterSpec

COMPONENT_TYPE = "mlplatform:azure:ComputeClusters"

# Properties that Azure ML cannot change on an existing cluster. A change replaces the cluster
# (deleted first: the new one has the same name) instead of failing in the API or being
# silently ignored. Paths are in Pulumi's wire names (camelCase) of the Compute inputs.
REPLACE_ON_CHANGES: tuple[str, ...] = (
    "properties.properties.vmSize",
    "properties.properties.vmPriority",
)


@dataclass
class ComputeClustersArgs:
    """Inputs of ``ComputeClusters``.

    Attributes:
        resource_group_name: resource group of the workspace.
        location: Azure region (the workspace's).
        workspace_name: the Azure ML workspace the clusters belong to.
        identity_id: ARM ID of the user-assigned identity the clusters run as.
        clusters: the clusters to create (validated config).
        tags: tags for every cluster.
        depends_on: resources that must exist first: the identity's role assignments.
    """

    resource_group_name: pulumi.Input[str]
    location: str
    workspace_name: pulumi.Input[str]
    identity_id: pulumi.Input[str]
    clusters: Sequence[ClusterSpec]
    tags: Mapping[str, str]
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)


class ComputeClusters(pulumi.ComponentResource):
    """AmlCompute clusters that cost nothing when idle: min 0 nodes (CKV_AZURE_150), idle
    scale-down, no SSH (remote login closed, no admin account), local auth off (CKV_AZURE_142,
    Azure Policy e96a9a5f), a user-assigned managed identity, and no public IP on the nodes
    (they live in the workspace's managed network)."""

    def __init__(
        self, name: str, args: ComputeClustersArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        self.clusters: dict[str, ml.Compute] = {}
        for spec in args.clusters:
            self.clusters[spec.name] = ml.Compute(
                f"{name}-{spec.name}",
                compute_name=spec.name,
                resource_group_name=args.resource_group_name,
                workspace_name=args.workspace_name,
                location=args.location,
                identity=ml.ManagedServiceIdentityArgs(
                    type="UserAssigned", user_assigned_identities=[args.identity_id]
                ),
                properties=ml.AmlComputeArgs(
                    compute_type="AmlCompute",
                    disable_local_auth=True,
                    description=f"{spec.vm_size} x {spec.min_nodes}-{spec.max_nodes} "
                    f"({spec.priority})",
                    properties=ml.AmlComputePropertiesArgs(
                        vm_size=spec.vm_size,
                        vm_priority=spec.priority,
                        os_type="Linux",
                        remote_login_port_public_access="Disabled",
                        enable_node_public_ip=False,
                        scale_settings=ml.ScaleSettingsArgs(
                            min_node_count=spec.min_nodes,
                            max_node_count=spec.max_nodes,
                            node_idle_time_before_scale_down=spec.idle_time_before_scale_down,
                        ),
                    ),
                ),
                tags=dict(args.tags),
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=list(args.depends_on),
                    replace_on_changes=list(REPLACE_ON_CHANGES),
                    delete_before_replace=True,
                ),
            )
        self.register_outputs({name: cluster.name for name, cluster in self.clusters.items()})
