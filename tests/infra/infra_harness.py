"""Run the real Pulumi program against mocks that answer like Azure, and record what it declares.

``deploy(config)`` re-runs ``infra.program.main`` from scratch with the given stack config
(through ``pulumi.runtime.set_all_config``, the same path the Pulumi CLI uses) and returns every
resource registration as the engine would receive it: type, name, parent, dependencies,
replace-on-changes, delete-before-replace, inputs, and the mock's outputs.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import runpy
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

from infra import program
from infra.config import load_project

PROJECT = load_project().name
SUBSCRIPTION = "3f2a6c1e-9b7d-4c2e-8a51-0d6e4b9f7a10"
TENANT = "8c1d2e3f-4a5b-4c6d-9e7f-0a1b2c3d4e5f"
DEPLOYER = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"

# Pulumi type token -> (ARM resource type path, input that holds the Azure name, name rule).
# The rules are Azure's naming rules: a name the program gets wrong fails here as in Azure.
_ARM: dict[str, tuple[str, str, str]] = {
    "azure-native:resources:ResourceGroup": ("", "resourceGroupName", r"[-\w.()]{1,90}"),
    "azure-native:storage:StorageAccount": (
        "Microsoft.Storage/storageAccounts",
        "accountName",
        r"[a-z0-9]{3,24}",
    ),
    "azure-native:storage:BlobContainer": (
        "Microsoft.Storage/storageAccounts/{accountName}/blobServices/default/containers",
        "containerName",
        r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]",
    ),
    "azure-native:keyvault:Vault": (
        "Microsoft.KeyVault/vaults",
        "vaultName",
        r"[a-zA-Z](?!.*--)[a-zA-Z0-9-]{1,22}[a-zA-Z0-9]",
    ),
    "azure-native:operationalinsights:Workspace": (
        "Microsoft.OperationalInsights/workspaces",
        "workspaceName",
        r"[A-Za-z0-9][A-Za-z0-9-]{2,61}[A-Za-z0-9]",
    ),
    "azure-native:applicationinsights:Component": (
        "Microsoft.Insights/components",
        "resourceName",
        r"[^%&\\?/]{1,260}",
    ),
    "azure-native:containerregistry:Registry": (
        "Microsoft.ContainerRegistry/registries",
        "registryName",
        r"[a-zA-Z0-9]{5,50}",
    ),
    "azure-native:machinelearningservices:Workspace": (
        "Microsoft.MachineLearningServices/workspaces",
        "workspaceName",
        r"[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}",
    ),
    "azure-native:machinelearningservices:Datastore": (
        "Microsoft.MachineLearningServices/workspaces/{workspaceName}/datastores",
        "name",
        r"[a-zA-Z0-9_]{1,255}",
    ),
    "azure-native:machinelearningservices:Compute": (
        "Microsoft.MachineLearningServices/workspaces/{workspaceName}/computes",
        "computeName",
        r"[a-zA-Z][a-zA-Z0-9-]{1,14}[a-zA-Z0-9]",
    ),
    "azure-native:managedidentity:UserAssignedIdentity": (
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        "resourceName",
        r"[a-zA-Z0-9][a-zA-Z0-9_-]{2,127}",
    ),
    "azure-native:authorization:RoleAssignment": (
        "",
        "roleAssignmentName",
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    ),
    "azure-native:network:VirtualNetwork": (
        "Microsoft.Network/virtualNetworks",
        "virtualNetworkName",
        r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}[a-zA-Z0-9_]",
    ),
    "azure-native:network:Subnet": (
        "Microsoft.Network/virtualNetworks/{virtualNetworkName}/subnets",
        "subnetName",
        r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,78}[a-zA-Z0-9_]",
    ),
    "azure-native:network:PrivateEndpoint": (
        "Microsoft.Network/privateEndpoints",
        "privateEndpointName",
        r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,78}[a-zA-Z0-9_]",
    ),
    "azure-native:network:PrivateDnsZoneGroup": (
        "Microsoft.Network/privateEndpoints/{privateEndpointName}/privateDnsZoneGroups",
        "privateDnsZoneGroupName",
        r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,78}[a-zA-Z0-9_]",
    ),
    "azure-native:privatedns:PrivateZone": (
        "Microsoft.Network/privateDnsZones",
        "privateZoneName",
        r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    ),
    "azure-native:monitor:DiagnosticSetting": (
        "",  # an extension resource: its ID hangs off the resource it configures
        "name",
        r"[^<>*%&:\\?+/]{1,260}",
    ),
    "azure-native:monitor:ActionGroup": (
        "Microsoft.Insights/actionGroups",
        "actionGroupName",
        r"[a-zA-Z0-9][a-zA-Z0-9_.()-]{0,258}[a-zA-Z0-9_()]",
    ),
    "azure-native:monitor:ScheduledQueryRule": (
        "Microsoft.Insights/scheduledQueryRules",
        "ruleName",
        r"[^*#&+:<>?@%{}\\/]{1,260}",
    ),
    "azure-native:consumption:Budget": (
        "",  # an extension resource on its scope (here the resource group)
        "budgetName",
        r"[a-zA-Z0-9_-]{1,63}",
    ),
    "azure-native:privatedns:VirtualNetworkLink": (
        "Microsoft.Network/privateDnsZones/{privateZoneName}/virtualNetworkLinks",
        "virtualNetworkLinkName",
        r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,78}[a-zA-Z0-9_]",
    ),
}


def _guid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


class AzureMocks(pulumi.runtime.Mocks):
    """Answers resource registrations and invokes the way Azure Resource Manager would."""

    def __init__(self, stack: str) -> None:
        self.stack = stack

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        if not args.custom:  # component resources have no provider
            return None, dict(args.inputs)
        if args.typ == "random:index/randomString:RandomString":
            digest = hashlib.sha256(f"{self.stack}/{args.name}".encode()).hexdigest()
            result = "".join(c for c in digest if c.isalnum())[: int(args.inputs["length"])]
            return f"{args.name}-id", {**args.inputs, "result": result}
        if args.typ not in _ARM:
            raise AssertionError(f"the mocks do not know {args.typ}; add it to _ARM")
        arm_type, name_key, rule = _ARM[args.typ]
        inputs = dict(args.inputs)
        name = inputs.get(name_key)
        if not isinstance(name, str) or not re.fullmatch(rule, name):
            raise ValueError(f"{args.typ} {args.name}: invalid Azure name {name!r} ({rule})")
        group = inputs.get("resourceGroupName", "")
        if args.typ == "azure-native:resources:ResourceGroup":
            resource_id = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}"
        elif args.typ == "azure-native:authorization:RoleAssignment":
            scope = inputs["scope"]
            resource_id = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        elif args.typ == "azure-native:monitor:DiagnosticSetting":
            uri = inputs["resourceUri"]
            resource_id = f"{uri}/providers/Microsoft.Insights/diagnosticSettings/{name}"
        elif args.typ == "azure-native:consumption:Budget":
            resource_id = f"{inputs['scope']}/providers/Microsoft.Consumption/budgets/{name}"
        else:
            path = arm_type.format(**inputs)
            resource_id = (
                f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/{path}/{name}"
            )
        state = {**inputs, "name": name, "type": arm_type.split("/{")[0] or args.typ}
        identity = inputs.get("identity")
        if isinstance(identity, dict) and identity.get("userAssignedIdentities"):
            # ARM answers a list of identity IDs with a map: ID -> principal and client IDs.
            state["identity"] = {
                **identity,
                "userAssignedIdentities": {
                    uai: {"principalId": _guid("principal", uai), "clientId": _guid("client", uai)}
                    for uai in identity["userAssignedIdentities"]
                },
            }
        state.update(self._computed(args.typ, name, inputs))
        return resource_id, state

    @staticmethod
    def _computed(typ: str, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Outputs Azure computes for each resource type."""
        if typ == "azure-native:storage:StorageAccount":
            return {
                "primaryEndpoints": {
                    "blob": f"https://{name}.blob.core.windows.net/",
                    "file": f"https://{name}.file.core.windows.net/",
                },
                "provisioningState": "Succeeded",
            }
        if typ == "azure-native:keyvault:Vault":
            properties = {**inputs["properties"], "vaultUri": f"https://{name}.vault.azure.net/"}
            return {"properties": properties}
        if typ == "azure-native:containerregistry:Registry":
            return {"loginServer": f"{name}.azurecr.io", "provisioningState": "Succeeded"}
        if typ == "azure-native:operationalinsights:Workspace":
            return {"customerId": _guid("law", name)}
        if typ == "azure-native:applicationinsights:Component":
            key = _guid("appi", name)
            return {
                "appId": _guid("appi-app", name),
                "instrumentationKey": key,
                "connectionString": f"InstrumentationKey={key}",
            }
        if typ == "azure-native:managedidentity:UserAssignedIdentity":
            return {
                "principalId": _guid("principal", name),
                "clientId": _guid("client", name),
                "tenantId": TENANT,
            }
        if typ == "azure-native:machinelearningservices:Workspace":
            return {
                "workspaceId": _guid("ws", name),
                "discoveryUrl": f"https://{inputs['location']}.api.azureml.ms/discovery",
                "mlFlowTrackingUri": f"azureml://{inputs['location']}.api.azureml.ms/mlflow/v1.0",
                "identity": {
                    **inputs["identity"],
                    "principalId": _guid("ws-principal", name),
                    "tenantId": TENANT,
                },
            }
        if typ == "azure-native:network:PrivateEndpoint":
            return {"networkInterfaces": [{"id": f"/nic/{name}.nic"}]}
        return {}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "azure-native:authorization:getClientConfig":
            return {
                "clientId": _guid("deployer-client"),
                "objectId": DEPLOYER,
                "subscriptionId": SUBSCRIPTION,
                "tenantId": TENANT,
            }
        raise AssertionError(f"the mocks do not know the invoke {args.token}")


@dataclass
class Registration:
    """One resource as the engine received it."""

    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    dependencies: list[str]
    replace_on_changes: list[str]
    delete_before_replace: bool
    inputs: dict[str, Any]
    ignore_changes: list[str] = field(default_factory=list)
    id: str = ""  # the ARM ID the mocks answered (empty for components)


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, plus a record of each registration request."""

    def __init__(self, mocks: AzureMocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(
                Registration(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    custom=request.custom,
                    dependencies=list(request.dependencies),
                    replace_on_changes=list(request.replaceOnChanges),
                    delete_before_replace=request.deleteBeforeReplace,
                    inputs=rpc.deserialize_properties(request.object),
                    ignore_changes=list(request.ignoreChanges),
                    id=response.id,
                )
            )
        return response


@dataclass
class Deployment:
    """Everything one run of the program declared."""

    registrations: list[Registration]
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, token: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == token]

    def one(self, token: str) -> Registration:
        found = self.of_type(token)
        assert len(found) == 1, f"expected one {token}, found {[r.name for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.registrations if r.urn == urn)


def deploy(config: Mapping[str, Any] | None = None, *, stack: str = "dev") -> Deployment:
    """Run ``infra.program.main`` once with this stack config (key -> value, no namespace)."""
    deployment = Deployment([])
    run_program(config or {}, stack, deployment)
    return deployment


def deploy_error(
    config: Mapping[str, Any], *, stack: str = "dev", entry_point: bool = False
) -> tuple[Exception, Deployment]:
    """Run the program (``entry_point``: as the CLI runs ``infra/``) with a config it must
    refuse: the error, and what got registered."""
    deployment = Deployment([])
    entry = entry_point_of(program) if entry_point else program.main
    try:
        run_program(config, stack, deployment, entry)
    except Exception as exc:
        return exc, deployment
    raise AssertionError(f"the program accepted {dict(config)}")


def deploy_entry_point(config: Mapping[str, Any], *, stack: str = "dev") -> Deployment:
    """Run ``infra/`` the way the Pulumi CLI does (``runpy`` on the ``main:`` folder)."""
    deployment = Deployment([])
    run_program(config, stack, deployment, entry_point_of(program))
    return deployment


def entry_point_of(module: ModuleType) -> Callable[[], Mapping[str, Any]]:
    """Run ``module``'s folder the way the Pulumi CLI runs a program: its ``__main__.py``, as a
    script (``runpy`` on the ``main:`` folder), not the package."""

    def run() -> Mapping[str, Any]:
        runpy.run_path(str(Path(module.__file__).resolve().parent), run_name="__main__")
        return {}

    return run


def run_program(
    config: Mapping[str, Any],
    stack: str,
    deployment: Deployment,
    entry: Callable[[], Mapping[str, Any]] = program.main,
    *,
    mocks: AzureMocks | None = None,
    project: str = PROJECT,
) -> None:
    """Run a Pulumi program's ``entry`` under ``mocks`` (default: ``AzureMocks(stack)``) with
    this config in ``project``'s namespace, recording every registration in ``deployment``."""
    mocks = mocks or AzureMocks(stack)
    monitor = RecordingMonitor(mocks)
    deployment.registrations = monitor.registrations
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(
        {
            f"{project}:{key}": value if isinstance(value, str) else json.dumps(value)
            for key, value in config.items()
        }
    )

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        outputs = entry()
        return pulumi.Output.all(**outputs).apply(deployment.outputs.update)

    run()


def accepts_tags(token: str) -> bool:
    """Whether the Pulumi resource class of this type token takes a ``tags`` input."""
    package, module, name = token.split(":")
    if package != "azure-native":
        return False
    cls = getattr(importlib.import_module(f"pulumi_azure_native.{module}"), name)
    return "tags" in inspect.signature(cls._internal_init).parameters


def walk(value: Any, path: str) -> Any:
    """Follow a Pulumi property path (``a.b.c``) through recorded inputs."""
    for part in path.split("."):
        value = value[part]
    return value
