"""Run ``infra.bootstrap.program.main`` under the main stack's Azure mocks.

``infra_harness.AzureMocks`` answers like ARM for the types the main stack uses; the bootstrap
adds a few (state blob service, Key Vault key, federated credentials, a custom role), answered
here the same way: Azure's naming rule checked, ARM's resource ID returned.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import pulumi

from infra.bootstrap import program
from infra.bootstrap.config import load_bootstrap_project
from tests.infra.infra_harness import (
    SUBSCRIPTION,
    AzureMocks,
    Deployment,
    entry_point_of,
    run_program,
)

PROJECT = load_bootstrap_project().name
REPOSITORY = "contoso/mnist-ml"

# type -> (ARM ID below the resource group, or "{scope}" rooted; input holding the name; rule)
_EXTRA: dict[str, tuple[str, str, str]] = {
    "azure-native:storage:BlobServiceProperties": (
        "Microsoft.Storage/storageAccounts/{accountName}/blobServices",
        "blobServicesName",
        r"default",
    ),
    "azure-native:keyvault:Key": (
        "Microsoft.KeyVault/vaults/{vaultName}/keys",
        "keyName",
        r"[a-zA-Z0-9-]{1,127}",
    ),
    "azure-native:managedidentity:FederatedIdentityCredential": (
        "Microsoft.ManagedIdentity/userAssignedIdentities/{resourceName}/federatedIdentityCredentials",
        "federatedIdentityCredentialResourceName",
        r"[a-zA-Z0-9][a-zA-Z0-9_-]{2,119}",
    ),
    "azure-native:authorization:RoleDefinition": (
        "{scope}/providers/Microsoft.Authorization/roleDefinitions",
        "roleDefinitionId",
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    ),
}


class BootstrapMocks(AzureMocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        if args.typ not in _EXTRA:
            return super().new_resource(args)
        path, name_key, rule = _EXTRA[args.typ]
        inputs = dict(args.inputs)
        name = inputs.get(name_key)
        if not isinstance(name, str) or not re.fullmatch(rule, name):
            raise ValueError(f"{args.typ} {args.name}: invalid Azure name {name!r} ({rule})")
        if path.startswith("{scope}"):
            resource_id = f"{path.format(**inputs)}/{name}"
        else:
            group = inputs["resourceGroupName"]
            resource_id = (
                f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/"
                f"{path.format(**inputs)}/{name}"
            )
        state = {**inputs, "name": name}
        if args.typ == "azure-native:keyvault:Key":
            state["keyUri"] = f"https://{inputs['vaultName']}.vault.azure.net/keys/{name}"
        return resource_id, state


def deploy(config: Mapping[str, Any], *, stack: str = "ci") -> Deployment:
    """Run the bootstrap program once with this stack config (key -> value, no namespace)."""
    deployment = Deployment([])
    _run(config, stack, deployment, program.main)
    return deployment


def deploy_error(config: Mapping[str, Any], *, stack: str = "ci") -> tuple[Exception, Deployment]:
    """Run the program with a config it must refuse: the error, and what got registered."""
    deployment = Deployment([])
    try:
        _run(config, stack, deployment, program.main)
    except Exception as exc:
        return exc, deployment
    raise AssertionError(f"the program accepted {dict(config)}")


def deploy_entry_point(config: Mapping[str, Any], *, stack: str = "ci") -> Deployment:
    """Run infra/bootstrap the way the Pulumi CLI does: its ``__main__.py``, as a script."""
    deployment = Deployment([])
    _run(config, stack, deployment, entry_point_of(program))
    return deployment


def _run(
    config: Mapping[str, Any],
    stack: str,
    deployment: Deployment,
    entry: Callable[[], Mapping[str, Any]],
) -> None:
    run_program(config, stack, deployment, entry, mocks=BootstrapMocks(stack), project=PROJECT)
