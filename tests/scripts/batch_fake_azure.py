"""The offline workspace of tests/scripts (``FakeWorkspace``, azure-core's transport API) with
what batch endpoints add: the endpoint's scoring URI, which starts a batch scoring job, and
that job's ``score`` output holding predictions.csv.

Batch endpoints and deployments are ARM resources like any other (the base class stores what
a PUT sends and returns it on GET); here a stored endpoint also gets the ``scoringUri`` and
``provisioningState`` the service fills in. A POST to the scoring URI is recorded and answered
with a batch job, which the workspace then "runs" like a submitted pipeline job.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.azure_fakes import error_body
from tests.scripts.jobs_fake_azure import CONTAINER, REGION, FakeResponse, FakeWorkspace, Recorded

INFERENCE_HOST = f"{REGION}.inference.ml.azure.com"


class FakeBatchWorkspace(FakeWorkspace):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(computes=("cpu-cluster", "gpu-cluster"), **kwargs)
        self.predictions = b"00000.png,7,0.998712,\n"  # what a finished job's output holds
        self.jobs_started: list[str] = []

    def send(self, request: Any, **kwargs: Any) -> FakeResponse:
        if request.url.split("/")[2].endswith(INFERENCE_HOST):
            return self._invoke(request)
        response = super().send(request, **kwargs)
        path = request.url.split("?")[0].split("management.azure.com", 1)[-1]
        if request.method == "PUT" and response.status_code < 300 and "/batchEndpoints/" in path:
            if re.search(r"/batchEndpoints/[^/]+$", path):
                self._complete_endpoint(path)
            self.arm[path].setdefault("properties", {})["provisioningState"] = "Succeeded"
            return FakeResponse(request, 200, json.dumps(self._resource(path)).encode(), {})
        return response

    def _complete_endpoint(self, path: str) -> None:
        """What the service adds to a batch endpoint it created."""
        name = path.rsplit("/", 1)[1]
        properties = self.arm[path].setdefault("properties", {})
        properties["scoringUri"] = f"https://{name}.{INFERENCE_HOST}/jobs"
        self.arm[path]["location"] = REGION

    def _invoke(self, request: Any) -> FakeResponse:
        body = request.content if isinstance(request.content, bytes) else b""
        if isinstance(request.content, str):
            body = request.content.encode()
        url = request.url
        self.requests.append(Recorded(request.method, url, url.split("/")[2], "/jobs", {}, body))
        endpoint = url.split("/")[2].split(".")[0]
        if f"{self.ws}/batchEndpoints/{endpoint}" not in self.arm:
            return FakeResponse(
                request, 404, json.dumps(error_body("NotFound", endpoint)).encode(), {}
            )
        name = f"batchjob-{len(self.jobs_started) + 1}"
        self.jobs_started.append(name)
        self._start_job(
            f"{self.ws}/jobs/{name}",
            {
                "properties": {
                    "jobType": "Pipeline",
                    "jobs": {},
                    "outputs": {"score": {"jobOutputType": "uri_folder"}},
                }
            },
        )
        self.put_blob(CONTAINER, f"azureml/{name}/score/predictions.csv", self.predictions)
        job = {
            "id": f"{self.ws}/jobs/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/batchJobs",
            "properties": {**json.loads(body)["properties"], "status": "NotStarted"},
        }
        return FakeResponse(request, 200, json.dumps(job).encode(), {})

    def _dataplane(self, r: Recorded) -> tuple[int, Any, dict[str, str] | None]:
        status, payload, headers = super()._dataplane(r)
        if r.path.endswith("/rundata") and status == 200:  # a batch job's output is "score"
            outputs = payload["runMetadata"]["outputs"]
            asset = outputs.pop("run")["assetId"].replace("_output_data_run", "_output_data_score")
            outputs["score"] = {"assetId": asset, "type": "UriFolder"}
        return status, payload, headers
