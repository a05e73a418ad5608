"""Policy on what the Pulumi program declares, each rule named after the check it mirrors.

Every test runs the real program (``infra.program.main``) against Azure-like mocks; the
``standard`` fixture is a fresh stack with only a location set, so these are the defaults.
"""

from __future__ import annotations

import pytest

from infra.catalog import CPU_VM_SIZES, GPU_VM_SIZES, RETIRED_VM_SIZES
from tests.infra.infra_harness import Deployment, accepts_tags, deploy

STORAGE = "azure-native:storage:StorageAccount"
VAULT = "azure-native:keyvault:Vault"
REGISTRY = "azure-native:containerregistry:Registry"
WORKSPACE = "azure-native:machinelearningservices:Workspace"
COMPUTE = "azure-native:machinelearningservices:Compute"
DATASTORE = "azure-native:machinelearningservices:Datastore"


@pytest.fixture(scope="module", params=["standard", "private"])
def any_profile(request: pytest.FixtureRequest) -> Deployment:
    return request.getfixturevalue(request.param)


def test_ckv_azure_44_storage_accepts_tls_1_2_or_newer_only(any_profile: Deployment) -> None:
    assert any_profile.one(STORAGE).inputs["minimumTlsVersion"] == "TLS1_2"


def test_ckv_azure_190_storage_blocks_public_blob_access(any_profile: Deployment) -> None:
    assert any_profile.one(STORAGE).inputs["allowBlobPublicAccess"] is False
    for container in any_profile.of_type("azure-native:storage:BlobContainer"):
        assert container.inputs["publicAccess"] == "None"


def test_azure_policy_92a89a79_storage_prevents_cross_tenant_object_replication(
    any_profile: Deployment,
) -> None:
    assert any_profile.one(STORAGE).inputs["allowCrossTenantReplication"] is False


def test_private_endpoint_subnet_has_no_default_outbound_internet_access(
    private: Deployment,
) -> None:
    """Default outbound access (an implicit public IP for anything in the subnet) is off: the
    subnet only holds private endpoints, which need no way out."""
    subnet = private.one("azure-native:network:Subnet").inputs
    assert subnet["defaultOutboundAccess"] is False
    assert subnet["subnetName"] == "private-endpoints"


def test_ckv_azure_3_storage_is_https_only(any_profile: Deployment) -> None:
    assert any_profile.one(STORAGE).inputs["enableHttpsTrafficOnly"] is True


def test_ckv2_azure_40_storage_has_no_shared_keys_and_datastores_use_identities(
    any_profile: Deployment,
) -> None:
    storage = any_profile.one(STORAGE).inputs
    assert storage["allowSharedKeyAccess"] is False
    assert storage["defaultToOAuthAuthentication"] is True
    # With account keys off, every datastore must authenticate with an identity.
    assert any_profile.one(WORKSPACE).inputs["systemDatastoresAuthMode"] == "Identity"
    datastores = any_profile.of_type(DATASTORE)
    assert datastores
    for datastore in datastores:
        assert datastore.inputs["properties"]["credentials"] == {"credentialsType": "None"}


def test_ckv_azure_110_key_vault_has_purge_protection(any_profile: Deployment) -> None:
    assert any_profile.one(VAULT).inputs["properties"]["enablePurgeProtection"] is True


def test_ckv_azure_111_key_vault_has_soft_delete(any_profile: Deployment) -> None:
    properties = any_profile.one(VAULT).inputs["properties"]
    assert properties["enableSoftDelete"] is True
    assert 7 <= properties["softDeleteRetentionInDays"] <= 90
    assert properties["enableRbacAuthorization"] is True  # no access policies to drift


def test_ckv_azure_137_registry_admin_user_is_disabled(any_profile: Deployment) -> None:
    assert any_profile.one(REGISTRY).inputs["adminUserEnabled"] is False


def test_ckv_azure_138_registry_anonymous_pull_is_disabled(any_profile: Deployment) -> None:
    assert any_profile.one(REGISTRY).inputs["anonymousPullEnabled"] is False


def test_ckv_azure_150_clusters_scale_to_zero(any_profile: Deployment) -> None:
    clusters = any_profile.of_type(COMPUTE)
    assert {c.inputs["computeName"] for c in clusters} == {"gpu-cluster", "cpu-cluster"}
    for cluster in clusters:
        scale = cluster.inputs["properties"]["properties"]["scaleSettings"]
        assert scale["minNodeCount"] == 0
        assert scale["nodeIdleTimeBeforeScaleDown"] == "PT180S"


def test_ckv_azure_142_and_azure_policy_e96a9a5f_clusters_have_local_auth_disabled(
    any_profile: Deployment,
) -> None:
    for cluster in any_profile.of_type(COMPUTE):
        assert cluster.inputs["properties"]["disableLocalAuth"] is True


def test_azure_policy_6ddb1705_workspace_uses_managed_network_isolation(
    any_profile: Deployment,
) -> None:
    network = any_profile.one(WORKSPACE).inputs["managedNetwork"]
    assert network["isolationMode"] in ("AllowInternetOutbound", "AllowOnlyApprovedOutbound")


def test_clusters_have_no_ssh_no_public_ip_and_a_managed_identity(
    any_profile: Deployment,
) -> None:
    identity_id = any_profile.outputs["computeIdentityId"]
    for cluster in any_profile.of_type(COMPUTE):
        inputs = cluster.inputs
        properties = inputs["properties"]["properties"]
        assert properties["remoteLoginPortPublicAccess"] == "Disabled"
        assert "userAccountCredentials" not in properties  # no admin user, no SSH key
        assert properties["enableNodePublicIp"] is False
        assert inputs["identity"] == {
            "type": "UserAssigned",
            "userAssignedIdentities": [identity_id],
        }


def test_workspace_links_its_four_resources_and_has_a_managed_identity(
    standard: Deployment,
) -> None:
    workspace = standard.one(WORKSPACE).inputs
    assert workspace["identity"] == {"type": "SystemAssigned"}
    assert workspace["storageAccount"].endswith(f"/{standard.outputs['storageAccountName']}")
    assert workspace["keyVault"].endswith(f"/{standard.outputs['keyVaultName']}")
    assert workspace["containerRegistry"].endswith(f"/{standard.outputs['containerRegistryName']}")
    app_insights = standard.one("azure-native:applicationinsights:Component").inputs
    assert workspace["applicationInsights"].endswith(f"/components/{app_insights['resourceName']}")
    logs = standard.one("azure-native:operationalinsights:Workspace").inputs
    assert app_insights["workspaceResourceId"].endswith(f"/workspaces/{logs['workspaceName']}")
    assert app_insights["ingestionMode"] == "LogAnalytics"


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"gpuVmSize": "Standard_NC24ads_A100_v4", "cpuVmSize": "Standard_D4s_v3"},
        {"gpuVmSize": "standard_nd96isr_h100_v5", "gpuPriority": "lowpriority"},
    ],
    ids=["default", "a100", "h100-lowercase"],
)
def test_no_retired_vm_sizes(config: dict[str, str]) -> None:
    deployment = deploy({"location": "eastus", **config})
    sizes = {
        c.inputs["computeName"]: c.inputs["properties"]["properties"]["vmSize"]
        for c in deployment.of_type(COMPUTE)
    }
    assert sizes["gpu-cluster"] in GPU_VM_SIZES
    assert sizes["cpu-cluster"] in CPU_VM_SIZES
    assert not set(sizes.values()) & set(RETIRED_VM_SIZES)
    assert not any(size.startswith(("Standard_NC6", "Standard_NC12")) for size in sizes.values())


def test_default_gpu_size_is_the_cheapest_current_one(standard: Deployment) -> None:
    gpu = next(c for c in standard.of_type(COMPUTE) if c.inputs["computeName"] == "gpu-cluster")
    properties = gpu.inputs["properties"]["properties"]
    assert properties["vmSize"] == "Standard_NC4as_T4_v3"
    assert properties["vmPriority"] == "Dedicated"
    assert properties["scaleSettings"]["maxNodeCount"] == 2


def test_low_priority_option_reaches_the_cluster() -> None:
    deployment = deploy({"gpuPriority": "LowPriority", "cpuCluster": False, "profile": "standard"})
    (gpu,) = deployment.of_type(COMPUTE)
    assert gpu.inputs["properties"]["properties"]["vmPriority"] == "LowPriority"
    assert deployment.outputs["cpuClusterName"] is None


def test_tags_on_every_taggable_resource(any_profile: Deployment) -> None:
    taggable = [r for r in any_profile.registrations if r.custom and accepts_tags(r.type)]
    # Everything that can carry tags does: the test would pass vacuously on an empty list.
    assert len(taggable) >= 10
    for resource in taggable:
        tags = resource.inputs.get("tags", {})
        assert tags.get("project") == "mnist", resource.name
        assert tags.get("environment") == "dev", resource.name
        assert tags.get("owner") == "ml-platform", resource.name
        assert tags.get("managed-by") == "pulumi", resource.name
    for datastore in any_profile.of_type(DATASTORE):
        assert datastore.inputs["properties"]["tags"]["project"] == "mnist"


def test_owner_and_environment_tags_come_from_config() -> None:
    deployment = deploy({"environment": "prod", "owner": "vision-team"})
    for resource in deployment.registrations:
        if resource.custom and accepts_tags(resource.type):
            assert resource.inputs["tags"]["environment"] == "prod"
            assert resource.inputs["tags"]["owner"] == "vision-team"


def test_no_secrets_in_stack_outputs(any_profile: Deployment) -> None:
    words = ("secret", "password", "connectionstring", "instrumentationkey", "accesskey", "sas")
    keys = {key.lower() for key in any_profile.outputs}
    assert not any(word in key for key in keys for word in words)
    values = " ".join(str(v) for v in any_profile.outputs.values())
    assert "InstrumentationKey" not in values
