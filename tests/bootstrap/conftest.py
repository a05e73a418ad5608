"""Fixtures for the bootstrap stack's tests (the harness is ``bootstrap_harness``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The bootstrap runs under the main stack's mocks (tests/infra/infra_harness.py), extended.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))

from bootstrap_harness import REPOSITORY, deploy
from infra_harness import Deployment


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
