"""An offline Azure ML workspace for the job command tests, behind azure-core's transport API.

``FakeWorkspace`` is an ``azure.core`` ``HttpTransport``: ``MLClient(..., transport=fake)`` and
the Blob storage clients azure-ai-ml creates for uploads and downloads (``use_for_storage``)
send their real, fully serialised HTTP requests here instead of to a socket. It answers with
constructed JSON (and XML, for Blob listings) the way the services do:

- ARM (management.azure.com): resources stored by path; PUT stores the body, GET returns it
  (a container path such as ``.../data/mnist`` answers with its ``latestVersion``), a
  ``.../versions`` path lists them; ``startPendingUpload`` and ``listSecrets`` for uploads.
- The workspace's dataplane (discovery, run history: run details, children, run data), so
  that ``jobs.stream`` and ``jobs.download`` work. A pipeline job PUT here "runs": a child
  step is created and both go Running -> ``job_outcome``.
- Blob storage: put/head/get (with ranges), metadata, listing.

Every request is recorded (method, URL, parsed JSON body), and ``fail()`` makes matching
requests answer with a service error, so tests assert what the SDK sent and how errors read.
Clients sign in with ``tests.azure_fakes.EntraIdCredential`` (tokens shaped like Entra ID's).
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import escape

from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

from tests.azure_fakes import error_body

REGION = "westeurope"
DATAPLANE = f"{REGION}.api.azureml.ms"
ACCOUNT = "stmnistfake"
CONTAINER = "azureml-blobstore-0000"
_LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


class _Stream:
    """What azure-core's StreamDownloadGenerator is: an iterator object callers annotate."""

    def __init__(self, pipeline: Any = None, response: Any = None, **kwargs: Any) -> None:
        self.response, self.request = response, response.request
        self._data = response._content or b""
        self.content_length = len(self._data)

    def __len__(self) -> int:
        return self.content_length

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> bytes:
        if not self._data:
            raise StopIteration
        chunk, self._data = self._data[:65536], self._data[65536:]
        return chunk


class FakeResponse(HttpResponseImpl):
    def __init__(self, request: Any, status: int, body: bytes, headers: dict[str, str]) -> None:
        headers = CaseInsensitiveDict(
            {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
        )
        super().__init__(
            request=request,
            internal_response=io.BytesIO(body),
            status_code=status,
            reason="OK" if status < 400 else "Error",
            content_type=headers["Content-Type"],
            headers=headers,
            stream_download_generator=_Stream,
        )
        self._content = body


@dataclass
class Recorded:
    method: str
    url: str
    host: str
    path: str
    query: dict[str, list[str]]
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: str
    message: str


class FakeWorkspace(HttpTransport):
    def __init__(
        self,
        subscription: str = "11111111-2222-3333-4444-555555555555",
        resource_group: str = "rg-mnist-dev",
        workspace: str = "mlw-mnist-dev",
        computes: tuple[str, ...] = ("gpu-cluster",),
    ) -> None:
        self.subscription, self.resource_group, self.workspace = (
            subscription,
            resource_group,
            workspace,
        )
        self.ws = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace}"
        )
        self.requests: list[Recorded] = []
        self.arm: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.children: dict[str, list[str]] = {}
        self.failures: list[_Failure] = []
        self.interrupts: list[tuple[str, re.Pattern[str]]] = []
        self.job_outcome: tuple[str, dict[str, Any] | None] = ("Completed", None)
        self.arm[self.ws] = {
            "location": REGION,
            "properties": {
                "discoveryUrl": f"https://{DATAPLANE}/discovery",
                "workspaceId": "00000000-0000-0000-0000-00000000feed",
                "mlFlowTrackingUri": f"azureml://{DATAPLANE}/mlflow/v1.0{self.ws}",
            },
        }
        self.arm[f"{self.ws}/datastores/workspaceblobstore"] = {
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
            self.arm[f"{self.ws}/computes/{name}"] = {
                "location": REGION,
                "properties": {
                    "computeType": "AmlCompute",
                    "provisioningState": "Succeeded",
                    "properties": {"vmSize": "Standard_NC4as_T4_v3"},
                },
            }

    # ------------------------------------------------------------------ test helpers

    def add_asset(self, kind: str, name: str, version: str, properties: dict[str, Any]) -> None:
        """Seed ``environments``/``data``/``models`` NAME:VERSION as if registered before."""
        self.arm[f"{self.ws}/{kind}/{name}/versions/{version}"] = {"properties": properties}

    def fail(self, method: str, path_pattern: str, status: int, code: str, message: str) -> None:
        """Answer requests whose method and path match with this service error."""
        self.failures.append(_Failure(method, re.compile(path_pattern), status, code, message))

    def interrupt(self, method: str, path_pattern: str) -> None:
        """Raise KeyboardInterrupt in the caller on a matching request (Ctrl-C while waiting)."""
        self.interrupts.append((method, re.compile(path_pattern)))

    def calls(self, method: str, path_pattern: str = "") -> list[Recorded]:
        pattern = re.compile(path_pattern)
        return [r for r in self.requests if r.method == method and pattern.search(r.path)]

    def arm_calls(self) -> list[tuple[str, str]]:
        """(method, path below the workspace) of every ARM request, in order."""
        return [
            (r.method, r.path.removeprefix(self.ws) or "/")
            for r in self.requests
            if r.host == "management.azure.com"
        ]

    def use_for_storage(self, monkeypatch: Any) -> None:
        """Route the Blob storage clients azure-ai-ml creates (no transport argument) here."""
        import azure.storage.blob._shared.base_client as base_client

        monkeypatch.setattr(base_client, "RequestsTransport", lambda **kwargs: self)

    # ------------------------------------------------------------------ transport

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeWorkspace:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> FakeResponse:
        url = urlparse(request.url)
        body = request.content if isinstance(request.content, bytes) else b""
        if isinstance(request.content, str):
            body = request.content.encode()
        recorded = Recorded(
            request.method, request.url, url.netloc, url.path, parse_qs(url.query), body
        )
        self.requests.append(recorded)
        if any(m == request.method and p.search(url.path) for m, p in self.interrupts):
            raise KeyboardInterrupt
        for failure in self.failures:
            if failure.method == request.method and failure.pattern.search(url.path):
                error = error_body(failure.code, failure.message)
                return FakeResponse(
                    request,
                    failure.status,
                    json.dumps(error).encode(),
                    {"x-ms-error-code": failure.code},
                )
        if url.netloc.endswith(".blob.core.windows.net"):
            status, payload, headers = self._blob(request, recorded)
        elif url.netloc == DATAPLANE:
            status, payload, headers = self._dataplane(recorded)
        else:
            status, payload, headers = self._arm(recorded)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return FakeResponse(request, status, data, headers or {})

    # ------------------------------------------------------------------ ARM

    def _resource(self, path: str) -> dict[str, Any]:
        resource = json.loads(json.dumps(self.arm[path]))
        resource.setdefault("properties", {})
        resource["id"], resource["name"] = path, path.rsplit("/", 1)[1]
        return resource

    def _arm(self, r: Recorded) -> tuple[int, Any, dict[str, str] | None]:
        path = r.path
        if r.method == "GET":
            if path in self.arm:
                return 200, self._resource(path), None
            children = [k for k in self.arm if k.rsplit("/", 1)[0] == path]
            if path.endswith("/versions"):
                versions = sorted(children, key=lambda k: int(k.rsplit("/", 1)[1]), reverse=True)
                return 200, {"value": [self._resource(k) for k in versions]}, None
            if children:
                return 200, {"value": [self._resource(k) for k in sorted(children)]}, None
            versions = [k for k in self.arm if k.startswith(path + "/versions/")]
            if versions:
                latest = max(int(k.rsplit("/", 1)[1]) for k in versions)
                return (
                    200,
                    {
                        "id": path,
                        "name": path.rsplit("/", 1)[1],
                        "properties": {
                            "latestVersion": str(latest),
                            "nextVersion": str(latest + 1),
                        },
                    },
                    None,
                )
        if r.method == "PUT":
            body = r.json or {}
            if "/jobs/" in path:
                return 201, self._start_job(path, body), None
            if "/models/" in path:  # the service reads the MLmodel file's flavors
                body.setdefault("properties", {}).setdefault("flavors", {})
            self.arm[path] = body
            return 200, self._resource(path), None
        if r.method == "POST" and path.endswith("/startPendingUpload"):
            name = path.split("/codes/")[1].split("/")[0]
            blob = f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}/LocalUpload/{name}"
            return (
                200,
                {
                    "blobReferenceForConsumption": {
                        "blobUri": blob,
                        "credential": {"credentialType": "SAS", "sasUri": f"{blob}?sv=x&sig=x"},
                    },
                    "pendingUploadType": "TemporaryBlobReference",
                },
                None,
            )
        if r.method == "POST" and path.endswith("/listSecrets"):
            key = base64.b64encode(b"k" * 32).decode()
            return 200, {"secretsType": "AccountKey", "key": key}, None
        name = path.rsplit("/", 1)[-1]
        return (
            404,
            error_body("NotFound", f"{name} was not found ({path})"),
            None,
        )

    def _start_job(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Accept a job: it runs (Running, then ``job_outcome``); a pipeline gets a child step."""
        name = path.rsplit("/", 1)[1]
        properties = body.setdefault("properties", {})
        properties.setdefault("properties", {})
        properties["status"] = "Running"
        properties["services"] = {
            "Studio": {"endpoint": f"https://ml.azure.com/runs/{name}?wsid={self.ws}"}
        }
        self.arm[path] = body
        status, error = self.job_outcome
        self._add_run(name, status, error, log=f"pipeline {name}\n")
        if properties.get("jobType") == "Pipeline":
            child = f"{name}_step"
            self.children[name] = [child]
            self.arm[f"{self.ws}/jobs/{child}"] = {
                "properties": {
                    "jobType": "Command",
                    "displayName": "train",
                    "status": "Running",
                    "command": "python -m training.train",
                    "environmentId": "azureml:tf-mnist-train:1",
                    "parentJobName": name,
                    "properties": {},
                    "services": {"Studio": {"endpoint": f"https://ml.azure.com/runs/{child}"}},
                }
            }
            self._add_run(child, status, error, log="epoch 1/1  test_acc 0.9700\n")
        return self._resource(path)

    def _add_run(self, name: str, status: str, error: dict[str, Any] | None, log: str) -> None:
        blob = f"/azureml-logs/{name}/user_logs/std_log.txt"
        self.blobs[blob] = {"data": log.encode(), "meta": {}}
        self.runs[name] = {
            "statuses": ["Running", status],
            "error": error,
            "log": f"https://{ACCOUNT}.blob.core.windows.net{blob}?sv=x&sig=x",
        }

    # ------------------------------------------------------------------ dataplane

    def _run_details(self, name: str, advance: bool) -> dict[str, Any]:
        run = self.runs[name]
        status = run["statuses"][0]
        if advance and len(run["statuses"]) > 1:
            run["statuses"].pop(0)
        details: dict[str, Any] = {
            "runId": name,
            "status": status,
            "logFiles": {"user_logs/std_log.txt": run["log"]},
            "warnings": [],
        }
        if status == "Failed" and run["error"]:
            details["error"] = {"error": run["error"]}
        if status != "Running":
            job = self.arm.get(f"{self.ws}/jobs/{name}")
            if job:
                job["properties"]["status"] = status
        return details

    def _dataplane(self, r: Recorded) -> tuple[int, Any, dict[str, str] | None]:
        path = r.path
        if path == "/discovery":
            base = f"https://{DATAPLANE}"
            return (
                200,
                {"api": base, "catalog": base, "experimentation": base, "history": base},
                None,
            )
        match = re.search(r"/runs/([^/]+)/details$", path)
        if match and match.group(1) in self.runs:
            return 200, self._run_details(match.group(1), advance=True), None
        if match := re.search(r"/runs/([^/]+)/children$", path):
            children = [
                {
                    "runId": child,
                    "displayName": "train",
                    "status": "Running",
                    "runType": "azureml.StepRun",
                }
                for child in self.children.get(match.group(1), [])
            ]
            return 200, {"value": children}, None
        if path.endswith("/rundata"):
            run_id = (r.json or {}).get("runId")
            asset = f"azureml://locations/{REGION}/workspaces/feed/data/azureml_{run_id}_output_data_run/versions/1"
            outputs = {"run": {"assetId": asset, "type": "UriFolder"}}
            return 200, {"runMetadata": {"runId": run_id, "outputs": outputs}}, None
        return 404, error_body("NotFound", f"{path} was not found"), None

    # ------------------------------------------------------------------ blob storage

    def _blob(self, request: Any, r: Recorded) -> tuple[int, Any, dict[str, str]]:
        key, query = r.path, r.query
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": '"0x1"',
            "Last-Modified": _LAST_MODIFIED,
            "x-ms-version": "2025-01-05",
        }
        metadata = {
            name[len("x-ms-meta-") :]: value
            for name, value in request.headers.items()
            if name.lower().startswith("x-ms-meta-")
        }
        missing = (404, b"", {**headers, "x-ms-error-code": "BlobNotFound"})
        if r.method == "GET" and query.get("comp") == ["list"]:
            return 200, self._list(key, query), {**headers, "Content-Type": "application/xml"}
        if r.method == "PUT" and query.get("comp") == ["metadata"]:
            if key not in self.blobs:
                return missing
            self.blobs[key]["meta"] = metadata
            return 200, b"", headers
        if r.method == "PUT":
            self.blobs[key] = {"data": r.body, "meta": metadata}
            return 201, b"", headers
        if r.method in ("HEAD", "GET") and key in self.blobs:
            blob = self.blobs[key]
            data = blob["data"]
            out = {
                **headers,
                "Content-Length": str(len(data)),
                "x-ms-blob-type": "BlockBlob",
                **{f"x-ms-meta-{k}": v for k, v in blob["meta"].items()},
            }
            wanted = request.headers.get("x-ms-range")
            if r.method == "GET" and wanted and data:
                start_text, _, end_text = wanted.split("=")[1].partition("-")
                start = int(start_text)
                end = min(int(end_text or len(data) - 1), len(data) - 1)
                out["Content-Length"] = str(end - start + 1)
                out["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return 206, data[start : end + 1], out
            return 200, data if r.method == "GET" else b"", out
        return missing

    def _list(self, container_path: str, query: dict[str, list[str]]) -> bytes:
        container = container_path.strip("/")
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [None])[0]
        items, prefixes = [], set()
        for key, blob in sorted(self.blobs.items()):
            if not key.startswith(f"/{container}/"):
                continue
            name = key[len(container) + 2 :]
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
                continue
            meta = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in blob["meta"].items())
            items.append(
                f"<Blob><Name>{escape(name)}</Name><Properties>"
                f"<Last-Modified>{_LAST_MODIFIED}</Last-Modified><Etag>0x1</Etag>"
                f"<Content-Length>{len(blob['data'])}</Content-Length>"
                "<Content-Type>application/octet-stream</Content-Type><BlobType>BlockBlob</BlobType>"
                f"</Properties><Metadata>{meta}</Metadata></Blob>"
            )
        items += [f"<BlobPrefix><Name>{escape(p)}</Name></BlobPrefix>" for p in sorted(prefixes)]
        return (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<EnumerationResults ServiceEndpoint="https://{ACCOUNT}.blob.core.windows.net/" '
            f'ContainerName="{container}"><Prefix>{escape(prefix)}</Prefix>'
            f"<Blobs>{''.join(items)}</Blobs><NextMarker /></EnumerationResults>"
        ).encode()

    def put_blob(self, container: str, name: str, data: bytes) -> None:
        self.blobs[f"/{container}/{name}"] = {"data": data, "meta": {}}
