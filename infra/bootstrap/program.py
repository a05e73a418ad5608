"""The bootstrap program: what GitHub Actions needs before the main stacks exist.

- ``StateBackend``: a storage account (shared keys off) with one container for the Pulumi state
  (``azblob://``, identity-based), and a Key Vault key as the secrets provider
  (``azurekeyvault://``), so no passphrase is stored anywhere.
- ``CiIdentity``: a user-assigned managed identity, its federated credentials (GitHub's OIDC
  subjects) and its role assignments, each with the reason it is needed.

Federated credentials belong to one identity and every token that matches any of them gets all of
that identity's roles. So the subjects are split by what they may do:

- the *reader* identity (``repo:O/R:pull_request`` and ``repo:O/R:ref:refs/heads/<branch>``):
  previews only. A pull request from anyone runs with it, so it can read but never write.
- one *deploy* identity per environment (``repo:O/R:environment:<env>``): ``pulumi up``, job
  submission and rollouts for that environment only, its roles scoped to that environment's
  resource group. A dev deployment cannot touch prod; prod's subject is only issued to jobs that
  passed the prod environment's required reviewers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random
from pulumi_azure_native import authorization, keyvault, managedidentity, resources, storage

from infra.access import assignment_name
from infra.bootstrap.config import (
    BootstrapConfig,
    ConfigError,
    load_bootstrap_project,
    validate_bootstrap_config,
)
from infra.config import stack_values

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
TOKEN_AUDIENCE = "api://AzureADTokenExchange"
STATE_CONTAINER = "pulumi-state"
SECRETS_KEY = "pulumi-secrets"

# Built-in role definition GUIDs (Azure docs: role-based-access-control/built-in-roles).
ROLE_READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
ROLE_CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
ROLE_RBAC_ADMINISTRATOR = "f58310d9-a9f6-439a-9e8d-f62e7b41a168"
ROLE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ROLE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ROLE_KEY_VAULT_CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"

# `python -m scripts preflight` reads VM SKU availability and Azure ML quota, which Azure only
# exposes at subscription scope: a custom role with exactly these two reads, nothing else.
PREFLIGHT_ACTIONS: tuple[str, ...] = (
    "Microsoft.Compute/skus/read",
    "Microsoft.MachineLearningServices/locations/usages/read",
)

# Stack outputs: what the README tells the user to store as GitHub variables.
OUTPUT_KEYS: tuple[str, ...] = (
    "tenantId",
    "subscriptionId",
    "stateUrl",
    "secretsProviderUrl",
    "readerClientId",
    "deployClientIds",
    "resourceGroupIds",
)


def subjects(repository: str, *, branch: str | None = None, environment: str | None = None) -> str:
    """The ``sub`` claim of GitHub's OIDC token for a pull request, a branch or an environment."""
    if environment is not None:
        return f"repo:{repository}:environment:{environment}"
    if branch is not None:
        return f"repo:{repository}:ref:refs/heads/{branch}"
    return f"repo:{repository}:pull_request"


def delegation_condition(roles: Sequence[str]) -> str:
    """ABAC condition on Role Based Access Control Administrator: it may create and delete
    assignments of ``roles`` only (never Owner, never itself more)."""
    allowed = ", ".join(roles)
    return (
        "((!(ActionMatches{'Microsoft.Authorization/roleAssignments/write'})) OR "
        "(@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] "
        f"ForAnyOfAnyValues:GuidEquals {{{allowed}}})) AND "
        "((!(ActionMatches{'Microsoft.Authorization/roleAssignments/delete'})) OR "
        "(@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] "
        f"ForAnyOfAnyValues:GuidEquals {{{allowed}}}))"
    )


@dataclass(frozen=True)
class Grant:
    """One role assignment: where, which role, and why the identity needs it."""

    key: str
    scope: pulumi.Input[str]
    role: pulumi.Input[str]  # a built-in GUID, or a custom role's full ID
    why: str
    condition: str | None = None


def _role_id(subscription_id: pulumi.Input[str], role: pulumi.Input[str]) -> pulumi.Output[str]:
    def full(sub: str, value: str) -> str:
        if value.startswith("/"):
            return value
        return f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{value}"

    return pulumi.Output.all(subscription_id, role).apply(lambda v: full(v[0], v[1]))


# ---------------------------------------------------------------------------- state backend


@dataclass
class StateBackendArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    account_name: pulumi.Input[str]
    vault_name: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    tags: Mapping[str, str]


class StateBackend(pulumi.ComponentResource):
    """Storage for the Pulumi state (Entra ID only, versioned) and the secrets-provider key."""

    def __init__(
        self, name: str, args: StateBackendArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:azure:StateBackend", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.account = storage.StorageAccount(
            f"{name}-account",
            account_name=args.account_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind="StorageV2",
            sku=storage.SkuArgs(name="Standard_LRS"),  # versioned and soft-deleted, below
            allow_shared_key_access=False,  # Entra ID only: no account key can read the state
            default_to_o_auth_authentication=True,
            allow_blob_public_access=False,
            enable_https_traffic_only=True,
            minimum_tls_version="TLS1_2",
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, protect=True),
        )
        # Every state write is a new blob version, kept with deleted blobs for 30 days: a bad
        # `pulumi up` or a deleted stack can be recovered.
        self.blob_service = storage.BlobServiceProperties(
            f"{name}-blob-service",
            account_name=self.account.name,
            resource_group_name=args.resource_group_name,
            blob_services_name="default",
            is_versioning_enabled=True,
            delete_retention_policy=storage.DeleteRetentionPolicyArgs(enabled=True, days=30),
            container_delete_retention_policy=storage.DeleteRetentionPolicyArgs(
                enabled=True, days=30
            ),
            opts=child,
        )
        self.container = storage.BlobContainer(
            f"{name}-container",
            container_name=STATE_CONTAINER,
            account_name=self.account.name,
            resource_group_name=args.resource_group_name,
            public_access="None",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.blob_service]),
        )
        self.vault = keyvault.Vault(
            f"{name}-vault",
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=args.tenant_id,
                sku=keyvault.SkuArgs(family="A", name="standard"),
                enable_rbac_authorization=True,  # access by role assignment, no access policies
                enable_soft_delete=True,
                soft_delete_retention_in_days=90,
                enable_purge_protection=True,  # the key that decrypts every stack's secrets
            ),
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, protect=True),
        )
        self.key = keyvault.Key(
            f"{name}-key",
            key_name=SECRETS_KEY,
            vault_name=self.vault.name,
            resource_group_name=args.resource_group_name,
            properties=keyvault.KeyPropertiesArgs(
                kty="RSA", key_size=3072, key_ops=["encrypt", "decrypt", "wrapKey", "unwrapKey"]
            ),
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, protect=True),
        )
        self.state_url = pulumi.Output.concat(
            "azblob://", self.container.name, "?storage_account=", self.account.name
        )
        self.secrets_provider_url = pulumi.Output.concat(
            "azurekeyvault://", self.vault.name, ".vault.azure.net/keys/", self.key.name
        )
        self.register_outputs(
            {"stateUrl": self.state_url, "secretsProviderUrl": self.secrets_provider_url}
        )


# ---------------------------------------------------------------------------- identities


@dataclass
class CiIdentityArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    identity_name: str
    subjects: Sequence[str]
    grants: Sequence[Grant]
    subscription_id: pulumi.Input[str]
    seed: pulumi.Input[str]
    tags: Mapping[str, str]


class CiIdentity(pulumi.ComponentResource):
    """A managed identity GitHub Actions signs in as (OIDC), and exactly its role assignments."""

    def __init__(
        self, name: str, args: CiIdentityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:azure:CiIdentity", name, None, opts)
        self.identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity",
            resource_name_=args.identity_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Azure refuses concurrent writes of federated credentials on one identity: chain them.
        self.credentials: list[managedidentity.FederatedIdentityCredential] = []
        for subject in args.subjects:
            label = subject.split(":", 2)[2].replace(":", "-").replace("/", "-")
            previous = self.credentials[-1:]
            self.credentials.append(
                managedidentity.FederatedIdentityCredential(
                    f"{name}-{label}",
                    federated_identity_credential_resource_name=f"github-{label}"[:120],
                    resource_name_=self.identity.name,
                    resource_group_name=args.resource_group_name,
                    issuer=GITHUB_ISSUER,
                    subject=subject,
                    audiences=[TOKEN_AUDIENCE],
                    opts=pulumi.ResourceOptions(parent=self, depends_on=previous),
                )
            )
        self.assignments = [self._assign(name, args, grant) for grant in args.grants]
        self.register_outputs(
            {
                "clientId": self.identity.client_id,
                "principalId": self.identity.principal_id,
                "subjects": list(args.subjects),
            }
        )

    def _assign(
        self, name: str, args: CiIdentityArgs, grant: Grant
    ) -> authorization.RoleAssignment:
        return authorization.RoleAssignment(
            f"{name}-{grant.key}",
            role_assignment_name=pulumi.Output.from_input(args.seed).apply(
                lambda seed: assignment_name(seed, f"{name}/{grant.key}")
            ),
            scope=grant.scope,
            role_definition_id=_role_id(args.subscription_id, grant.role),
            principal_id=self.identity.principal_id,
            # A just-created identity may not be in every directory replica yet.
            principal_type="ServicePrincipal",
            description=grant.why,
            condition=grant.condition,
            condition_version="2.0" if grant.condition else None,
            opts=pulumi.ResourceOptions(parent=self),
        )


# ---------------------------------------------------------------------------- the program


def read_config() -> BootstrapConfig:
    """The stack's config, every key of the project's namespace (so a mistyped one is refused,
    not ignored), with ``Pulumi.yaml`` defaults, validated."""
    project = load_bootstrap_project()
    return validate_bootstrap_config(stack_values(project), project)


def _environment_scopes(
    cfg: BootstrapConfig, subscription: pulumi.Output[str]
) -> tuple[dict[str, pulumi.Input[str]], dict[str, resources.ResourceGroup]]:
    """Where each environment's roles apply: its resource group (created here, so that roles can
    be assigned before the main stack exists), or the subscription when the config says so."""
    if cfg.subscription_scope:
        scope = pulumi.Output.concat("/subscriptions/", subscription)
        return {env: scope for env in cfg.environments}, {}
    groups = {
        env: resources.ResourceGroup(
            f"rg-{env}",
            resource_group_name=cfg.environment_group(env),
            location=cfg.location,
            tags={**cfg.tags, "environment": env},
            opts=pulumi.ResourceOptions(protect=True),
        )
        for env in cfg.environments
    }
    return {env: group.id for env, group in groups.items()}, groups


def build(cfg: BootstrapConfig) -> dict[str, pulumi.Input[object]]:
    """Declare every resource; return the stack outputs (``OUTPUT_KEYS``)."""
    client = authorization.get_client_config_output()
    suffix = random.RandomString(
        "name-suffix", length=6, special=False, upper=False, numeric=True, lower=True
    )
    group = resources.ResourceGroup(
        "resource-group",
        resource_group_name=cfg.resource_group,
        location=cfg.location,
        tags=cfg.tags,
    )
    backend = StateBackend(
        "state",
        StateBackendArgs(
            resource_group_name=group.name,
            location=cfg.location,
            account_name=suffix.result.apply(lambda s: f"st{cfg.project}state{s}"[:24]),
            vault_name=suffix.result.apply(lambda s: f"kv{cfg.project}ci{s}"[:24]),
            tenant_id=client.tenant_id,
            tags=cfg.tags,
        ),
    )
    subscription = client.subscription_id
    scopes, groups = _environment_scopes(cfg, subscription)
    preflight_role = authorization.RoleDefinition(
        "preflight-reader",
        role_definition_id=suffix.result.apply(lambda s: assignment_name(s, "preflight-role")),
        role_name=f"{cfg.project} CI preflight reader",
        description="Read VM SKU availability and Azure ML quota (python -m scripts preflight)",
        scope=pulumi.Output.concat("/subscriptions/", subscription),
        assignable_scopes=[pulumi.Output.concat("/subscriptions/", subscription)],
        permissions=[authorization.PermissionArgs(actions=list(PREFLIGHT_ACTIONS))],
    )
    state_scope = backend.container.id
    key_scope = backend.key.id

    def identity(name: str, identity_name: str, subjects_: list[str], grants: list[Grant]):
        return CiIdentity(
            name,
            CiIdentityArgs(
                resource_group_name=group.name,
                location=cfg.location,
                identity_name=identity_name,
                subjects=subjects_,
                grants=grants,
                subscription_id=subscription,
                seed=suffix.result,
                tags=cfg.tags,
            ),
        )

    reader_scopes = (
        {"subscription": scopes[cfg.environments[0]]} if cfg.subscription_scope else scopes
    )
    reader = identity(
        "reader",
        f"id-{cfg.project}-ci-reader",
        [subjects(cfg.github_repository), subjects(cfg.github_repository, branch=cfg.branch)],
        [
            *(
                Grant(
                    f"reader-{where}",
                    scope,
                    ROLE_READER,
                    "pulumi preview reads the deployed resources to compute the diff",
                )
                for where, scope in reader_scopes.items()
            ),
            Grant(
                "state-read",
                state_scope,
                ROLE_BLOB_DATA_READER,
                "pulumi preview reads the stacks' last checkpoints; it cannot write them",
            ),
            Grant(
                "secrets-crypto",
                key_scope,
                ROLE_KEY_VAULT_CRYPTO_USER,
                "pulumi decrypts each stack's data key (Pulumi.<stack>.yaml) to read its secrets",
            ),
        ],
    )
    deployers = {
        env: identity(
            f"deploy-{env}",
            f"id-{cfg.project}-{env}-deploy",
            [subjects(cfg.github_repository, environment=env)],
            [
                Grant(
                    "contributor",
                    scopes[env],
                    ROLE_CONTRIBUTOR,
                    "pulumi up creates the platform; train and deploy submit jobs, register "
                    "models and roll out endpoints (Azure ML control plane)",
                ),
                Grant(
                    "role-delegation",
                    scopes[env],
                    ROLE_RBAC_ADMINISTRATOR,
                    "pulumi up assigns the compute identity and data scientists their roles; "
                    "the condition limits it to the delegatedRoles",
                    delegation_condition(cfg.delegated_roles),
                ),
                Grant(
                    "blob-data",
                    scopes[env],
                    ROLE_BLOB_DATA_CONTRIBUTOR,
                    "submit uploads the job's code and download reads its outputs in the "
                    "workspace storage, which has shared keys off",
                ),
                Grant(
                    "state-write",
                    state_scope,
                    ROLE_BLOB_DATA_CONTRIBUTOR,
                    "pulumi up writes the stack's checkpoint",
                ),
                Grant(
                    "secrets-crypto",
                    key_scope,
                    ROLE_KEY_VAULT_CRYPTO_USER,
                    "pulumi encrypts and decrypts the stack's secrets with the key",
                ),
                Grant(
                    "preflight",
                    pulumi.Output.concat("/subscriptions/", subscription),
                    preflight_role.id,
                    "preflight reads VM SKUs and Azure ML quota, which exist only per subscription",
                ),
            ],
        )
        for env in cfg.environments
    }
    # Whoever runs the bootstrap creates the main stacks next (`pulumi stack init` with this
    # backend and key): state and key access for them, nothing more.
    for key, scope, role, why in (
        ("operator-state", state_scope, ROLE_BLOB_DATA_CONTRIBUTOR, "create the main stacks"),
        ("operator-crypto", key_scope, ROLE_KEY_VAULT_CRYPTO_USER, "encrypt the stacks' keys"),
    ):
        authorization.RoleAssignment(
            key,
            role_assignment_name=suffix.result.apply(lambda s, k=key: assignment_name(s, k)),
            scope=scope,
            role_definition_id=_role_id(subscription, role),
            principal_id=client.object_id,
            description=f"The operator who ran the bootstrap: {why}",
        )
    return {
        "tenantId": client.tenant_id,
        "subscriptionId": subscription,
        "stateUrl": backend.state_url,
        "secretsProviderUrl": backend.secrets_provider_url,
        "readerClientId": reader.identity.client_id,
        "deployClientIds": {env: d.identity.client_id for env, d in deployers.items()},
        "resourceGroupIds": {env: g.id for env, g in groups.items()},
    }


def main() -> dict[str, pulumi.Input[object]]:
    """Entry point of ``pulumi up`` in infra/bootstrap: validate first, then declare."""
    try:
        cfg = read_config()
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
    outputs = build(cfg)
    for key in OUTPUT_KEYS:
        pulumi.export(key, outputs[key])
    return outputs
