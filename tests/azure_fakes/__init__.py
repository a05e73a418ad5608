"""The offline Azure of the tests: one fake Azure ML workspace on one transport.

``FakeWorkspace`` (workspace.py) answers every service the commands talk to (ARM, the Azure ML
dataplane, Blob storage, endpoints' scoring URIs) from behind azure-core's real
``RequestsTransport``: ``MLClient(..., transport=fake.transport())`` and any other azure SDK
client (``transport=``), plus the Blob clients azure-ai-ml creates itself
(``fake.use_for_storage(monkeypatch)``), run their real serialisation and pipeline, and only the
socket is fake. Credentials never sign in (credentials.py); ``fake_pulumi`` stands in for the
Pulumi CLI (pulumi.py); subscription.py has the payloads of ``preflight``'s ARM APIs.
"""

from tests.azure_fakes.base import (
    ACCOUNT,
    CONTAINER,
    LOCATION,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    WS_PATH,
)
from tests.azure_fakes.credentials import TOKEN, EntraIdCredential, StaticCredential
from tests.azure_fakes.http import Call, requests_transport
from tests.azure_fakes.online import LOG_ANALYTICS_ID, right_answers
from tests.azure_fakes.pulumi import fake_pulumi
from tests.azure_fakes.subscription import ml_usage, vm_sku
from tests.azure_fakes.workspace import FakeWorkspace

__all__ = [
    "ACCOUNT",
    "CONTAINER",
    "LOCATION",
    "LOG_ANALYTICS_ID",
    "RESOURCE_GROUP",
    "SUBSCRIPTION",
    "TOKEN",
    "WORKSPACE",
    "WS_PATH",
    "Call",
    "EntraIdCredential",
    "FakeWorkspace",
    "StaticCredential",
    "fake_pulumi",
    "ml_usage",
    "requests_transport",
    "right_answers",
    "vm_sku",
]
