"""WorkspaceCore: the Azure ML workspace and the four resources it is linked to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import (
    applicationinsights,
    containerregistry,
    keyvault,
    machinelearningservices,
    operationalinsights,
    storage,
)

from infra.config import DATASETS_CONTAINER, DATASETS_DATASTORE, ResourceNames

COMPONENT_TYPE = "mlplatform:azure:WorkspaceCore"


@dataclass
class WorkspaceCoreArgs:
    """Inputs of ``WorkspaceCore``.

    Attributes:
        resource_group_name: resource group that holds everything.
        location: Azure region (validated config).
        names: Azure names of the resources (derived from the stack's random suffix).
        tags: tags put on every taggable resource.
        tenant_id: Entra ID tenant of the key vault.
        private: True for the ``private`` profile: public network access off on the
            workspace, storage, key vault and registry (private endpoints come from
            ``PrivateNetwork``); the registry is then Premium, the only SKU with private link.
        log_retention_days: retention of the Log Analytics workspace.
        image_build_compute: compute cluster that builds environment images, needed when the
            registry has no public endpoint; ``None`` lets Azure ML pick (serverless).
    """

    resource_group_name: pulumi.Input[str]
    location: str
    names: pulumi.Output[ResourceNames]
    tags: Mapping[str, str]
    tenant_id: pulumi.Input[str]
    private: bool
    log_retention_days: int
    image_build_compute: str | None = None


class WorkspaceCore(pulumi.ComponentResource):
    """Storage (with a ``datasets`` container), key vault, Log Analytics + Application
    Insights, container registry and the Azure ML workspace linked to all four, plus an
    identity-based datastore for the datasets container.

    Security defaults (each mirrored by a test named after its Checkov / Azure Policy rule):
    storage without shared keys or public blobs, HTTPS and TLS 1.2 only; key vault with RBAC,
    soft delete and purge protection; registry without admin user or anonymous pull; workspace
    with a system-assigned identity, managed network isolation and identity-based system
    datastores.
    """

    def __init__(
        self, name: str, args: WorkspaceCoreArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        names = args.names
        tags = dict(args.tags)
        public_access = "Disabled" if args.private else "Enabled"
        default_action = "Deny" if args.private else "Allow"

        self.storage_account = storage.StorageAccount(
            f"{name}-storage",
            account_name=names.apply(lambda n: n.storage_account),
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind="StorageV2",
            sku=storage.SkuArgs(name="Standard_LRS"),
            access_tier="Hot",
            minimum_tls_version="TLS1_2",  # CKV_AZURE_44
            enable_https_traffic_only=True,  # CKV_AZURE_3
            allow_blob_public_access=False,  # CKV_AZURE_190
            allow_shared_key_access=False,  # CKV2_AZURE_40: Entra ID only, no account keys
            default_to_o_auth_authentication=True,
            allow_cross_tenant_replication=False,
            public_network_access=public_access,
            network_rule_set=storage.NetworkRuleSetArgs(
                default_action=default_action, bypass="AzureServices"
            ),
            tags=tags,
            opts=child,
        )
        self.datasets_container = storage.BlobContainer(
            f"{name}-datasets",
            container_name=DATASETS_CONTAINER,
            account_name=self.storage_account.name,
            resource_group_name=args.resource_group_name,
            public_access="None",
            opts=child,
        )

        self.key_vault = keyvault.Vault(
            f"{name}-keyvault",
            vault_name=names.apply(lambda n: n.key_vault),
            resource_group_name=args.resource_group_name,
            location=args.location,
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=args.tenant_id,
                sku=keyvault.SkuArgs(family="A", name="standard"),
                enable_rbac_authorization=True,
                enable_soft_delete=True,  # CKV_AZURE_111
                soft_delete_retention_in_days=7,
                enable_purge_protection=True,  # CKV_AZURE_110 (see README: soft-delete trap)
                public_network_access=public_access,
                network_acls=keyvault.NetworkRuleSetArgs(
                    default_action=default_action, bypass="AzureServices"
                ),
            ),
            tags=tags,
            opts=child,
        )

        self.log_analytics = operationalinsights.Workspace(
            f"{name}-logs",
            workspace_name=names.apply(lambda n: n.log_analytics),
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=operationalinsights.WorkspaceSkuArgs(name="PerGB2018"),
            retention_in_days=args.log_retention_days,
            tags=tags,
            opts=child,
        )
        self.app_insights = applicationinsights.Component(
            f"{name}-appinsights",
            resource_name_=names.apply(lambda n: n.app_insights),
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind="web",
            application_type="web",
            ingestion_mode="LogAnalytics",
            workspace_resource_id=self.log_analytics.id,
            tags=tags,
            opts=child,
        )

        self.container_registry = containerregistry.Registry(
            f"{name}-registry",
            registry_name=names.apply(lambda n: n.container_registry),
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=containerregistry.SkuArgs(name="Premium" if args.private else "Basic"),
            admin_user_enabled=False,  # CKV_AZURE_137
            anonymous_pull_enabled=False,  # CKV_AZURE_138
            public_network_access=public_access,
            network_rule_bypass_options="AzureServices",
            tags=tags,
            opts=child,
        )

        self.workspace = machinelearningservices.Workspace(
            f"{name}-workspace",
            workspace_name=names.apply(lambda n: n.workspace),
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind="Default",
            sku=machinelearningservices.SkuArgs(name="Basic", tier="Basic"),
            identity=machinelearningservices.ManagedServiceIdentityArgs(type="SystemAssigned"),
            storage_account=self.storage_account.id,
            key_vault=self.key_vault.id,
            application_insights=self.app_insights.id,
            container_registry=self.container_registry.id,
            public_network_access=public_access,
            # Azure Policy 6ddb1705: managed network isolation. Outbound to the internet stays
            # allowed (pip, conda, MNIST mirrors); AllowOnlyApprovedOutbound would need an
            # Azure Firewall for every FQDN rule.
            managed_network=machinelearningservices.ManagedNetworkSettingsArgs(
                isolation_mode="AllowInternetOutbound",
            ),
            # The storage account has shared keys off: system datastores use identities.
            system_datastores_auth_mode="Identity",
            image_build_compute=args.image_build_compute,
            v1_legacy_mode=False,
            tags=tags,
            opts=child,
        )

        # Identity-based datastore (credentials "None"): whoever reads it uses their own
        # Entra ID identity (user, or the compute cluster's managed identity), never a key.
        # Validation is skipped because it would run before the RBAC role assignments have
        # propagated (up to ~10 minutes) and fail a fresh `pulumi up`.
        self.datasets_datastore = machinelearningservices.Datastore(
            f"{name}-datasets-datastore",
            name=DATASETS_DATASTORE,
            resource_group_name=args.resource_group_name,
            workspace_name=self.workspace.name,
            skip_validation=True,
            properties=machinelearningservices.AzureBlobDatastoreArgs(
                datastore_type="AzureBlob",
                account_name=self.storage_account.name,
                container_name=self.datasets_container.name,
                credentials=machinelearningservices.NoneDatastoreCredentialsArgs(
                    credentials_type="None"
                ),
                service_data_access_auth_identity="WorkspaceSystemAssignedIdentity",
                description="Training data (MNIST); identity-based access, no account keys",
                tags=tags,
            ),
            opts=child,
        )

        self.register_outputs(
            {
                "workspace_name": self.workspace.name,
                "workspace_id": self.workspace.id,
                "storage_account_name": self.storage_account.name,
                "key_vault_name": self.key_vault.name,
                "container_registry_name": self.container_registry.name,
                "app_insights_id": self.app_insights.id,
            }
        )
