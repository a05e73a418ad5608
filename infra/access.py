"""AccessControl: the compute clusters' managed identity and every RBAC role assignment."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import authorization, managedidentity

from infra.catalog import (
    ROLE_ACR_PULL,
    ROLE_AZUREML_DATA_SCIENTIST,
    ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR,
)
from infra.config import Principal

COMPONENT_TYPE = "mlplatform:azure:AccessControl"
# Namespace of the deterministic role-assignment names (ARM wants a GUID per assignment).
_ASSIGNMENT_NAMESPACE = uuid.UUID("5d1f3a52-8c0e-4b8e-9d55-2f2f0a6b7c11")


def assignment_name(seed: str, key: str) -> str:
    """A GUID that is stable for one stack (same seed) and differs between stacks."""
    return str(uuid.uuid5(_ASSIGNMENT_NAMESPACE, f"{seed}/{key}"))


@dataclass
class AccessControlArgs:
    """Inputs of ``AccessControl``.

    Attributes:
        resource_group_name: resource group of the identity.
        location: Azure region.
        identity_name: name of the user-assigned identity the compute clusters run as.
        subscription_id: subscription whose built-in role definitions are used.
        workspace_id: ARM ID of the Azure ML workspace.
        storage_account_id: ARM ID of the workspace storage account.
        container_registry_id: ARM ID of the workspace container registry.
        data_scientists: users and groups that get AzureML Data Scientist on the workspace and
            Storage Blob Data Contributor on the storage account.
        seed: a value stable for the life of the stack (its random suffix), so role
            assignment names are deterministic yet unique per stack.
        tags: tags for the identity.
    """

    resource_group_name: pulumi.Input[str]
    location: str
    identity_name: pulumi.Input[str]
    subscription_id: pulumi.Input[str]
    workspace_id: pulumi.Input[str]
    storage_account_id: pulumi.Input[str]
    container_registry_id: pulumi.Input[str]
    data_scientists: Sequence[Principal]
    seed: pulumi.Input[str]
    tags: Mapping[str, str]


class AccessControl(pulumi.ComponentResource):
    """A user-assigned managed identity for the compute clusters, created before them so that
    its role assignments exist when the first job starts, and the role assignments for that
    identity and for the configured data scientists.

    RBAC propagation: assignments to a just-created identity are made with
    ``principal_type="ServicePrincipal"``, which tells ARM not to look the principal up in a
    possibly stale directory replica (the documented fix for ``PrincipalNotFound``); the
    compute clusters depend on ``assignments`` so they are created after them.
    """

    def __init__(
        self, name: str, args: AccessControlArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        self._name = name
        self._args = args

        self.compute_identity = managedidentity.UserAssignedIdentity(
            f"{name}-compute-identity",
            resource_name_=args.identity_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        identity = self.compute_identity.principal_id
        self.assignments: list[authorization.RoleAssignment] = [
            self._assign(
                "compute-blob-data",
                args.storage_account_id,
                ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR,
                identity,
                "ServicePrincipal",
                "Compute clusters read training data and write outputs",
            ),
            self._assign(
                "compute-acr-pull",
                args.container_registry_id,
                ROLE_ACR_PULL,
                identity,
                "ServicePrincipal",
                "Compute clusters pull environment images",
            ),
        ]
        for principal in args.data_scientists:
            key = f"{principal.principal_type.lower()}-{principal.object_id}"
            self.assignments += [
                self._assign(
                    f"{key}-data-scientist",
                    args.workspace_id,
                    ROLE_AZUREML_DATA_SCIENTIST,
                    principal.object_id,
                    principal.principal_type,
                    "Submit jobs, register models, deploy endpoints",
                ),
                self._assign(
                    f"{key}-blob-data",
                    args.storage_account_id,
                    ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR,
                    principal.object_id,
                    principal.principal_type,
                    "Upload datasets through the identity-based datastore",
                ),
            ]

        self.register_outputs(
            {
                "compute_identity_id": self.compute_identity.id,
                "compute_identity_client_id": self.compute_identity.client_id,
                "compute_identity_principal_id": self.compute_identity.principal_id,
                "role_assignment_count": len(self.assignments),
            }
        )

    def _assign(
        self,
        key: str,
        scope: pulumi.Input[str],
        role: str,
        principal_id: pulumi.Input[str],
        principal_type: str,
        description: str,
    ) -> authorization.RoleAssignment:
        args = self._args
        return authorization.RoleAssignment(
            f"{self._name}-{key}",
            role_assignment_name=pulumi.Output.from_input(args.seed).apply(
                lambda seed: assignment_name(seed, key)
            ),
            scope=scope,
            role_definition_id=pulumi.Output.concat(
                "/subscriptions/",
                args.subscription_id,
                "/providers/Microsoft.Authorization/roleDefinitions/",
                role,
            ),
            principal_id=principal_id,
            principal_type=principal_type,
            description=description,
            opts=pulumi.ResourceOptions(parent=self),
        )
