"""PrivateNetwork: a virtual network with private endpoints and private DNS zones
(``private`` profile only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import network, privatedns

COMPONENT_TYPE = "mlplatform:azure:PrivateNetwork"


@dataclass(frozen=True)
class PrivateLinkTarget:
    """One private endpoint: which resource, which sub-resource, which DNS zones.

    Attributes:
        key: short name used in resource names (``workspace``, ``blob``, ...).
        resource_id: ARM ID of the resource the endpoint connects to.
        group_id: the private-link sub-resource (``amlworkspace``, ``blob``, ``vault``, ...).
        dns_zones: private DNS zones that resolve the resource's names to the endpoint.
    """

    key: str
    resource_id: pulumi.Input[str]
    group_id: str
    dns_zones: tuple[str, ...]


def private_link_targets(
    workspace_id: pulumi.Input[str],
    storage_account_id: pulumi.Input[str],
    key_vault_id: pulumi.Input[str],
    container_registry_id: pulumi.Input[str],
) -> list[PrivateLinkTarget]:
    """The endpoints an Azure ML workspace needs (Azure public cloud DNS zone names)."""
    return [
        PrivateLinkTarget(
            "workspace",
            workspace_id,
            "amlworkspace",
            ("privatelink.api.azureml.ms", "privatelink.notebooks.azure.net"),
        ),
        PrivateLinkTarget(
            "blob", storage_account_id, "blob", ("privatelink.blob.core.windows.net",)
        ),
        PrivateLinkTarget(
            "file", storage_account_id, "file", ("privatelink.file.core.windows.net",)
        ),
        PrivateLinkTarget("vault", key_vault_id, "vault", ("privatelink.vaultcore.azure.net",)),
        PrivateLinkTarget(
            "registry", container_registry_id, "registry", ("privatelink.azurecr.io",)
        ),
    ]


@dataclass
class PrivateNetworkArgs:
    """Inputs of ``PrivateNetwork``.

    Attributes:
        resource_group_name: resource group for the network resources.
        location: Azure region of the virtual network and endpoints.
        vnet_name: name of the virtual network to create.
        address_prefix: CIDR of the virtual network (one subnet spans it).
        targets: the private endpoints to create.
        tags: tags for every taggable resource.
    """

    resource_group_name: pulumi.Input[str]
    location: str
    vnet_name: pulumi.Input[str]
    address_prefix: str
    targets: Sequence[PrivateLinkTarget]
    tags: Mapping[str, str]


class PrivateNetwork(pulumi.ComponentResource):
    """Virtual network + subnet for private endpoints, one private DNS zone per service
    (linked to the network), and a private endpoint with a DNS zone group per target.
    Clients reach the workspace from this network (peer it, or connect a VPN/Bastion)."""

    def __init__(
        self, name: str, args: PrivateNetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        self.virtual_network = network.VirtualNetwork(
            f"{name}-vnet",
            virtual_network_name=args.vnet_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            address_space=network.AddressSpaceArgs(address_prefixes=[args.address_prefix]),
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["subnets"]),
        )
        self.subnet = network.Subnet(
            f"{name}-endpoints-subnet",
            subnet_name="private-endpoints",
            virtual_network_name=self.virtual_network.name,
            resource_group_name=args.resource_group_name,
            address_prefix=args.address_prefix,
            private_endpoint_network_policies="Disabled",
            default_outbound_access=False,
            opts=child,
        )

        self.dns_zones: dict[str, privatedns.PrivateZone] = {}
        for zone in dict.fromkeys(z for target in args.targets for z in target.dns_zones):
            self.dns_zones[zone] = privatedns.PrivateZone(
                f"{name}-zone-{zone}",
                private_zone_name=zone,
                resource_group_name=args.resource_group_name,
                location="global",
                tags=tags,
                opts=child,
            )
            privatedns.VirtualNetworkLink(
                f"{name}-zone-link-{zone}",
                virtual_network_link_name=f"link-{zone}"[:80],
                private_zone_name=self.dns_zones[zone].name,
                resource_group_name=args.resource_group_name,
                location="global",
                registration_enabled=False,
                virtual_network=privatedns.SubResourceArgs(id=self.virtual_network.id),
                tags=tags,
                opts=child,
            )

        self.endpoints: dict[str, network.PrivateEndpoint] = {}
        for target in args.targets:
            endpoint = network.PrivateEndpoint(
                f"{name}-pe-{target.key}",
                private_endpoint_name=pulumi.Output.concat("pe-", args.vnet_name, "-", target.key),
                resource_group_name=args.resource_group_name,
                location=args.location,
                subnet=network.SubnetArgs(id=self.subnet.id),
                private_link_service_connections=[
                    network.PrivateLinkServiceConnectionArgs(
                        name=target.key,
                        private_link_service_id=target.resource_id,
                        group_ids=[target.group_id],
                    )
                ],
                tags=tags,
                opts=child,
            )
            network.PrivateDnsZoneGroup(
                f"{name}-pe-{target.key}-dns",
                private_dns_zone_group_name="default",
                private_endpoint_name=endpoint.name,
                resource_group_name=args.resource_group_name,
                private_dns_zone_configs=[
                    network.PrivateDnsZoneConfigArgs(
                        name=zone.replace(".", "-"), private_dns_zone_id=self.dns_zones[zone].id
                    )
                    for zone in target.dns_zones
                ],
                opts=child,
            )
            self.endpoints[target.key] = endpoint

        self.register_outputs(
            {
                "virtual_network_id": self.virtual_network.id,
                "subnet_id": self.subnet.id,
                "private_endpoints": sorted(self.endpoints),
            }
        )
