"""Fixtures for the infrastructure tests (the harness itself is ``infra_harness``)."""

from __future__ import annotations

import pytest

from tests.infra.infra_harness import Deployment, deploy


@pytest.fixture(scope="module")
def standard() -> Deployment:
    """The template's default stack: the standard profile on dedicated nodes (stated, so that a
    fork baked with other defaults still tests this profile)."""
    return deploy({"location": "westeurope", "profile": "standard", "gpuPriority": "Dedicated"})


@pytest.fixture(scope="module")
def private() -> Deployment:
    """The private profile with a data scientist group."""
    return deploy(
        {
            "location": "westeurope",
            "profile": "private",
            "dataScientistGroups": ["0b5c3f2e-7d4a-4e8b-9c1d-2e3f4a5b6c7d"],
        }
    )
