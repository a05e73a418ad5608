"""Structure, profiles, RBAC, lifecycle traps and outputs of the Pulumi program."""

from __future__ import annotations

import re

import pytest

from infra.config import load_project
from infra.outputs import OUTPUT_KEYS, parse_stack_outputs
from tests.infra.infra_harness import SUBSCRIPTION, Deployment, deploy, walk

COMPUTE = "azure-native:machinelearningservices:Compute"
ROLE = "azure-native:authorization:RoleAssignment"
ENDPOINT = "azure-native:network:PrivateEndpoint"
ZONE = "azure-native:privatedns:PrivateZone"
GUID = re.compile(r"^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$")
GROUP = "0b5c3f2e-7d4a-4e8b-9c1d-2e3f4a5b6c7d"
USER = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"

# Azure built-in role definition IDs, written out from Azure's "built-in roles" reference
# (the same GUID in every tenant), not imported from the code under test.
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
# Roles that must never be granted by this program.
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"

PUBLIC_FACING = {
    "azure-native:machinelearningservices:Workspace",
    "azure-native:storage:StorageAccount",
    "azure-native:containerregistry:Registry",
}


def _public_access(deployment: Deployment) -> dict[str, str]:
    found = {
        r.type: r.inputs["publicNetworkAccess"]
        for r in deployment.registrations
        if r.type in PUBLIC_FACING
    }
    vault = deployment.one("azure-native:keyvault:Vault")
    found[vault.type] = vault.inputs["properties"]["publicNetworkAccess"]
    return found


# --- components -------------------------------------------------------------------------


def test_one_component_per_concern_with_children_named_from_it(private: Deployment) -> None:
    components = {r.name: r for r in private.registrations if not r.custom}
    assert {r.type.split(":")[-1] for r in components.values()} == {
        "WorkspaceCore",
        "AccessControl",
        "ComputeClusters",
        "PrivateNetwork",
        "DiagnosticLogs",
        "Operations",
    }
    for component in components.values():
        children = [r for r in private.registrations if r.parent == component.urn]
        assert children, component.name
        for child in children:
            assert child.name.startswith(f"{component.name}-"), child.name
    # Only the shared naming suffix and the resource group live outside a component.
    root = private.one("random:index/randomString:RandomString").parent
    top_level = {r.type for r in private.registrations if r.custom and r.parent == root}
    assert top_level == {
        "random:index/randomString:RandomString",
        "azure-native:resources:ResourceGroup",
    }


# --- profiles ---------------------------------------------------------------------------


def test_standard_profile_has_no_private_network(standard: Deployment) -> None:
    modules = {r.type.split(":")[1] for r in standard.registrations if r.custom}
    assert "network" not in modules and "privatedns" not in modules
    assert set(_public_access(standard).values()) == {"Enabled"}
    workspace = standard.one("azure-native:machinelearningservices:Workspace").inputs
    assert "imageBuildCompute" not in workspace
    assert standard.one("azure-native:containerregistry:Registry").inputs["sku"] == {
        "name": "Basic"
    }
    assert standard.outputs["networkProfile"] == "standard"


def test_private_profile_turns_public_network_access_off(private: Deployment) -> None:
    assert _public_access(private) == {
        "azure-native:machinelearningservices:Workspace": "Disabled",
        "azure-native:storage:StorageAccount": "Disabled",
        "azure-native:containerregistry:Registry": "Disabled",
        "azure-native:keyvault:Vault": "Disabled",
    }
    storage = private.one("azure-native:storage:StorageAccount").inputs
    assert storage["networkRuleSet"]["defaultAction"] == "Deny"
    vault = private.one("azure-native:keyvault:Vault").inputs["properties"]
    assert vault["networkAcls"]["defaultAction"] == "Deny"
    # Private link needs a Premium registry.
    assert private.one("azure-native:containerregistry:Registry").inputs["sku"] == {
        "name": "Premium"
    }


def test_private_profile_adds_endpoints_with_dns_for_every_service(private: Deployment) -> None:
    outputs = private.outputs
    endpoints = {
        r.inputs["privateLinkServiceConnections"][0]["groupIds"][0]: r
        for r in private.of_type(ENDPOINT)
    }
    assert set(endpoints) == {"amlworkspace", "blob", "file", "vault", "registry"}
    target = {
        group: r.inputs["privateLinkServiceConnections"][0]["privateLinkServiceId"]
        for group, r in endpoints.items()
    }
    assert target["amlworkspace"].endswith(f"/workspaces/{outputs['workspaceName']}")
    assert target["blob"].endswith(f"/storageAccounts/{outputs['storageAccountName']}")
    assert target["file"] == target["blob"]
    assert target["vault"].endswith(f"/vaults/{outputs['keyVaultName']}")
    assert target["registry"].endswith(f"/registries/{outputs['containerRegistryName']}")

    subnet = private.one("azure-native:network:Subnet")
    assert subnet.inputs["privateEndpointNetworkPolicies"] == "Disabled"
    for endpoint in endpoints.values():
        assert endpoint.inputs["subnet"]["id"].endswith("/subnets/private-endpoints")

    zones = {r.inputs["privateZoneName"] for r in private.of_type(ZONE)}
    assert zones == {
        "privatelink.api.azureml.ms",
        "privatelink.notebooks.azure.net",
        "privatelink.blob.core.windows.net",
        "privatelink.file.core.windows.net",
        "privatelink.vaultcore.azure.net",
        "privatelink.azurecr.io",
    }
    links = private.of_type("azure-native:privatedns:VirtualNetworkLink")
    assert {r.inputs["privateZoneName"] for r in links} == zones
    groups = private.of_type("azure-native:network:PrivateDnsZoneGroup")
    assert {g.inputs["privateEndpointName"] for g in groups} == {
        e.inputs["privateEndpointName"] for e in endpoints.values()
    }
    workspace_group = next(
        g for g in groups if g.inputs["privateEndpointName"].endswith("-workspace")
    )
    assert len(workspace_group.inputs["privateDnsZoneConfigs"]) == 2


def test_private_profile_builds_images_on_the_cpu_cluster(private: Deployment) -> None:
    workspace = private.one("azure-native:machinelearningservices:Workspace").inputs
    assert workspace["imageBuildCompute"] == private.outputs["cpuClusterName"] == "cpu-cluster"


def test_private_address_prefix_comes_from_config() -> None:
    deployment = deploy({"profile": "private", "privateAddressPrefix": "172.20.8.0/26"})
    vnet = deployment.one("azure-native:network:VirtualNetwork").inputs
    assert vnet["addressSpace"]["addressPrefixes"] == ["172.20.8.0/26"]


# --- every setting takes effect ---------------------------------------------------------

# A value other than the default for every declared key.
EVERY_SETTING = {
    "project": "vision",
    "environment": "qa",
    "owner": "vision-team",
    "location": "northeurope",
    "profile": "private",
    "gpuVmSize": "Standard_NC8as_T4_v3",
    "gpuMinNodes": 1,
    "gpuMaxNodes": 3,
    "gpuPriority": "LowPriority",
    "idleSecondsBeforeScaleDown": 900,
    "cpuCluster": True,
    "cpuVmSize": "Standard_D4s_v3",
    "cpuMaxNodes": 5,
    "dataScientistUsers": [USER],
    "dataScientistGroups": [GROUP],
    "logRetentionDays": 90,
    "privateAddressPrefix": "10.7.0.0/24",
    "alertEmails": ["oncall@contoso.com"],
    "alertServerErrorPercent": 2,
    "alertLatencyP99Ms": 750,
    "alertCpuPercent": 60,
    "alertMemoryPercent": 65,
    "endpointMinInstances": 2,
    "endpointMaxInstances": 7,
    "monthlyBudget": 1234,
    "budgetContactEmails": ["finance@contoso.com"],
}


def test_every_setting_reaches_the_resources_it_configures() -> None:
    """A program that read a key and then ignored it (a hard-coded size, retention or range)
    would pass every test that uses the defaults; this one sets them all."""
    assert set(EVERY_SETTING) == set(load_project().settings)  # a new key needs a row here
    deployment = deploy(EVERY_SETTING)
    assert deployment.outputs["resourceGroupName"] == "rg-vision-qa"
    assert deployment.one("azure-native:storage:StorageAccount").inputs["tags"] == {
        "project": "vision",
        "environment": "qa",
        "owner": "vision-team",
        "managed-by": "pulumi",
    }
    regional = [r for r in deployment.registrations if r.custom and "location" in r.inputs]
    assert {r.inputs["location"] for r in regional} == {"northeurope", "global"}  # DNS: global
    clusters = {c.inputs["computeName"]: c.inputs for c in deployment.of_type(COMPUTE)}
    gpu = clusters["gpu-cluster"]["properties"]["properties"]
    assert (gpu["vmSize"], gpu["vmPriority"]) == ("Standard_NC8as_T4_v3", "LowPriority")
    assert gpu["scaleSettings"] == {
        "minNodeCount": 1,
        "maxNodeCount": 3,
        "nodeIdleTimeBeforeScaleDown": "PT900S",
    }
    cpu = clusters["cpu-cluster"]["properties"]["properties"]
    assert cpu["vmSize"] == "Standard_D4s_v3"
    assert cpu["scaleSettings"]["maxNodeCount"] == 5
    assert cpu["scaleSettings"]["nodeIdleTimeBeforeScaleDown"] == "PT900S"
    logs = deployment.one("azure-native:operationalinsights:Workspace").inputs
    assert logs["retentionInDays"] == 90
    vnet = deployment.one("azure-native:network:VirtualNetwork").inputs
    assert vnet["addressSpace"]["addressPrefixes"] == ["10.7.0.0/24"]
    assert {a["principalId"] for a in _role_assignments(deployment)} >= {USER, GROUP}
    assert _public_access(deployment)["azure-native:storage:StorageAccount"] == "Disabled"
    receivers = deployment.one("azure-native:monitor:ActionGroup").inputs["emailReceivers"]
    assert [r["emailAddress"] for r in receivers] == ["oncall@contoso.com"]
    thresholds = {
        r.inputs["ruleName"]: r.inputs["criteria"]["allOf"][0]["threshold"]
        for r in deployment.of_type("azure-native:monitor:ScheduledQueryRule")
    }
    assert thresholds == {
        "alert-vision-qa-server-errors": 2,
        "alert-vision-qa-latency-p99": 750,
        "alert-vision-qa-cpu": 60,
        "alert-vision-qa-memory": 65,
    }
    assert (
        deployment.outputs["endpointMinInstances"],
        deployment.outputs["endpointMaxInstances"],
        deployment.outputs["alertEmails"],
    ) == (2, 7, ["oncall@contoso.com"])
    budget = deployment.one("azure-native:consumption:Budget").inputs
    assert budget["amount"] == 1234
    assert {tuple(n["contactEmails"]) for n in budget["notifications"].values()} == {
        ("finance@contoso.com",)
    }


# --- identity and RBAC ------------------------------------------------------------------


def _role_assignments(deployment: Deployment) -> list[dict]:
    return [r.inputs for r in deployment.of_type(ROLE)]


def _role(inputs: dict) -> str:
    prefix = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/"
    assert inputs["roleDefinitionId"].startswith(prefix)
    return inputs["roleDefinitionId"][len(prefix) :]


def test_cluster_identity_gets_data_and_registry_roles(standard: Deployment) -> None:
    assignments = _role_assignments(standard)
    assert len(assignments) == 2  # no users or groups configured
    assert len({a["principalId"] for a in assignments}) == 1  # the cluster identity
    for inputs in assignments:
        # Tells ARM not to look a brand-new identity up (avoids PrincipalNotFound).
        assert inputs["principalType"] == "ServicePrincipal"
        assert GUID.match(inputs["principalId"])
    roles = {_role(a): a["scope"] for a in assignments}
    assert roles[STORAGE_BLOB_DATA_CONTRIBUTOR].endswith(
        f"/storageAccounts/{standard.outputs['storageAccountName']}"
    )
    assert roles[ACR_PULL].endswith(f"/registries/{standard.outputs['containerRegistryName']}")


def test_users_and_groups_from_config_get_data_scientist_roles() -> None:
    deployment = deploy({"dataScientistUsers": [USER], "dataScientistGroups": [GROUP.upper()]})
    by_principal: dict[str, dict[str, str]] = {}
    for inputs in _role_assignments(deployment):
        by_principal.setdefault(inputs["principalId"], {})[_role(inputs)] = inputs["principalType"]
    assert by_principal[USER] == {
        AZUREML_DATA_SCIENTIST: "User",
        STORAGE_BLOB_DATA_CONTRIBUTOR: "User",
    }
    assert by_principal[GROUP] == {
        AZUREML_DATA_SCIENTIST: "Group",
        STORAGE_BLOB_DATA_CONTRIBUTOR: "Group",
    }
    workspace_scope = next(
        a["scope"]
        for a in _role_assignments(deployment)
        if a["principalId"] == USER and _role(a) == AZUREML_DATA_SCIENTIST
    )
    assert workspace_scope.endswith(f"/workspaces/{deployment.outputs['workspaceName']}")


def test_every_role_assignment_is_the_least_role_at_the_narrowest_scope() -> None:
    """The whole RBAC table, written out: who gets which built-in role on which resource.
    A role swapped for a broader one, or a scope widened to the resource group or the
    subscription, changes a row."""
    deployment = deploy({"dataScientistUsers": [USER], "dataScientistGroups": [GROUP]})
    outputs = deployment.outputs
    group = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{outputs['resourceGroupName']}"
    storage = f"{group}/providers/Microsoft.Storage/storageAccounts/{outputs['storageAccountName']}"
    registry = (
        f"{group}/providers/Microsoft.ContainerRegistry/registries/"
        f"{outputs['containerRegistryName']}"
    )
    workspace = (
        f"{group}/providers/Microsoft.MachineLearningServices/workspaces/{outputs['workspaceName']}"
    )
    # The cluster identity: the one principal besides the configured user and group.
    (compute,) = {a["principalId"] for a in _role_assignments(deployment)} - {USER, GROUP}
    rows = {
        (a["principalId"], a["principalType"], _role(a), a["scope"])
        for a in _role_assignments(deployment)
    }
    assert rows == {
        (compute, "ServicePrincipal", "ba92f5b4-2d11-453d-a403-e96b0029c9fe", storage),
        (compute, "ServicePrincipal", "7f951dda-4ed3-4680-a7ca-43fe172d538d", registry),
        (USER, "User", "f6c7c914-8db3-469d-8ca1-694a8f32e121", workspace),
        (USER, "User", "ba92f5b4-2d11-453d-a403-e96b0029c9fe", storage),
        (GROUP, "Group", "f6c7c914-8db3-469d-8ca1-694a8f32e121", workspace),
        (GROUP, "Group", "ba92f5b4-2d11-453d-a403-e96b0029c9fe", storage),
    }
    assert len(rows) == len(deployment.of_type(ROLE))  # no duplicate assignment hides in the set
    granted = {_role(a) for a in _role_assignments(deployment)}
    assert not granted & {OWNER, CONTRIBUTOR, USER_ACCESS_ADMINISTRATOR}


def test_role_assignment_names_are_unique_guids_stable_per_stack() -> None:
    def names(deployment: Deployment) -> dict[str, str]:
        return {r.name: r.inputs["roleAssignmentName"] for r in deployment.of_type(ROLE)}

    first = names(deploy({"dataScientistGroups": [GROUP]}, stack="dev"))
    again = names(deploy({"dataScientistGroups": [GROUP]}, stack="dev"))
    other = names(deploy({"dataScientistGroups": [GROUP]}, stack="prod"))
    assert all(GUID.match(n) for n in first.values())
    assert len(set(first.values())) == len(first) == 4
    assert first == again  # an update keeps the assignments
    assert not set(first.values()) & set(other.values())  # another stack gets its own


def test_clusters_are_created_after_their_role_assignments(private: Deployment) -> None:
    """RBAC propagation: a cluster must not start before its identity may read data."""
    assignment_urns = {r.urn for r in private.of_type(ROLE)}
    assert len(assignment_urns) == 4
    for cluster in private.of_type(COMPUTE):
        assert assignment_urns <= set(cluster.dependencies), cluster.name


def test_datastore_skips_validation_that_would_race_rbac_propagation(
    standard: Deployment,
) -> None:
    datastore = standard.one("azure-native:machinelearningservices:Datastore").inputs
    assert datastore["skipValidation"] is True
    assert datastore["properties"]["serviceDataAccessAuthIdentity"] == (
        "WorkspaceSystemAssignedIdentity"
    )
    assert datastore["properties"]["accountName"] == standard.outputs["storageAccountName"]
    assert datastore["properties"]["containerName"] == standard.outputs["datasetsContainerName"]


# --- lifecycle traps --------------------------------------------------------------------


def _gpu(deployment: Deployment):
    return next(c for c in deployment.of_type(COMPUTE) if c.inputs["computeName"] == "gpu-cluster")


def test_vm_size_change_replaces_the_cluster_deliberately() -> None:
    """Azure ML cannot resize a cluster in place: the engine is told to replace it (deleting
    the old one first, since the new one has the same name), and the replace-on-change paths
    really point at the configured size and priority."""
    small = _gpu(deploy({"gpuVmSize": "Standard_NC4as_T4_v3", "gpuPriority": "Dedicated"}))
    large = _gpu(deploy({"gpuVmSize": "Standard_NC24ads_A100_v4", "gpuPriority": "LowPriority"}))
    size_path, priority_path = "properties.properties.vmSize", "properties.properties.vmPriority"
    for cluster in (small, large):
        assert {size_path, priority_path} <= set(cluster.replace_on_changes)
        assert cluster.delete_before_replace is True
    assert walk(small.inputs, size_path) == "Standard_NC4as_T4_v3"
    assert walk(large.inputs, size_path) == "Standard_NC24ads_A100_v4"
    assert walk(small.inputs, priority_path) == "Dedicated"
    assert walk(large.inputs, priority_path) == "LowPriority"
    assert small.inputs["computeName"] == large.inputs["computeName"]


def test_soft_deleted_names_carry_the_stacks_random_suffix(standard: Deployment) -> None:
    """Key vaults (purge protection), workspaces and Log Analytics workspaces keep their names
    after deletion; a new random suffix after `pulumi destroy` avoids the collision."""
    suffix_resource = standard.one("random:index/randomString:RandomString")
    assert suffix_resource.inputs["length"] == 6
    assert suffix_resource.inputs["special"] is False and suffix_resource.inputs["upper"] is False
    other = deploy({"location": "westeurope"}, stack="prod")
    names = {
        "key vault": ("azure-native:keyvault:Vault", "vaultName"),
        "workspace": ("azure-native:machinelearningservices:Workspace", "workspaceName"),
        "logs": ("azure-native:operationalinsights:Workspace", "workspaceName"),
        "storage": ("azure-native:storage:StorageAccount", "accountName"),
        "registry": ("azure-native:containerregistry:Registry", "registryName"),
    }
    for label, (token, key) in names.items():
        mine, theirs = standard.one(token).inputs[key], other.one(token).inputs[key]
        assert mine != theirs, label
        assert mine[-6:] != theirs[-6:], label


@pytest.mark.parametrize(
    ("project", "environment"), [("mnist", "dev"), ("a1", "p"), ("visionteam", "prod99")]
)
def test_names_are_valid_azure_names_for_any_valid_project(project: str, environment: str) -> None:
    # The mocks reject names that break Azure's rules, as ARM would.
    deployment = deploy({"project": project, "environment": environment, "profile": "private"})
    assert deployment.outputs["resourceGroupName"] == f"rg-{project}-{environment}"


# --- outputs ----------------------------------------------------------------------------


def test_stack_outputs_are_the_contract_the_commands_read(any_profile_outputs) -> None:
    outputs, deployment = any_profile_outputs
    assert set(outputs) == set(OUTPUT_KEYS.values())
    parsed = parse_stack_outputs(outputs)
    assert parsed.subscription_id == SUBSCRIPTION
    assert (
        parsed.workspace_name
        == deployment.one("azure-native:machinelearningservices:Workspace").inputs["workspaceName"]
    )
    assert (
        parsed.resource_group
        == deployment.one("azure-native:resources:ResourceGroup").inputs["resourceGroupName"]
    )
    assert parsed.gpu_cluster == "gpu-cluster"
    assert (parsed.gpu_vm_size, parsed.gpu_max_nodes, parsed.gpus_per_node) == (
        "Standard_NC4as_T4_v3",
        2,
        1,
    )
    identity = deployment.one("azure-native:managedidentity:UserAssignedIdentity")
    identity_name = identity.inputs["resourceName"]
    assert parsed.compute_identity_id.endswith(f"/userAssignedIdentities/{identity_name}")
    assert GUID.match(parsed.compute_identity_client_id)
    assert parsed.datasets_datastore == "datasets"
    assert (parsed.endpoint_min_instances, parsed.endpoint_max_instances) == (1, 3)
    assert parsed.alert_emails == ()


@pytest.fixture(params=["standard", "private"])
def any_profile_outputs(request: pytest.FixtureRequest):
    deployment = request.getfixturevalue(request.param)
    return deployment.outputs, deployment
