"""The bootstrap stack's configuration: declared in ``infra/bootstrap/Pulumi.yaml``, validated here.

Same rules as the main stack (``infra.config``): every key is declared with a description and a
default, a missing value means the default, and ``validate_bootstrap_config`` names every wrong
key with what is allowed before anything is created.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.catalog import AZURE_ML_REGIONS
from infra.config import (  # the main stack's rules, shared
    ENVIRONMENT_NAME,
    GUID,
    PROJECT_NAME,
    ConfigError,
    ProjectFile,
    Reader,
    load_project,
    resource_names,
    unknown_key_problems,
)

PROJECT_FILE = Path(__file__).resolve().parent / "Pulumi.yaml"

# Roles a deploy identity may never hand out, whatever the config says: each one would let it
# grant itself (or anyone) everything. Role definition GUIDs of Azure's built-in roles.
PRIVILEGED_ROLES: dict[str, str] = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "f58310d9-a9f6-439a-9e8d-f62e7b41a168": "Role Based Access Control Administrator",
}

_REPOSITORY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
_BRANCH = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


@dataclass(frozen=True)
class BootstrapConfig:
    """The validated configuration of the bootstrap stack."""

    github_repository: str
    branch: str
    project: str
    environments: tuple[str, ...]
    location: str
    subscription_scope: bool
    delegated_roles: tuple[str, ...]

    @property
    def tags(self) -> dict[str, str]:
        return {"project": self.project, "environment": "cicd", "managed-by": "pulumi-bootstrap"}

    @property
    def resource_group(self) -> str:
        """The resource group of the state account, key vault and CI identities."""
        return f"rg-{self.project}-cicd"

    def environment_group(self, environment: str) -> str:
        """The main stack's resource group for ``environment`` (its own naming rule)."""
        return resource_names(self.project, environment, "").resource_group


def load_bootstrap_project(path: Path = PROJECT_FILE) -> ProjectFile:
    return load_project(path)


def validate_bootstrap_config(
    values: Mapping[str, Any], project: ProjectFile | None = None
) -> BootstrapConfig:
    """Raw config values (key -> value; missing means the declared default) as a
    ``BootstrapConfig``, or ``ConfigError`` naming every wrong key and its allowed values."""
    project = project or load_bootstrap_project()
    read = Reader(values, project)
    read.problems += unknown_key_problems(list(values), project)

    repository = read.string("githubRepository")
    if not _REPOSITORY.match(repository):
        read.problems.append(
            f"githubRepository: {repository!r} is not OWNER/REPO: set the repository that runs "
            "the workflows with `pulumi config set githubRepository OWNER/REPO`"
        )
    branch = read.string("branch")
    if not _BRANCH.match(branch) or ".." in branch or branch.startswith(("/", "refs/")):
        read.problems.append(
            f"branch: {branch!r} is not a branch name (e.g. main; without refs/heads/)"
        )
    name = read.string("project")
    if not PROJECT_NAME.match(name):
        read.problems.append(
            f"project: {name!r} must be the main stack's project: 2-10 lowercase letters or "
            "digits starting with a letter"
        )
    environments = read.strings("environments")
    if not environments:
        read.problems.append("environments: list at least one environment, e.g. [dev, prod]")
    for environment in environments:
        if not ENVIRONMENT_NAME.match(environment):
            read.problems.append(
                f"environments: {environment!r} must be 1-6 lowercase letters or digits "
                "(the main stack's `environment`)"
            )
    duplicates = sorted({e for e in environments if environments.count(e) > 1})
    if duplicates:
        read.problems.append(f"environments: {', '.join(duplicates)} listed more than once")
    location = read.string("location").lower().replace(" ", "")
    if location not in AZURE_ML_REGIONS:
        read.problems.append(
            f"location: {location!r} is not an Azure region with Azure Machine Learning; "
            f"allowed: {', '.join(AZURE_ML_REGIONS)}"
        )
    subscription_scope = read.boolean("subscriptionScope")
    roles = [role.lower() for role in read.strings("delegatedRoles")]
    for role in roles:
        if not GUID.match(role):
            read.problems.append(
                f"delegatedRoles: {role!r} is not a role definition GUID "
                "(`az role definition list --name 'NAME' --query [].name -o tsv`)"
            )
        elif role in PRIVILEGED_ROLES:
            read.problems.append(
                f"delegatedRoles: {role} is {PRIVILEGED_ROLES[role]}, which would let the deploy "
                "identity grant itself anything; allowed: roles without authorization rights"
            )

    if read.problems:
        raise ConfigError(read.problems)
    return BootstrapConfig(
        github_repository=repository,
        branch=branch,
        project=name,
        environments=tuple(environments),
        location=location,
        subscription_scope=subscription_scope,
        delegated_roles=tuple(dict.fromkeys(roles)),
    )
