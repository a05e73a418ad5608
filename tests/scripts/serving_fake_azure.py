"""An offline Azure ML workspace for the rollout tests: a ``requests`` adapter with state.

``FakeAzureML`` sits where the socket would be: it is mounted on the session of azure-core's
real ``RequestsTransport`` (handed to ``MLClient(transport=...)``), so every SDK call runs
through the SDK's own serialisation, pipeline policies, polling and deserialisation. The blob
storage client that uploads the scoring code builds its own session; the ``install`` helper
routes plain ``HTTPAdapter`` traffic here too, so uploads are recorded as well.

It keeps endpoints, deployments, environment and code versions, uploaded blobs and the Azure
Monitor settings the rollout adds (diagnostic settings on the endpoint and its deployments, the
endpoint's autoscale setting) in dictionaries, answers like the ARM API (long-running
operations complete at once), and
forwards scoring requests to a ``scorer`` callback, which the tests point at the real local
``azmlinfsrv``. ``fail`` makes chosen requests fail as the service would.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import HTTPAdapter

from tests.azure_fakes import (
    TOKEN,
    Call,
    StaticCredential,
    error_response,
    json_response,
    requests_transport,
)

SUBSCRIPTION = "5d3c1b2a-0f9e-4d8c-b7a6-112233445566"
RESOURCE_GROUP = "rg-mnist-dev"
WORKSPACE = "mlw-mnist-dev"
LOCATION = "swedencentral"
WS_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
STORAGE_HOST = "stmnistdev.blob.core.windows.net"
RG_PATH = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
LOG_ANALYTICS_ID = (
    f"{RG_PATH}/providers/Microsoft.OperationalInsights/workspaces/log-mnist-dev-a1b2c3"
)
_AUTOSCALE = re.compile(
    rf"{RG_PATH}/providers/microsoft\.insights/autoscalesettings/([^/]+)", re.IGNORECASE
)
_DIAGNOSTIC = re.compile(
    r"/?(/subscriptions/.+)/providers/microsoft\.insights/diagnosticSettings/([^/]+)",
    re.IGNORECASE,
)

Scorer = Callable[[str | None, bytes], tuple[int, bytes]]


@functools.cache
def sample_digits() -> Any:
    """The digits the rollout's smoke test sends (serving/sample-digits.json)."""
    from scripts.endpoints import rollout

    return rollout.load_sample_digits()


def right_answers(deployment: str | None, body: bytes) -> tuple[int, bytes]:
    """A deployment that classifies the sample digits correctly (in score.py's format)."""
    digits = sample_digits()
    request = json.loads(body)
    assert request["data"] == digits.data
    probabilities = [[0.91 if d == label else 0.01 for d in range(10)] for label in digits.labels]
    return 200, json.dumps({"predictions": digits.labels, "probabilities": probabilities}).encode()


@dataclass
class FakeAzureML:
    scorer: Scorer | None = None
    calls: list[Call] = field(default_factory=list)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    environments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    codes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # data assets: what the SDK registers for a deployment's data collector, the reference data
    data: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    models: dict[str, list[str]] = field(default_factory=lambda: {"tf-mnist": ["1", "2"]})
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)
    # resource ID -> diagnostic setting body; autoscale setting name -> body
    diagnostic_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    autoscale_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (method, path regex) -> (status, code, message), answered instead of the normal reply
    failures: dict[tuple[str, str], tuple[int, str, str]] = field(default_factory=dict)

    # ----------------------------------------------------------------- plumbing

    def adapter(self) -> HTTPAdapter:
        fake = self

        class Adapter(HTTPAdapter):
            def send(self, request, **kwargs):  # type: ignore[override]
                return fake.handle(request)

        return Adapter()

    def transport(self) -> RequestsTransport:
        return requests_transport(self.adapter())

    def ml_client(self) -> Any:
        """An MLClient on the fake workspace, every request through this fake's transport."""
        from azure.ai.ml import MLClient

        return MLClient(
            StaticCredential(),
            SUBSCRIPTION,
            RESOURCE_GROUP,
            WORKSPACE,
            transport=self.transport(),
            enable_telemetry=False,
            show_progress=False,
        )

    def install(self, monkeypatch: Any) -> None:
        """Route every ``requests`` call in this process here (the blob uploader's own too)."""
        fake = self
        monkeypatch.setattr(HTTPAdapter, "send", lambda self, request, **kw: fake.handle(request))

    def fail(self, method: str, path_pattern: str, status: int, code: str, message: str) -> None:
        self.failures[(method, path_pattern)] = (status, code, message)

    def seed_endpoint(self, name: str, traffic: dict[str, int], deployments: list[str]) -> None:
        self.endpoints[name] = self._endpoint_resource(name, {"authMode": "AADToken"}, traffic)
        for deployment in deployments:
            self.deployments[(name, deployment)] = self._deployment_resource(
                name, deployment, {"model": f"{WS_PATH}/models/tf-mnist/versions/1"}
            )

    def seed_environment(self, name: str, version: str, image: str, conda_file: str) -> None:
        """An environment version registered earlier (``conda_file``: its YAML text)."""
        self.environments[(name, version)] = {
            "id": f"{WS_PATH}/environments/{name}/versions/{version}",
            "name": version,
            "properties": {"image": image, "condaFile": conda_file},
        }

    # ----------------------------------------------------------------- queries for tests

    def arm_calls(self, method: str | None = None, contains: str = "") -> list[Call]:
        return [
            c
            for c in self.calls
            if c.url.startswith("https://management.azure.com")
            and (method is None or c.method == method)
            and contains in c.path
        ]

    def endpoint_puts(self, endpoint: str) -> list[Call]:
        """Every PUT of the endpoint itself (creation and traffic updates), in order."""
        return [
            c
            for c in self.arm_calls("PUT", f"/onlineEndpoints/{endpoint}")
            if c.path.endswith(f"/onlineEndpoints/{endpoint}")
        ]

    def traffic_updates(self, endpoint: str) -> list[dict[str, int]]:
        """The traffic of every endpoint PUT, in order."""
        return [c.json()["properties"].get("traffic") or {} for c in self.endpoint_puts(endpoint)]

    def scoring_calls(self) -> list[Call]:
        return [c for c in self.calls if ".inference.ml.azure.com" in c.url]

    # ----------------------------------------------------------------- resources

    @staticmethod
    def _endpoint_resource(
        name: str, properties: dict[str, Any], traffic: dict[str, int], tags: Any = None
    ):
        return {
            "tags": tags or {},
            "id": f"{WS_PATH}/onlineEndpoints/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "location": LOCATION,
            "identity": {"type": "SystemAssigned"},
            "properties": {
                **properties,
                "traffic": traffic,
                "provisioningState": "Succeeded",
                "scoringUri": f"https://{name}.{LOCATION}.inference.ml.azure.com/score",
                "swaggerUri": f"https://{name}.{LOCATION}.inference.ml.azure.com/swagger.json",
            },
        }

    @staticmethod
    def _deployment_resource(endpoint: str, name: str, properties: dict[str, Any]):
        return {
            "id": f"{WS_PATH}/onlineEndpoints/{endpoint}/deployments/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            "location": LOCATION,
            "sku": {"name": "Default", "capacity": 1},
            "properties": {
                "endpointComputeType": "Managed",
                "scaleSettings": {"scaleType": "Default"},  # what the service fills in
                **properties,
                "provisioningState": "Succeeded",
            },
        }

    @staticmethod
    def _model_resource(name: str, version: str) -> dict[str, Any]:
        """A registered MLflow model, as the service describes one."""
        return {
            "id": f"{WS_PATH}/models/{name}/versions/{version}",
            "name": version,
            "properties": {
                "modelType": "mlflow_model",
                "modelUri": f"azureml://jobs/run-{version}/outputs/artifacts/paths/outputs/model/",
                "flavors": {
                    "python_function": {"data": {"loader_module": "mlflow.tensorflow"}},
                    "tensorflow": {"data": {"model_type": "keras"}},
                },
            },
        }

    # ----------------------------------------------------------------- routing

    def handle(self, request: requests.PreparedRequest) -> requests.Response:
        parts = urllib.parse.urlsplit(request.url or "")
        call = Call.of(request)
        self.calls.append(call)
        for (method, pattern), (status, code, message) in self.failures.items():
            if call.method == method and re.search(pattern, call.path):
                return error_response(request, status, code, message)
        if parts.hostname == "management.azure.com":
            return self._arm(request, call)
        if parts.hostname == STORAGE_HOST:
            return self._blob(request, call)
        if parts.hostname and parts.hostname.endswith(".inference.ml.azure.com"):
            return self._score(request, call)
        return error_response(request, 404, "NoRoute", f"the fake has no host {parts.hostname}")

    def _arm(self, request: requests.PreparedRequest, call: Call) -> requests.Response:
        path = call.path
        if m := _AUTOSCALE.fullmatch(path):
            return self._autoscale(request, call, m.group(1))
        if m := _DIAGNOSTIC.fullmatch(path):
            return self._diagnostic(request, call, m.group(1), m.group(2))
        if not path.startswith(WS_PATH):
            return error_response(request, 404, "NotFound", f"no workspace at {path}")
        rest = path[len(WS_PATH) :]
        method = call.method
        if rest == "":
            return json_response(
                request,
                200,
                {"id": WS_PATH, "name": WORKSPACE, "location": LOCATION, "properties": {}},
            )
        if m := re.fullmatch(r"/onlineEndpoints/([^/]+)", rest):
            return self._endpoint(request, call, m.group(1))
        if m := re.fullmatch(r"/onlineEndpoints/([^/]+)/deployments", rest):
            items = [d for (e, _), d in self.deployments.items() if e == m.group(1)]
            return json_response(request, 200, {"value": items})
        if m := re.fullmatch(r"/onlineEndpoints/([^/]+)/deployments/([^/]+)", rest):
            return self._deployment(request, call, m.group(1), m.group(2))
        if m := re.fullmatch(r"/onlineEndpoints/([^/]+)/deployments/([^/]+)/getLogs", rest):
            return json_response(request, 200, {"content": "init() failed: see above"})
        if m := re.fullmatch(r"/environments/([^/]+)/versions/([^/]+)", rest):
            return self._versioned(request, call, self.environments, "environments", m)
        if rest == "/datastores/workspaceblobstore":
            return json_response(request, 200, self._blobstore())
        if rest == "/datastores/workspaceblobstore/listSecrets" and method == "POST":
            key = base64.b64encode(b"k" * 32).decode()
            return json_response(request, 200, {"secretsType": "AccountKey", "key": key})
        if m := re.fullmatch(r"/schedules/([^/]+)", rest):
            return self._schedule(request, call, m.group(1))
        if m := re.fullmatch(r"/data/([^/]+)/versions/([^/]+)", rest):
            return self._versioned(request, call, self.data, "data", m)
        if m := re.fullmatch(r"/codes/([^/]+)/versions", rest):
            return json_response(request, 200, {"value": []})  # no code with this hash yet
        if m := re.fullmatch(r"/codes/([^/]+)/versions/([^/]+)/startPendingUpload", rest):
            folder = f"LocalUpload/{m.group(1)}"
            return json_response(
                request,
                200,
                {
                    "blobReferenceForConsumption": {
                        "blobUri": f"https://{STORAGE_HOST}/code/{folder}",
                        "credential": {
                            "credentialType": "SAS",
                            "sasUri": f"https://{STORAGE_HOST}/code/{folder}?sv=2024&sig=fake",
                        },
                    },
                    "pendingUploadId": "upload-1",
                    "pendingUploadType": "TemporaryBlobReference",
                },
            )
        if m := re.fullmatch(r"/codes/([^/]+)/versions/([^/]+)", rest):
            return self._versioned(request, call, self.codes, "codes", m)
        if m := re.fullmatch(r"/models/([^/]+)/versions/([^/]+)", rest):
            if m.group(2) in self.models.get(m.group(1), []):
                return json_response(request, 200, self._model_resource(m.group(1), m.group(2)))
            return error_response(
                request, 404, "NotFound", f"model {m.group(1)}:{m.group(2)} not found"
            )
        if m := re.fullmatch(r"/models/([^/]+)/versions", rest):
            versions = self.models.get(m.group(1), [])
            items = [self._model_resource(m.group(1), v) for v in reversed(versions)]
            return json_response(request, 200, {"value": items})
        return error_response(
            request, 404, "NotFound", f"the fake has no route for {method} {rest}"
        )

    def _endpoint(self, request, call: Call, name: str) -> requests.Response:
        if call.method == "GET":
            if name not in self.endpoints:
                return error_response(request, 404, "UserError", f"Endpoint {name} not found.")
            return json_response(request, 200, self.endpoints[name])
        if call.method == "PUT":
            body = call.json()
            properties = dict(body.get("properties", {}))
            traffic = properties.pop("traffic", None) or {}
            unknown = set(traffic) - {d for (e, d) in self.deployments if e == name}
            if unknown:
                return error_response(
                    request, 400, "BadRequest", f"Traffic names unknown deployments {unknown}."
                )
            resource = self._endpoint_resource(name, properties, traffic, body.get("tags"))
            created = name not in self.endpoints
            self.endpoints[name] = resource
            return json_response(request, 201 if created else 200, resource)
        return error_response(request, 405, "MethodNotAllowed", call.method)

    def _deployment(self, request, call: Call, endpoint: str, name: str) -> requests.Response:
        key = (endpoint, name)
        if call.method == "GET":
            if key not in self.deployments:
                return error_response(request, 404, "NotFound", f"Deployment {name} not found.")
            return json_response(request, 200, self.deployments[key])
        if call.method == "PUT":
            properties = call.json().get("properties", {})
            # The service answers with its enum spelling: azure-ai-ml sends "enabled" and reads
            # a collection as on only when it comes back "Enabled".
            for collection in properties.get("dataCollector", {}).get("collections", {}).values():
                mode = collection.get("dataCollectionMode")
                if mode:
                    collection["dataCollectionMode"] = mode.capitalize()
            resource = self._deployment_resource(endpoint, name, properties)
            self.deployments[key] = resource
            return json_response(request, 201, resource)
        if call.method == "DELETE":
            if self.endpoints.get(endpoint, {}).get("properties", {}).get("traffic", {}).get(name):
                return error_response(request, 400, "BadRequest", f"{name} still receives traffic.")
            self.deployments.pop(key, None)
            return json_response(request, 200)
        return error_response(request, 405, "MethodNotAllowed", call.method)

    @staticmethod
    def _blobstore() -> dict[str, Any]:
        """The workspace's default datastore: where local folders are uploaded."""
        return {
            "id": f"{WS_PATH}/datastores/workspaceblobstore",
            "name": "workspaceblobstore",
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": STORAGE_HOST.split(".")[0],
                "containerName": "azureml-blobstore",
                "endpoint": "core.windows.net",
                "protocol": "https",
                "isDefault": True,
                "credentials": {"credentialsType": "AccountKey"},
            },
        }

    def _schedule(self, request, call: Call, name: str) -> requests.Response:
        if call.method == "GET":
            if name not in self.schedules:
                return error_response(request, 404, "NotFound", f"Schedule {name} not found.")
            return json_response(request, 200, self.schedules[name])
        if call.method != "PUT":
            return error_response(request, 405, "MethodNotAllowed", call.method)
        body = call.json()
        resource = {
            "id": f"{WS_PATH}/schedules/{name}",
            "name": name,
            "properties": {**body["properties"], "provisioningState": "Succeeded"},
        }
        created = name not in self.schedules
        self.schedules[name] = resource
        return json_response(request, 201 if created else 200, resource)

    def _resource_exists(self, resource_id: str) -> bool:
        rest = resource_id[len(WS_PATH) :] if resource_id.startswith(WS_PATH) else None
        if rest is None:
            return False
        if m := re.fullmatch(r"/onlineEndpoints/([^/]+)", rest):
            return m.group(1) in self.endpoints
        if m := re.fullmatch(r"/onlineEndpoints/([^/]+)/deployments/([^/]+)", rest):
            return (m.group(1), m.group(2)) in self.deployments
        return False

    def _diagnostic(self, request, call: Call, resource_id: str, name: str) -> requests.Response:
        if call.method != "PUT":
            return error_response(request, 405, "MethodNotAllowed", call.method)
        if not self._resource_exists(resource_id):
            return error_response(
                request, 404, "ResourceNotFound", f"The resource {resource_id} was not found."
            )
        body = call.json()
        self.diagnostic_settings[resource_id] = body
        resource = {"id": call.path, "name": name, **body}
        return json_response(request, 200, resource)

    def _autoscale(self, request, call: Call, name: str) -> requests.Response:
        if call.method == "GET" and name in self.autoscale_settings:
            return json_response(request, 200, self.autoscale_settings[name])
        if call.method != "PUT":
            return error_response(request, 404, "ResourceNotFound", f"no autoscale {name}")
        body = call.json()
        target = body.get("properties", {}).get("targetResourceUri", "")
        if not self._resource_exists(target):
            return error_response(
                request, 400, "TargetResourceNotFound", f"The target {target} was not found."
            )
        created = name not in self.autoscale_settings
        self.autoscale_settings[name] = {"id": call.path, "name": name, **body}
        return json_response(request, 201 if created else 200, self.autoscale_settings[name])

    def _versioned(self, request, call: Call, store: dict, kind: str, m: re.Match[str]):
        key = (m.group(1), m.group(2))
        if call.method == "GET":
            if key not in store:
                return error_response(request, 404, "NotFound", f"{kind} {key} not found.")
            return json_response(request, 200, store[key])
        if call.method == "PUT":
            resource = {
                "id": f"{WS_PATH}/{kind}/{key[0]}/versions/{key[1]}",
                "name": key[1],
                "properties": {
                    **call.json().get("properties", {}),
                    "provisioningState": "Succeeded",
                },
            }
            store[key] = resource
            return json_response(request, 201, resource)
        return error_response(request, 405, "MethodNotAllowed", call.method)

    def _blob(self, request, call: Call) -> requests.Response:
        name = call.path
        if call.method == "PUT" and call.query.get("comp") == "metadata":
            return json_response(request, 200, raw_body=b"", headers={"ETag": '"0x2"'})
        if call.method == "PUT":
            self.blobs[name] = call.body
            return json_response(request, 201, raw_body=b"", headers={"ETag": '"0x1"'})
        if call.method in ("HEAD", "GET") and name in self.blobs:
            return json_response(request, 200, raw_body=b"")
        return json_response(
            request,
            404,
            raw_body=b"",
            headers={"x-ms-error-code": "BlobNotFound", "Content-Type": "application/xml"},
        )

    def _score(self, request, call: Call) -> requests.Response:
        if call.headers.get("Authorization") != f"Bearer {TOKEN}":
            return error_response(request, 401, "Unauthorized", "no or wrong Entra ID token")
        endpoint = urllib.parse.urlsplit(call.url).hostname.split(".")[0]  # type: ignore[union-attr]
        traffic = self.endpoints.get(endpoint, {}).get("properties", {}).get("traffic", {})
        deployment = call.headers.get("azureml-model-deployment")
        if deployment is None:
            live = [d for d, share in traffic.items() if share > 0]
            deployment = live[0] if live else None
        if deployment is None or (endpoint, deployment) not in self.deployments:
            return error_response(
                request, 404, "NoDeployment", f"no deployment {deployment!r} to score"
            )
        if self.scorer is None:
            return error_response(request, 503, "NoScorer", "the test gave the fake no scorer")
        status, body = self.scorer(deployment, call.body)
        if status >= 500:  # the gateway reports a failing container as "424 model error"
            return json_response(
                request,
                424,
                raw_body=body,
                headers={"ms-azureml-model-error-statuscode": str(status)},
            )
        return json_response(request, status, raw_body=body)
