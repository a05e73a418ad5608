"""Fixtures for the bootstrap stack's tests (the harness is ``bootstrap_harness``)."""

from __future__ import annotations

import pytest

from tests.infra.bootstrap.bootstrap_harness import REPOSITORY, deploy
from tests.infra.infra_harness import Deployment


@pytest.fixture(scope="module")
def default() -> Deployment:
    """Nothing configured but the repository: dev and prod, roles on their resource groups."""
    return deploy({"githubRepository": REPOSITORY})


@pytest.fixture(scope="module")
def subscription_wide() -> Deployment:
    """Three environments, roles on the subscription (subscriptionScope: true)."""
    return deploy(
        {
            "githubRepository": REPOSITORY,
            "environments": ["dev", "test", "prod"],
            "subscriptionScope": True,
            "branch": "release",
        }
    )
