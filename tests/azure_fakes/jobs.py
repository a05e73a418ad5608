"""Jobs: a job PUT "runs" (Running, then ``job_outcome``; a pipeline gets one child step) and
the workspace's dataplane answers for it the way run history does (discovery, run details with
the log's blob, children, run data), so that ``jobs.stream`` and ``jobs.download`` work. A model
PUT gets the ``flavors`` the service reads from the MLmodel file."""

from __future__ import annotations

import re
from typing import Any

from tests.azure_fakes.base import ACCOUNT, ARM, BLOB, DATAPLANE, LOCATION, Route
from tests.azure_fakes.http import Answer, Call
from tests.azure_fakes.storage import BlobStorage


class Jobs(BlobStorage):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runs: dict[str, dict[str, Any]] = {}
        self.children: dict[str, list[str]] = {}
        # the status every job ends in, and the error it reports when "Failed"
        self.job_outcome: tuple[str, dict[str, Any] | None] = ("Completed", None)

    def start_job(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Accept a job: it runs (Running, then ``job_outcome``); a pipeline gets a child step."""
        name = path.rsplit("/", 1)[1]
        properties = body.setdefault("properties", {})
        properties.setdefault("properties", {})
        properties["status"] = "Running"
        properties["services"] = {
            "Studio": {"endpoint": f"https://ml.azure.com/runs/{name}?wsid={self.ws}"}
        }
        self.arm[path] = body
        status, failure = self.job_outcome
        self._add_run(name, status, failure, log=f"pipeline {name}\n")
        if properties.get("jobType") == "Pipeline":
            child = f"{name}_step"
            self.children[name] = [child]
            self.arm[f"{self.ws}/jobs/{child}"] = {
                "properties": {
                    "jobType": "Command",
                    "displayName": "train",
                    "status": "Running",
                    "command": "python -m training.train",
                    "environmentId": "azureml:tf-mnist-train:2",
                    "parentJobName": name,
                    "properties": {},
                    "services": {"Studio": {"endpoint": f"https://ml.azure.com/runs/{child}"}},
                }
            }
            self._add_run(child, status, failure, log="epoch 1/1  test_acc 0.9700\n")
        return self.resource(path)

    def _add_run(self, name: str, status: str, failure: dict[str, Any] | None, log: str) -> None:
        blob = f"/azureml-logs/{name}/user_logs/std_log.txt"
        self.blobs[blob], self.blob_metadata[blob] = log.encode(), {}
        self.runs[name] = {
            "statuses": ["Running", status],
            "error": failure,
            "log": f"https://{ACCOUNT}{BLOB}{blob}?sv=x&sig=x",
        }

    # ------------------------------------------------------------------ ARM

    def _put_job(self, call: Call, match: re.Match[str]) -> Answer | None:
        return Answer(201, self.start_job(call.path, call.json()))

    def _put_model(self, call: Call, match: re.Match[str]) -> Answer | None:
        body = call.json()
        body.setdefault("properties", {}).setdefault("flavors", {})  # read from MLmodel
        self.arm[call.path] = body
        return Answer(200, self.resource(call.path))

    # ------------------------------------------------------------------ dataplane

    def _discovery(self, call: Call, match: re.Match[str]) -> Answer | None:
        base = f"https://{DATAPLANE}"
        return Answer(200, {"api": base, "catalog": base, "experimentation": base, "history": base})

    def _run_details(self, call: Call, match: re.Match[str]) -> Answer | None:
        name = match["run"]
        if name not in self.runs:
            return None
        run = self.runs[name]
        status = run["statuses"][0]
        if len(run["statuses"]) > 1:  # each poll moves the run on
            run["statuses"].pop(0)
        details: dict[str, Any] = {
            "runId": name,
            "status": status,
            "logFiles": {"user_logs/std_log.txt": run["log"]},
            "warnings": [],
        }
        if status == "Failed" and run["error"]:
            details["error"] = {"error": run["error"]}
        if status != "Running" and (job := self.arm.get(f"{self.ws}/jobs/{name}")):
            job["properties"]["status"] = status
        return Answer(200, details)

    def _run_children(self, call: Call, match: re.Match[str]) -> Answer | None:
        children = [
            {
                "runId": child,
                "displayName": "train",
                "status": "Running",
                "runType": "azureml.StepRun",
            }
            for child in self.children.get(match["run"], [])
        ]
        return Answer(200, {"value": children})

    def _run_data(self, call: Call, match: re.Match[str]) -> Answer | None:
        run_id = call.json().get("runId")
        output = self.output_name(run_id)
        asset = (
            f"azureml://locations/{LOCATION}/workspaces/feed/data/"
            f"azureml_{run_id}_output_data_{output}/versions/1"
        )
        outputs = {output: {"assetId": asset, "type": "UriFolder"}}
        return Answer(200, {"runMetadata": {"runId": run_id, "outputs": outputs}})

    def output_name(self, run_id: str) -> str:
        """The name of the job's output folder (a training pipeline's is ``run``)."""
        return "run"

    ROUTES = (
        Route("PUT", ARM, r"{ws}/jobs/[^/]+", _put_job),
        Route("PUT", ARM, r"{ws}/models/[^/]+/versions/[^/]+", _put_model),
        Route("GET", DATAPLANE, r"/discovery", _discovery),
        Route("GET", DATAPLANE, r"/.*/runs/(?P<run>[^/]+)/details", _run_details),
        Route("GET", DATAPLANE, r"/.*/runs/(?P<run>[^/]+)/children", _run_children),
        Route("*", DATAPLANE, r"/.*/rundata", _run_data),
    )
