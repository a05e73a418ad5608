"""Batch endpoints: ARM resources like any other, plus what the service fills in (an endpoint's
``scoringUri``, ``provisioningState``); a POST to the scoring URI starts a batch scoring job,
which runs like a submitted pipeline job and leaves ``predictions`` in its ``score`` output."""

from __future__ import annotations

import re
from typing import Any

from tests.azure_fakes.base import ARM, CONTAINER, INFERENCE, LOCATION, Route
from tests.azure_fakes.http import Answer, Call, error
from tests.azure_fakes.jobs import Jobs


class BatchEndpoints(Jobs):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.predictions = b"00000.png,7,0.998712,\n"  # what a finished job's output holds
        self.jobs_started: list[str] = []

    def output_name(self, run_id: str) -> str:
        return "score" if run_id in self.jobs_started else super().output_name(run_id)

    def _put_endpoint(self, call: Call, match: re.Match[str]) -> Answer | None:
        body = call.json()
        body.setdefault("properties", {})["provisioningState"] = "Succeeded"
        if match["deployment"] is None:
            body["properties"]["scoringUri"] = f"https://{match['name']}{INFERENCE}/jobs"
            body["location"] = LOCATION
        self.arm[call.path] = body
        return Answer(200, self.resource(call.path))

    def _invoke(self, call: Call, match: re.Match[str]) -> Answer | None:
        endpoint = call.host.removesuffix(INFERENCE)
        if f"{self.ws}/batchEndpoints/{endpoint}" not in self.arm:
            return error(404, "NotFound", endpoint)
        name = f"batchjob-{len(self.jobs_started) + 1}"
        self.jobs_started.append(name)
        outputs = {"score": {"jobOutputType": "uri_folder"}}
        self.start_job(
            f"{self.ws}/jobs/{name}",
            {"properties": {"jobType": "Pipeline", "jobs": {}, "outputs": outputs}},
        )
        self.put_blob(CONTAINER, f"azureml/{name}/score/predictions.csv", self.predictions)
        job = {
            "id": f"{self.ws}/jobs/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/batchJobs",
            "properties": {**call.json()["properties"], "status": "NotStarted"},
        }
        return Answer(200, job)

    ROUTES = (
        Route(
            "PUT",
            ARM,
            r"{ws}/batchEndpoints/(?P<name>[^/]+)(?P<deployment>/deployments/[^/]+)?",
            _put_endpoint,
        ),
        Route("POST", INFERENCE, r"/jobs", _invoke),
    )
