"""Online endpoints: endpoints and deployments as the service keeps them (traffic only to
deployments that exist, no deleting a deployment that still has traffic, the fields it fills
in), deployment logs, the scoring gateway (Entra ID token, ``azureml-model-deployment`` header
or the traffic split, a failing container reported as 424), and what the rollout adds around
them: Azure Monitor diagnostic settings and the autoscale setting, and monitoring schedules.

Scoring requests go to ``scorer(deployment, body) -> (status, body)``, which tests point at
``right_answers`` or the real local azmlinfsrv.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

from tests.azure_fakes.base import ARM, INFERENCE, LOCATION, RG_PATH, WS_PATH, Route
from tests.azure_fakes.credentials import TOKEN
from tests.azure_fakes.http import Answer, Call, error
from tests.azure_fakes.jobs import Jobs

LOG_ANALYTICS_ID = (
    f"{RG_PATH}/providers/Microsoft.OperationalInsights/workspaces/log-mnist-dev-a1b2c3"
)
_ENDPOINT = re.compile(rf"{re.escape(WS_PATH)}/onlineEndpoints/([^/]+)")
_DEPLOYMENT = re.compile(rf"{re.escape(WS_PATH)}/onlineEndpoints/([^/]+)/deployments/([^/]+)")
_AUTOSCALE = re.compile(
    rf"{re.escape(RG_PATH)}/providers/microsoft\.insights/autoscalesettings/([^/]+)", re.I
)
_DIAGNOSTIC = re.compile(
    r"/?(/subscriptions/.+)/providers/microsoft\.insights/diagnosticSettings/[^/]+", re.I
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


def _endpoint_resource(name: str, body: dict[str, Any], traffic: dict[str, int]) -> dict[str, Any]:
    return {
        "tags": body.get("tags") or {},
        "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
        "location": LOCATION,
        "identity": {"type": "SystemAssigned"},
        "properties": {
            **body.get("properties", {}),
            "traffic": traffic,
            "provisioningState": "Succeeded",
            "scoringUri": f"https://{name}{INFERENCE}/score",
            "swaggerUri": f"https://{name}{INFERENCE}/swagger.json",
        },
    }


def _deployment_resource(properties: dict[str, Any]) -> dict[str, Any]:
    return {
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


class OnlineEndpoints(Jobs):
    def __init__(self, *, scorer: Scorer | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scorer = scorer

    # ------------------------------------------------------------------ seeding

    def seed_endpoint(self, name: str, traffic: dict[str, int], deployments: list[str]) -> None:
        """An endpoint created earlier, with these deployments (of tf-mnist:1) and traffic."""
        body = {"properties": {"authMode": "AADToken"}}
        self.arm[f"{self.ws}/onlineEndpoints/{name}"] = _endpoint_resource(name, body, traffic)
        for deployment in deployments:
            self.arm[f"{self.ws}/onlineEndpoints/{name}/deployments/{deployment}"] = (
                _deployment_resource({"model": f"{self.ws}/models/tf-mnist/versions/1"})
            )

    def seed_environment(self, name: str, version: str, image: str, conda_file: str) -> None:
        """An environment version registered earlier (``conda_file``: its YAML text)."""
        self.add_asset("environments", name, version, {"image": image, "condaFile": conda_file})

    def seed_model(self, name: str, version: str) -> None:
        """A registered MLflow model, as the service describes one."""
        self.add_asset(
            "models",
            name,
            version,
            {
                "modelType": "mlflow_model",
                "modelUri": f"azureml://jobs/run-{version}/outputs/artifacts/paths/outputs/model/",
                "flavors": {
                    "python_function": {"data": {"loader_module": "mlflow.tensorflow"}},
                    "tensorflow": {"data": {"model_type": "keras"}},
                },
            },
        )

    # ------------------------------------------------------------------ what is stored

    def _stored(self, pattern: re.Pattern[str]) -> dict[Any, dict[str, Any]]:
        found = {}
        for path in self.arm:
            if match := pattern.fullmatch(path):
                groups = match.groups()
                found[groups[0] if len(groups) == 1 else groups] = self.resource(path)
        return found

    @property
    def endpoints(self) -> dict[str, dict[str, Any]]:
        return self._stored(_ENDPOINT)

    @property
    def deployments(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self._stored(_DEPLOYMENT)

    @property
    def autoscale_settings(self) -> dict[str, dict[str, Any]]:
        """Autoscale setting name -> the setting."""
        return self._stored(_AUTOSCALE)

    @property
    def diagnostic_settings(self) -> dict[str, dict[str, Any]]:
        """ID of the resource it is on -> the diagnostic setting."""
        return self._stored(_DIAGNOSTIC)

    @property
    def schedules(self) -> dict[str, dict[str, Any]]:
        return self._stored(re.compile(rf"{re.escape(self.ws)}/schedules/([^/]+)"))

    @property
    def data(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self._stored(re.compile(rf"{re.escape(self.ws)}/data/([^/]+)/versions/([^/]+)"))

    # ------------------------------------------------------------------ queries for tests

    def endpoint_puts(self, endpoint: str) -> list[Call]:
        """Every PUT of the endpoint itself (creation and traffic updates), in order."""
        return self.arm_calls("PUT", f"/onlineEndpoints/{endpoint}$")

    def traffic_updates(self, endpoint: str) -> list[dict[str, int]]:
        """The traffic of every endpoint PUT, in order."""
        return [c.json()["properties"].get("traffic") or {} for c in self.endpoint_puts(endpoint)]

    def scoring_calls(self) -> list[Call]:
        return [c for c in self.requests if c.host.endswith(INFERENCE) and c.path == "/score"]

    # ------------------------------------------------------------------ ARM

    def _traffic(self, endpoint: str) -> dict[str, int]:
        stored = self.arm.get(f"{self.ws}/onlineEndpoints/{endpoint}", {})
        return stored.get("properties", {}).get("traffic", {})

    def _put_endpoint(self, call: Call, match: re.Match[str]) -> Answer | None:
        name, body = match["name"], call.json()
        properties = body.setdefault("properties", {})
        traffic = properties.pop("traffic", None) or {}
        unknown = set(traffic) - {d for (e, d) in self.deployments if e == name}
        if unknown:
            return error(400, "BadRequest", f"Traffic names unknown deployments {unknown}.")
        created = call.path not in self.arm
        self.arm[call.path] = _endpoint_resource(name, body, traffic)
        return Answer(201 if created else 200, self.resource(call.path))

    def _put_deployment(self, call: Call, match: re.Match[str]) -> Answer | None:
        properties = call.json().get("properties", {})
        # The service answers with its enum spelling: azure-ai-ml sends "enabled" and reads
        # a collection as on only when it comes back "Enabled".
        for collection in properties.get("dataCollector", {}).get("collections", {}).values():
            if mode := collection.get("dataCollectionMode"):
                collection["dataCollectionMode"] = mode.capitalize()
        self.arm[call.path] = _deployment_resource(properties)
        return Answer(201, self.resource(call.path))

    def _delete_deployment(self, call: Call, match: re.Match[str]) -> Answer | None:
        if self._traffic(match["endpoint"]).get(match["name"]):
            return error(400, "BadRequest", f"{match['name']} still receives traffic.")
        self.arm.pop(call.path, None)
        return Answer(200)

    def _get_logs(self, call: Call, match: re.Match[str]) -> Answer | None:
        return Answer(200, {"content": "init() failed: see above"})

    def _put_schedule(self, call: Call, match: re.Match[str]) -> Answer | None:
        body = call.json()
        body["properties"]["provisioningState"] = "Succeeded"
        created = call.path not in self.arm
        self.arm[call.path] = body
        return Answer(201 if created else 200, self.resource(call.path))

    def _exists(self, resource_id: str) -> bool:
        return bool(_ENDPOINT.fullmatch(resource_id) or _DEPLOYMENT.fullmatch(resource_id)) and (
            resource_id in self.arm
        )

    def _put_diagnostic(self, call: Call, match: re.Match[str]) -> Answer | None:
        if not self._exists(match["resource"]):
            return error(
                404, "ResourceNotFound", f"The resource {match['resource']} was not found."
            )
        self.arm[call.path] = call.json()
        return Answer(200, self.resource(call.path))

    def _put_autoscale(self, call: Call, match: re.Match[str]) -> Answer | None:
        body = call.json()
        target = body.get("properties", {}).get("targetResourceUri", "")
        if not self._exists(target):
            return error(400, "TargetResourceNotFound", f"The target {target} was not found.")
        created = call.path not in self.arm
        self.arm[call.path] = body
        return Answer(201 if created else 200, self.resource(call.path))

    # ------------------------------------------------------------------ the scoring gateway

    def _score(self, call: Call, match: re.Match[str]) -> Answer | None:
        if call.headers.get("Authorization") != f"Bearer {TOKEN}":
            return error(401, "Unauthorized", "no or wrong Entra ID token")
        endpoint = call.host.removesuffix(INFERENCE)
        deployment = call.headers.get("azureml-model-deployment")
        if deployment is None:
            live = [d for d, share in self._traffic(endpoint).items() if share > 0]
            deployment = live[0] if live else None
        if deployment is None or (endpoint, deployment) not in self.deployments:
            return error(404, "NoDeployment", f"no deployment {deployment!r} to score")
        if self.scorer is None:
            return error(503, "NoScorer", "the test gave the fake no scorer")
        status, body = self.scorer(deployment, call.body)
        if status >= 500:  # the gateway reports a failing container as "424 model error"
            return Answer(424, body, {"ms-azureml-model-error-statuscode": str(status)})
        return Answer(status, body)

    ROUTES = (
        Route("PUT", ARM, r"{ws}/onlineEndpoints/(?P<name>[^/]+)", _put_endpoint),
        Route("PUT", ARM, r"{ws}/onlineEndpoints/[^/]+/deployments/[^/]+", _put_deployment),
        Route(
            "DELETE",
            ARM,
            r"{ws}/onlineEndpoints/(?P<endpoint>[^/]+)/deployments/(?P<name>[^/]+)",
            _delete_deployment,
        ),
        Route("POST", ARM, r"{ws}/onlineEndpoints/[^/]+/deployments/[^/]+/getLogs", _get_logs),
        Route("PUT", ARM, r"{ws}/schedules/[^/]+", _put_schedule),
        Route(
            "PUT",
            ARM,
            r"/?(?P<resource>/subscriptions/.+)/providers/microsoft\.insights"
            r"/diagnosticSettings/[^/]+",
            _put_diagnostic,
        ),
        Route(
            "PUT",
            ARM,
            r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/microsoft\.insights"
            r"/autoscalesettings/[^/]+",
            _put_autoscale,
        ),
        Route("POST", INFERENCE, r"/score", _score),
    )
