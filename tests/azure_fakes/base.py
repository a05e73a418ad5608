"""The core of the offline workspace: its identity, the request log, the router every request
goes through, and ARM's resource store (what the concern modules build on).

Routes are ``Route(method, host, pattern, handler)``: ``host`` is one of the hosts the fake
serves (``ARM``, ``DATAPLANE``, ``BLOB``, ``INFERENCE``), ``pattern`` must match the whole URL
path (``{ws}`` stands for the workspace's ARM path; case-insensitive, like ARM), and
``handler(fake, call, match)`` returns an ``Answer``, or None to leave the request to the next
route. Each class of the workspace lists its routes in ``ROUTES``; the store's generic GET/PUT
come last, so a resource kind with no route of its own is stored as sent and read back.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from requests.adapters import BaseAdapter

from tests.azure_fakes.http import Answer, Call, error, requests_transport, respond

SUBSCRIPTION = "5d3c1b2a-0f9e-4d8c-b7a6-112233445566"
RESOURCE_GROUP = "rg-mnist-dev"
WORKSPACE = "mlw-mnist-dev"
LOCATION = "swedencentral"
RG_PATH = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
WS_PATH = f"{RG_PATH}/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
ACCOUNT = "stmnistdev"  # the workspace's storage account
CONTAINER = "azureml-blobstore-0000"  # its default datastore's container

# The hosts the fake answers for.
ARM = "management.azure.com"
DATAPLANE = f"{LOCATION}.api.azureml.ms"  # discovery and run history
BLOB = ".blob.core.windows.net"  # any storage account
INFERENCE = f".{LOCATION}.inference.ml.azure.com"  # endpoints' scoring URIs: NAME{INFERENCE}

Handler = Callable[[Any, Call, re.Match[str]], Answer | None]


@dataclass(frozen=True)
class Route:
    method: str
    host: str
    pattern: str
    handler: Handler


@dataclass
class _Canned:
    method: str
    pattern: re.Pattern[str]
    answer: Answer


class _Adapter(BaseAdapter):
    def __init__(self, fake: Workspace) -> None:
        super().__init__()
        self.fake = fake

    def send(self, request: Any, **kwargs: Any) -> Any:
        return respond(request, self.fake.handle(Call.of(request)))

    def close(self) -> None:
        pass


def _host_of(host: str) -> str | None:
    if host in (ARM, DATAPLANE):
        return host
    for suffix in (BLOB, INFERENCE):
        if host.endswith(suffix):
            return suffix
    return None


class Workspace:
    """The routing and the ARM store; ``FakeWorkspace`` adds the services' own behaviour."""

    ROUTES: tuple[Route, ...] = ()

    def __init__(self, computes: tuple[str, ...] = ("cpu-cluster", "gpu-cluster")) -> None:
        self.subscription, self.resource_group, self.workspace = (
            SUBSCRIPTION,
            RESOURCE_GROUP,
            WORKSPACE,
        )
        self.ws = WS_PATH
        self.requests: list[Call] = []
        self.arm: dict[str, dict[str, Any]] = {}  # ARM path -> resource as stored
        self.canned: list[_Canned] = []
        self.interrupts: list[tuple[str, re.Pattern[str]]] = []
        self._routes = [
            (route, re.compile(route.pattern.replace("{ws}", re.escape(WS_PATH)), re.IGNORECASE))
            for cls in type(self).__mro__
            for route in vars(cls).get("ROUTES", ())
        ]
        self.arm[WS_PATH] = {
            "location": LOCATION,
            "properties": {
                "discoveryUrl": f"https://{DATAPLANE}/discovery",
                "workspaceId": "00000000-0000-0000-0000-00000000feed",
                "mlFlowTrackingUri": f"azureml://{DATAPLANE}/mlflow/v1.0{WS_PATH}",
            },
        }
        self.arm[f"{WS_PATH}/datastores/workspaceblobstore"] = {
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": ACCOUNT,
                "containerName": CONTAINER,
                "endpoint": "core.windows.net",
                "protocol": "https",
                "isDefault": True,
                "credentials": {"credentialsType": "AccountKey"},
            }
        }
        for name in computes:
            self.arm[f"{WS_PATH}/computes/{name}"] = {
                "location": LOCATION,
                "properties": {
                    "computeType": "AmlCompute",
                    "provisioningState": "Succeeded",
                    "properties": {"vmSize": "Standard_NC4as_T4_v3"},
                },
            }

    # ------------------------------------------------------------------ the transport

    def transport(self) -> Any:
        """azure-core's ``RequestsTransport``, every request answered by this fake."""
        return requests_transport(_Adapter(self))

    def ml_client(self, credential: Any = None) -> Any:
        """An MLClient on the fake workspace, every request through this fake's transport."""
        from azure.ai.ml import MLClient

        from tests.azure_fakes.credentials import StaticCredential

        return MLClient(
            credential or StaticCredential(),
            SUBSCRIPTION,
            RESOURCE_GROUP,
            WORKSPACE,
            transport=self.transport(),
            enable_telemetry=False,
            show_progress=False,
        )

    def use_for_storage(self, monkeypatch: Any) -> None:
        """Route the Blob storage clients azure-ai-ml creates (no transport argument) here."""
        import azure.storage.blob._shared.base_client as base_client

        monkeypatch.setattr(base_client, "RequestsTransport", lambda **kwargs: self.transport())

    # ------------------------------------------------------------------ test helpers

    def answer(self, method: str, path_pattern: str, status: int, body: Any) -> None:
        """Answer requests whose method and path match (``re.search``) with ``body``."""
        self.canned.append(_Canned(method, re.compile(path_pattern), Answer(status, body)))

    def fail(self, method: str, path_pattern: str, status: int, code: str, message: str) -> None:
        """Answer requests whose method and path match with this service error."""
        self.canned.append(_Canned(method, re.compile(path_pattern), error(status, code, message)))

    def interrupt(self, method: str, path_pattern: str) -> None:
        """Raise KeyboardInterrupt in the caller on a matching request (Ctrl-C while waiting)."""
        self.interrupts.append((method, re.compile(path_pattern)))

    def calls(self, method: str | None = None, path_pattern: str = "") -> list[Call]:
        """The requests with ``method`` (any: None) whose path matches (``re.search``)."""
        pattern = re.compile(path_pattern)
        return [
            c
            for c in self.requests
            if (method is None or c.method == method) and pattern.search(c.path)
        ]

    def arm_calls(self, method: str | None = None, path_pattern: str = "") -> list[Call]:
        """``calls`` to ARM (management.azure.com) only."""
        return [c for c in self.calls(method, path_pattern) if c.host == ARM]

    def add_asset(self, kind: str, name: str, version: str, properties: dict[str, Any]) -> None:
        """Seed ``environments``/``data``/``models`` NAME:VERSION as if registered before."""
        self.arm[f"{WS_PATH}/{kind}/{name}/versions/{version}"] = {"properties": properties}

    def resource(self, path: str) -> dict[str, Any]:
        """The stored resource at ``path`` as ARM returns it (``id`` and ``name`` filled in)."""
        resource = copy.deepcopy(self.arm[path])
        resource.setdefault("properties", {})
        resource["id"], resource["name"] = path, path.rsplit("/", 1)[1]
        return resource

    # ------------------------------------------------------------------ routing

    def handle(self, call: Call) -> Answer:
        self.requests.append(call)
        if any(m == call.method and p.search(call.path) for m, p in self.interrupts):
            raise KeyboardInterrupt
        for canned in self.canned:
            if canned.method == call.method and canned.pattern.search(call.path):
                return canned.answer
        host = _host_of(call.host)
        for route, pattern in self._routes:
            if route.host != host or route.method not in (call.method, "*"):
                continue
            match = pattern.fullmatch(call.path)
            if match and (answer := route.handler(self, call, match)) is not None:
                return answer
        if host is None:
            return error(404, "NoRoute", f"the fake has no host {call.host}")
        return error(404, "NotFound", f"the fake has no route for {call.method} {call.path}")

    # ------------------------------------------------------------------ the ARM store

    def _get(self, call: Call, match: re.Match[str]) -> Answer | None:
        path = call.path
        if path in self.arm:
            return Answer(200, self.resource(path))
        children = [k for k in self.arm if k.rsplit("/", 1)[0] == path]
        if path.endswith("/versions"):
            versions = sorted(children, key=lambda k: int(k.rsplit("/", 1)[1]), reverse=True)
            return Answer(200, {"value": [self.resource(k) for k in versions]})
        if children:
            return Answer(200, {"value": [self.resource(k) for k in sorted(children)]})
        versions = [int(k.rsplit("/", 1)[1]) for k in self.arm if k.startswith(path + "/versions/")]
        if versions:  # an asset's container: what version comes next
            latest = str(max(versions))
            properties = {"latestVersion": latest, "nextVersion": str(max(versions) + 1)}
            return Answer(
                200, {"id": path, "name": path.rsplit("/", 1)[1], "properties": properties}
            )
        return error(404, "NotFound", f"{path.rsplit('/', 1)[1]} was not found ({path})")

    def _put(self, call: Call, match: re.Match[str]) -> Answer | None:
        self.arm[call.path] = call.json()
        return Answer(200, self.resource(call.path))

    def _start_pending_upload(self, call: Call, match: re.Match[str]) -> Answer | None:
        blob = f"https://{ACCOUNT}{BLOB}/{CONTAINER}/LocalUpload/{match['name']}"
        return Answer(
            200,
            {
                "blobReferenceForConsumption": {
                    "blobUri": blob,
                    "credential": {"credentialType": "SAS", "sasUri": f"{blob}?sv=x&sig=x"},
                },
                "pendingUploadId": "upload-1",
                "pendingUploadType": "TemporaryBlobReference",
            },
        )

    def _list_secrets(self, call: Call, match: re.Match[str]) -> Answer | None:
        return Answer(
            200, {"secretsType": "AccountKey", "key": base64.b64encode(b"k" * 32).decode()}
        )


Workspace.ROUTES = (  # last in every workspace's route list (its class comes last in the MRO)
    Route(
        "POST",
        ARM,
        r"{ws}/codes/(?P<name>[^/]+)/versions/[^/]+/startPendingUpload",
        Workspace._start_pending_upload,
    ),
    Route("POST", ARM, r"{ws}/datastores/[^/]+/listSecrets", Workspace._list_secrets),
    Route("GET", ARM, r"/subscriptions/.+", Workspace._get),
    Route("PUT", ARM, r"/subscriptions/.+", Workspace._put),
)
