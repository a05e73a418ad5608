"""The bootstrap stack under Pulumi mocks: federated subjects, roles and scopes, the state
backend, the outputs, and the config both ways.

Role definition GUIDs are Azure's built-in ones, written out here (checked against Azure's
built-in roles reference), never imported from the program under test.
"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.infra.bootstrap.bootstrap_harness import REPOSITORY, deploy_entry_point, deploy_error
from tests.infra.infra_harness import SUBSCRIPTION, TENANT, Deployment

READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
RBAC_ADMINISTRATOR = "f58310d9-a9f6-439a-9e8d-f62e7b41a168"
BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
KEY_VAULT_CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"

SUB = f"/subscriptions/{SUBSCRIPTION}"
RG = f"{SUB}/resourceGroups"
ISSUER = "https://token.actions.githubusercontent.com"

ASSIGNMENT = "azure-native:authorization:RoleAssignment"
CREDENTIAL = "azure-native:managedidentity:FederatedIdentityCredential"
IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"


def identity_of(deployment: Deployment, registration) -> str:
    """The component (reader, deploy-dev, ...) a registration belongs to, or the top level."""
    if "::pulumi:pulumi:Stack::" in registration.parent:
        return "operator"
    return deployment.by_urn(registration.parent).name


def grants(deployment: Deployment) -> set[tuple[str, str, str]]:
    """(identity, role, scope) of every role assignment; state and key scopes abbreviated."""
    container = deployment.one("azure-native:storage:BlobContainer")
    found = set()
    for assignment in deployment.of_type(ASSIGNMENT):
        scope = assignment.inputs["scope"]
        if scope.endswith("/containers/pulumi-state"):
            scope = "state-container"
        elif scope.endswith("/keys/pulumi-secrets"):
            scope = "secrets-key"
        role = assignment.inputs["roleDefinitionId"].rsplit("/", 1)[1]
        if (
            role
            == deployment.one("azure-native:authorization:RoleDefinition").inputs[
                "roleDefinitionId"
            ]
        ):
            role = "preflight-reader"
        found.add((identity_of(deployment, assignment), role, scope))
    assert container.inputs["containerName"] == "pulumi-state"
    return found


def subjects_by_identity(deployment: Deployment) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for credential in deployment.of_type(CREDENTIAL):
        found.setdefault(credential.inputs["resourceName"], set()).add(credential.inputs["subject"])
    return found


# ---------------------------------------------------------------------------- subjects


def test_each_identity_trusts_exactly_its_github_subjects(default):
    assert subjects_by_identity(default) == {
        "id-mnist-ci-reader": {
            "repo:contoso/mnist-ml:pull_request",
            "repo:contoso/mnist-ml:ref:refs/heads/main",
        },
        "id-mnist-dev-deploy": {"repo:contoso/mnist-ml:environment:dev"},
        "id-mnist-prod-deploy": {"repo:contoso/mnist-ml:environment:prod"},
    }
    for credential in default.of_type(CREDENTIAL):
        assert credential.inputs["issuer"] == ISSUER
        assert credential.inputs["audiences"] == ["api://AzureADTokenExchange"]


def test_federated_credentials_of_one_identity_are_written_one_after_another(default):
    """Azure refuses concurrent credential writes on one identity."""
    reader = [c for c in default.of_type(CREDENTIAL) if "reader" in c.inputs["resourceName"]]
    assert len(reader) == 2
    first, second = sorted(reader, key=lambda c: len(c.dependencies))
    assert first.urn in second.dependencies


def test_subjects_follow_the_configured_branch_and_environments(subscription_wide):
    assert subjects_by_identity(subscription_wide) == {
        "id-mnist-ci-reader": {
            "repo:contoso/mnist-ml:pull_request",
            "repo:contoso/mnist-ml:ref:refs/heads/release",
        },
        "id-mnist-dev-deploy": {"repo:contoso/mnist-ml:environment:dev"},
        "id-mnist-test-deploy": {"repo:contoso/mnist-ml:environment:test"},
        "id-mnist-prod-deploy": {"repo:contoso/mnist-ml:environment:prod"},
    }


# ---------------------------------------------------------------------------- roles and scopes


def _deploy_grants(env: str, scope: str) -> set[tuple[str, str, str]]:
    who = f"deploy-{env}"
    return {
        (who, CONTRIBUTOR, scope),
        (who, RBAC_ADMINISTRATOR, scope),
        (who, BLOB_DATA_CONTRIBUTOR, scope),
        (who, BLOB_DATA_CONTRIBUTOR, "state-container"),
        (who, KEY_VAULT_CRYPTO_USER, "secrets-key"),
        (who, "preflight-reader", SUB),
    }


OPERATOR = {
    ("operator", BLOB_DATA_CONTRIBUTOR, "state-container"),
    ("operator", KEY_VAULT_CRYPTO_USER, "secrets-key"),
}


def test_roles_and_scopes_default_are_per_environment_resource_group(default):
    assert grants(default) == {
        ("reader", READER, f"{RG}/rg-mnist-dev"),
        ("reader", READER, f"{RG}/rg-mnist-prod"),
        ("reader", BLOB_DATA_READER, "state-container"),
        ("reader", KEY_VAULT_CRYPTO_USER, "secrets-key"),
        *_deploy_grants("dev", f"{RG}/rg-mnist-dev"),
        *_deploy_grants("prod", f"{RG}/rg-mnist-prod"),
        *OPERATOR,
    }


def test_roles_on_the_subscription_only_when_configured(subscription_wide):
    assert grants(subscription_wide) == {
        ("reader", READER, SUB),
        ("reader", BLOB_DATA_READER, "state-container"),
        ("reader", KEY_VAULT_CRYPTO_USER, "secrets-key"),
        *_deploy_grants("dev", SUB),
        *_deploy_grants("test", SUB),
        *_deploy_grants("prod", SUB),
        *OPERATOR,
    }


def test_assignments_go_to_their_identitys_principal(default):
    for assignment in default.of_type(ASSIGNMENT):
        who = identity_of(default, assignment)
        if who == "operator":
            continue  # the signed-in operator (getClientConfig's objectId)
        name = {"reader": "id-mnist-ci-reader"}.get(who, f"id-mnist-{who[7:]}-deploy")
        # The mocks answer principalId = uuid5(URL, "principal/<identity name>").
        expected = str(uuid.uuid5(uuid.NAMESPACE_URL, f"principal/{name}"))
        assert assignment.inputs["principalId"] == expected, assignment.name
        assert assignment.inputs["principalType"] == "ServicePrincipal"
        assert assignment.inputs["description"], f"{assignment.name} says not why"


def test_environment_resource_groups_exist_before_the_main_stack_only_when_scoped_to_them(
    default, subscription_wide
):
    groups = {g.inputs["resourceGroupName"] for g in default.of_type(_GROUP)}
    assert groups == {"rg-mnist-cicd", "rg-mnist-dev", "rg-mnist-prod"}
    assert default.outputs["resourceGroupIds"] == {
        "dev": f"{RG}/rg-mnist-dev",
        "prod": f"{RG}/rg-mnist-prod",
    }
    groups = {g.inputs["resourceGroupName"] for g in subscription_wide.of_type(_GROUP)}
    assert groups == {"rg-mnist-cicd"}
    assert subscription_wide.outputs["resourceGroupIds"] == {}


_GROUP = "azure-native:resources:ResourceGroup"


# ---------------------------------------------------------------------------- policy


def _guids(text: str) -> set[str]:
    return set(re.findall(r"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}", text))


@pytest.mark.parametrize("which", ["default", "subscription_wide"])
def test_policy_no_owner_no_escalation_no_scope_wider_than_configured(which, request):
    deployment: Deployment = request.getfixturevalue(which)
    subscription_allowed = which == "subscription_wide"
    bootstrap_group = f"{RG}/rg-mnist-cicd/"
    env_groups = tuple(f"{RG}/rg-mnist-{env}" for env in ("dev", "test", "prod"))
    custom = deployment.one("azure-native:authorization:RoleDefinition")
    assert custom.inputs["permissions"] == [
        {
            "actions": [
                "Microsoft.Compute/skus/read",
                "Microsoft.MachineLearningServices/locations/usages/read",
            ]
        }
    ]
    assignments = deployment.of_type(ASSIGNMENT)
    assert assignments
    for assignment in assignments:
        role = assignment.inputs["roleDefinitionId"].rsplit("/", 1)[1]
        scope = assignment.inputs["scope"]
        assert role not in (OWNER, USER_ACCESS_ADMINISTRATOR), assignment.name
        if role == RBAC_ADMINISTRATOR:
            condition = assignment.inputs["condition"]
            assert assignment.inputs["conditionVersion"] == "2.0"
            assert _guids(condition) == {BLOB_DATA_CONTRIBUTOR, ACR_PULL, AZUREML_DATA_SCIENTIST}
            assert "roleAssignments/write" in condition and "roleAssignments/delete" in condition
        else:
            assert "condition" not in assignment.inputs, assignment.name
        if scope == SUB:
            assert subscription_allowed or role == custom.inputs["roleDefinitionId"], (
                f"{assignment.name}: role {role} on the whole subscription"
            )
        else:
            assert scope.startswith(bootstrap_group) or scope in env_groups, scope


def test_delegating_owner_is_refused_by_name():
    error, deployment = deploy_error(
        {"githubRepository": REPOSITORY, "delegatedRoles": [ACR_PULL, OWNER.upper()]}
    )
    assert "delegatedRoles" in str(error) and "Owner" in str(error)
    assert deployment.registrations == []


# ---------------------------------------------------------------------------- backend, outputs


def test_state_storage_is_entra_only_and_versioned(default):
    account = default.one("azure-native:storage:StorageAccount")
    assert account.inputs["allowSharedKeyAccess"] is False
    assert account.inputs["allowBlobPublicAccess"] is False
    assert account.inputs["minimumTlsVersion"] == "TLS1_2"
    service = default.one("azure-native:storage:BlobServiceProperties")
    assert service.inputs["isVersioningEnabled"] is True
    assert service.inputs["deleteRetentionPolicy"] == {"enabled": True, "days": 30}
    vault = default.one("azure-native:keyvault:Vault")
    assert vault.inputs["properties"]["enableRbacAuthorization"] is True
    assert vault.inputs["properties"]["enablePurgeProtection"] is True
    key = default.one("azure-native:keyvault:Key")
    assert key.inputs["properties"]["kty"] == "RSA"
    assert {"encrypt", "decrypt"} <= set(key.inputs["properties"]["keyOps"])


def test_outputs_are_what_the_workflows_log_in_with(default):
    outputs = default.outputs
    assert outputs["tenantId"] == TENANT
    assert outputs["subscriptionId"] == SUBSCRIPTION
    assert re.fullmatch(
        r"azblob://pulumi-state\?storage_account=stmniststate[a-z0-9]{6}", outputs["stateUrl"]
    )
    assert re.fullmatch(
        r"azurekeyvault://kvmnistci[a-z0-9]{6}\.vault\.azure\.net/keys/pulumi-secrets",
        outputs["secretsProviderUrl"],
    )
    assert outputs["readerClientId"] == str(
        uuid.uuid5(uuid.NAMESPACE_URL, "client/id-mnist-ci-reader")
    )
    assert outputs["deployClientIds"] == {
        env: str(uuid.uuid5(uuid.NAMESPACE_URL, f"client/id-mnist-{env}-deploy"))
        for env in ("dev", "prod")
    }


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("config", "key", "words"),
    [
        ({}, "githubRepository", "OWNER/REPO"),
        ({"githubRepository": "https://github.com/a/b"}, "githubRepository", "OWNER/REPO"),
        ({"environments": ["dev", "Prod!"]}, "environments", "lowercase"),
        ({"environments": ["dev", "dev"]}, "environments", "more than once"),
        ({"environments": []}, "environments", "at least one"),
        ({"branch": "refs/heads/main"}, "branch", "without refs/heads/"),
        ({"location": "mars"}, "location", "allowed:"),
        ({"subscriptionScope": "maybe"}, "subscriptionScope", "true or false"),
        ({"delegatedRoles": ["AcrPull"]}, "delegatedRoles", "GUID"),
        ({"delegatedRoles": [USER_ACCESS_ADMINISTRATOR]}, "delegatedRoles", "User Access"),
    ],
)
def test_bad_config_is_refused_before_anything_exists(config, key, words):
    config = {"githubRepository": REPOSITORY, **config} if key != "githubRepository" else config
    error, deployment = deploy_error(config)
    assert f"- {key}: " in str(error) and words in str(error), str(error)
    assert deployment.registrations == []


def test_every_key_is_declared_with_a_default_and_unknown_keys_are_named():
    from infra.bootstrap.config import load_bootstrap_project, validate_bootstrap_config

    project = load_bootstrap_project()  # refuses a declaration without description or default
    assert set(project.settings) == {
        "githubRepository",
        "branch",
        "project",
        "environments",
        "location",
        "subscriptionScope",
        "delegatedRoles",
    }
    with pytest.raises(ValueError, match="- githubRepo: unknown key"):
        validate_bootstrap_config({"githubRepository": REPOSITORY, "githubRepo": "a/b"})


def test_the_program_refuses_a_mistyped_key_before_creating_anything():
    """A typo in the stack config (``branches`` for ``branch``) must not fall back to the
    default silently: the program sees every key of its namespace, not only declared ones."""
    error, deployment = deploy_error({"githubRepository": REPOSITORY, "branches": "release"})
    assert "branches: unknown key for project" in str(error)
    assert "did you mean branch?" in str(error)
    assert deployment.registrations == []


def test_the_cli_entry_point_declares_the_same_stack(default):
    """`pulumi up` in infra/bootstrap runs its __main__.py as a script, not the package."""
    entry = deploy_entry_point({"githubRepository": REPOSITORY})
    assert sorted((r.type, r.name) for r in entry.registrations) == sorted(
        (r.type, r.name) for r in default.registrations
    )
