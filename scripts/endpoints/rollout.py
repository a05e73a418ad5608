"""Safe blue/green rollout to a managed online endpoint (client side, not uploaded).

``python -m scripts deploy`` calls :func:`rollout`. Against an endpoint whose traffic is on one
colour (say blue), it

1. checks the deployment spec (``specs.check_deployment``) before touching Azure;
2. creates the endpoint if it does not exist, and registers the scoring environment version
   if the workspace lacks it;
3. creates the other colour (green) from the same definition with the new model: a new
   deployment receives no traffic until told to. Green reports its requests under the
   endpoint's name (``SERVICE_NAME``, the "Service Name" of its Application Insights requests
   that the stack's alerts split by) and its data collector keeps ``sampling_rate`` of them;
4. with the stack's ``Operations`` (scripts/endpoints/azure_monitor.py), sends green's metrics
   and the endpoint's logs to the stack's Log Analytics workspace, where the CPU and memory
   alerts look;
5. smoke-tests green alone, through the ``azureml-model-deployment`` header: real MNIST
   digits (``sample-digits.json``) must come back as ten probabilities each, summing to 1,
   mostly right;
6. shifts traffic in steps (10%, 50%, 100% by default), smoke-testing green again after each;
7. once green takes all traffic, moves the endpoint's autoscale setting to it (the stack's
   minimum to maximum instances, on CPU and requests per instance);
8. on any failure before that, puts all traffic back on blue and deletes green, then raises
   :class:`RolloutError` saying what failed and what the endpoint now serves.

Blue stays deployed at 0% after a success so that going back is one traffic update
(``--delete-old`` removes it). Every Azure call goes through the caller's ``MLClient``, and
the Azure Monitor ones through the ``Operations``' ``MonitorManagementClient``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scripts.endpoints import azure_monitor, specs

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineEndpoint

SAMPLE_DIGITS = specs.SERVING_DIR / "sample-digits.json"
TRAFFIC_STEPS: tuple[int, ...] = (10, 50, 100)
MIN_SMOKE_ACCURACY = 0.9
LOG_LINES = 30  # of a failed deployment's container log, quoted in the error
# azmlinfsrv's "Service Name" of every request it reports to Application Insights ("ML service"
# when unset): the rollout sets it to the endpoint's name, one alert series per endpoint.
SERVICE_NAME_VARIABLE = "SERVICE_NAME"


class RolloutError(Exception):
    """The rollout stopped. The message says why and what the endpoint serves now."""


@dataclass(frozen=True)
class SampleDigits:
    """A few MNIST test digits with their labels: ``{"data": [...], "labels": [...]}``."""

    data: list[list[float]]
    labels: list[int]

    def request(self, *, no_code: bool = False) -> dict[str, Any]:
        """The scoring request: score.py's format, or MLflow's for the no-code deployment."""
        return {"input_data": self.data} if no_code else {"data": self.data}


def load_sample_digits(path: Path = SAMPLE_DIGITS) -> SampleDigits:
    raw = json.loads(path.read_text())
    return SampleDigits(data=raw["data"], labels=[int(v) for v in raw["labels"]])


def probabilities_from_response(body: Any) -> np.ndarray:
    """The ``(n, classes)`` probabilities in a response: score.py's object or MLflow's bare list."""
    if isinstance(body, dict):
        body = body.get("probabilities", body.get("predictions"))
    array = np.asarray(body, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected a list of probability lists, got shape {array.shape}")
    return array


def check_scores(body: Any, labels: Sequence[int]) -> list[str]:
    """What is wrong with a response to the sample digits (empty when it is right)."""
    try:
        probabilities = probabilities_from_response(body)
    except (ValueError, TypeError) as exc:
        return [f"the response is not a batch of probabilities ({exc}): {str(body)[:200]}"]
    problems = []
    from training.model import NUM_CLASSES

    if probabilities.shape != (len(labels), NUM_CLASSES):
        expected = f"{len(labels)} x {NUM_CLASSES}"
        return [f"expected {expected} probabilities, got {probabilities.shape}"]
    sums = probabilities.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3) or probabilities.min() < 0:
        problems.append(f"probabilities do not sum to 1 (sums {np.round(sums, 4).tolist()})")
    # score.py answers both; its predictions must be the most probable digits.
    scored = isinstance(body, dict) and {"predictions", "probabilities"} <= set(body)
    if scored and list(body["predictions"]) != probabilities.argmax(axis=1).tolist():
        problems.append("predictions are not the most probable digits")
    accuracy = float((probabilities.argmax(axis=1) == np.asarray(labels)).mean())
    if accuracy < MIN_SMOKE_ACCURACY:
        problems.append(
            f"only {accuracy:.0%} of the sample digits are right (at least "
            f"{MIN_SMOKE_ACCURACY:.0%} expected): wrong model or wrong preprocessing?"
        )
    return problems


@dataclass
class RolloutReport:
    endpoint: str
    deployment: str
    previous: str | None
    traffic: dict[str, int]
    steps: list[dict[str, int]] = field(default_factory=list)
    scoring_uri: str | None = None


def _service_message(exc: Exception) -> str:
    """One line from an SDK or service error."""
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())[:600]


def _live_colour(traffic: dict[str, int]) -> str | None:
    live = {name: share for name, share in (traffic or {}).items() if share > 0}
    if len(live) > 1:
        shares = ", ".join(f"{name} {share}%" for name, share in sorted(live.items()))
        raise RolloutError(
            f"The endpoint splits its traffic ({shares}): another rollout is in progress or was "
            "left half way. Put all traffic on one deployment first (az ml online-endpoint "
            "update --traffic NAME=100)."
        )
    return next(iter(live), None)


def next_colour(live: str | None) -> str:
    """Green when blue serves, else blue."""
    return specs.COLOURS[1] if live == specs.COLOURS[0] else specs.COLOURS[0]


class _Rollout:
    def __init__(
        self,
        ml_client: MLClient,
        *,
        endpoint: OnlineEndpoint,
        deployment: ManagedOnlineDeployment,
        no_code: bool,
        steps: Sequence[int],
        step_wait_s: float,
        delete_old: bool,
        digits: SampleDigits,
        log: Callable[[str], None],
        sleep: Callable[[float], None],
        sampling_rate: float | None = None,
        operations: azure_monitor.Operations | None = None,
    ) -> None:
        self.client = ml_client
        self.endpoint_spec = endpoint
        self.name = endpoint.name
        self.deployment = deployment
        self.no_code = no_code
        self.steps = list(steps)
        self.step_wait_s = step_wait_s
        self.delete_old = delete_old
        self.digits = digits
        self.log = log
        self.sleep = sleep
        self.sampling_rate = sampling_rate
        self.operations = operations

    # ------------------------------------------------------------------ Azure calls

    def _endpoint(self) -> OnlineEndpoint:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client.online_endpoints.get(self.name)
        except ResourceNotFoundError:
            self.log(f"Creating endpoint {self.name} (auth: {self.endpoint_spec.auth_mode})...")
            return self.client.online_endpoints.begin_create_or_update(self.endpoint_spec).result()

    def _environment(self) -> str:
        """The registered scoring environment, created when this version is new: ``NAME:VERSION``
        (a deployment's ``environment`` as azure-ai-ml's loader writes it)."""
        from azure.core.exceptions import ResourceNotFoundError

        environment = specs.load_serving_environment()
        reference = f"{environment.name}:{environment.version}"
        try:
            existing = self.client.environments.get(environment.name, version=environment.version)
        except ResourceNotFoundError:
            self.log(f"Registering environment {reference}...")
            self.client.environments.create_or_update(environment)
        else:  # versions are immutable: a changed spec under an old version would be ignored
            if (existing.image, existing.conda_file) != (environment.image, environment.conda_file):
                raise RolloutError(
                    f"Environment {reference} in the workspace differs from "
                    f"{specs.ENVIRONMENT_SPEC.relative_to(specs.SERVING_DIR.parent)}: bump its "
                    "version there (Azure ML environment versions cannot change)."
                )
        return reference

    def _set_traffic(self, traffic: dict[str, int]) -> None:
        endpoint = self.client.online_endpoints.get(self.name)
        endpoint.traffic = dict(traffic)
        self.client.online_endpoints.begin_create_or_update(endpoint).result()

    def _smoke(self, deployment: str) -> None:
        """Score the sample digits on one deployment only; RolloutError when wrong."""
        with tempfile.TemporaryDirectory() as folder:
            request = Path(folder) / "sample-digits.json"
            request.write_text(json.dumps(self.digits.request(no_code=self.no_code)))
            try:
                text = self.client.online_endpoints.invoke(
                    endpoint_name=self.name, deployment_name=deployment, request_file=str(request)
                )
            except Exception as exc:  # any failure to score is a failed smoke test
                raise RolloutError(
                    f"Smoke test of {deployment} failed: {_service_message(exc)}"
                ) from exc
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            body = text
        if isinstance(body, str):  # some servers return JSON encoded as a JSON string
            with contextlib.suppress(json.JSONDecodeError):
                body = json.loads(body)
        problems = check_scores(body, self.digits.labels)
        if problems:
            raise RolloutError(f"Smoke test of {deployment} failed: {'; '.join(problems)}.")
        self.log(f"Smoke test of {deployment} passed ({len(self.digits.labels)} digits).")

    def _logs(self, deployment: str) -> str:
        try:
            text = self.client.online_deployments.get_logs(
                name=deployment, endpoint_name=self.name, lines=LOG_LINES
            )
        except Exception:  # logs are a courtesy: never hide the real error behind them
            return ""
        text = (text or "").strip()
        return f"\nLast {LOG_LINES} lines of its log:\n{text}" if text else ""

    def _remove(self, deployment: str) -> str:
        try:
            self.client.online_deployments.begin_delete(
                name=deployment, endpoint_name=self.name
            ).result()
            return f"deleted {deployment}"
        except Exception as exc:
            return (
                f"could not delete {deployment} ({_service_message(exc)}); delete it with "
                f"az ml online-deployment delete -e {self.name} -n {deployment}"
            )

    def _roll_back(self, new: str, old: str | None, cause: str) -> RolloutError:
        actions = []
        if old is not None:
            try:
                self._set_traffic({old: 100})
                actions.append(f"all traffic is back on {old}")
            except Exception as exc:
                actions.append(
                    f"traffic could NOT be moved back to {old} ({_service_message(exc)}): run "
                    f"az ml online-endpoint update -n {self.name} --traffic {old}=100"
                )
        else:
            actions.append("the endpoint serves no traffic")
        actions.append(self._remove(new))
        return RolloutError(f"{cause}\nRolled back: {'; '.join(actions)}.")

    def _configure(self, deployment: ManagedOnlineDeployment) -> None:
        """What every new colour gets besides the spec: its service name, the sampling rate."""
        variables = dict(deployment.environment_variables or {})
        variables[SERVICE_NAME_VARIABLE] = self.name
        deployment.environment_variables = variables
        if self.sampling_rate is not None and deployment.data_collector is not None:
            deployment.data_collector.sampling_rate = self.sampling_rate

    def _monitor(self, endpoint: OnlineEndpoint, new: str) -> None:
        """The new colour's metrics and the endpoint's logs into Log Analytics."""
        if self.operations is None:
            return
        try:
            azure_monitor.send_to_log_analytics(
                self.operations,
                endpoint_id=str(endpoint.id),
                deployment_id=f"{endpoint.id}/deployments/{new}",
            )
        except azure_monitor.MonitorError as exc:
            raise RolloutError(str(exc)) from exc
        self.log(f"Metrics of {new} and logs of {self.name} go to Log Analytics.")

    def _autoscale(self, endpoint: OnlineEndpoint, new: str) -> None:
        """Move the endpoint's autoscale setting to the colour that now serves.

        Applied here, not in the Pulumi stack: the deployments are created and deleted by this
        rollout, after ``pulumi up``, so only the rollout knows which colour to scale. One
        setting per endpoint, re-pointed at each rollout, so the old colour (kept at 0% or
        deleted) is never scaled by it again.
        """
        scale = self.operations.scale if self.operations else None
        if self.operations is None or scale is None:
            return
        try:
            azure_monitor.autoscale(
                self.operations,
                endpoint=self.name,
                endpoint_id=str(endpoint.id),
                deployment=new,
                location=str(endpoint.location),
                tags=dict(endpoint.tags or {}),
            )
        except azure_monitor.MonitorError as exc:
            raise RolloutError(
                f"{new} serves all traffic of {self.name}, but autoscale was not applied: {exc} "
                f"Until it is, {new} keeps its fixed instance count; rerun the deploy once fixed."
            ) from exc
        self.log(
            f"Autoscale: {new} runs {scale.min_instances} to {scale.max_instances} instances "
            "on CPU and requests per instance."
        )

    # ------------------------------------------------------------------ the rollout

    def run(self) -> RolloutReport:
        endpoint = self._endpoint()
        old = _live_colour(endpoint.traffic or {})
        new = next_colour(old)
        deployment = self.deployment  # the spec, loaded once: this rollout makes it the new colour
        deployment.name = new
        if not self.no_code:
            deployment.environment = self._environment()
        self._configure(deployment)
        report = RolloutReport(self.name, new, old, dict(endpoint.traffic or {}))
        report.scoring_uri = endpoint.scoring_uri
        self.log(
            f"Deploying {deployment.model} to {self.name} as {new} "
            f"({specs.model_settings_summary(deployment)}); {old or 'nothing'} serves now."
        )
        try:
            self.client.online_deployments.begin_create_or_update(deployment).result()
        except Exception as exc:
            cause = f"Creating deployment {new} failed: {_service_message(exc)}{self._logs(new)}"
            raise self._roll_back(new, old, cause) from exc
        try:
            self._monitor(endpoint, new)
            self._smoke(new)
            steps = self.steps if old is not None else [100]
            for share in steps:
                traffic = {new: share} if old is None else {new: share, old: 100 - share}
                self.log(f"Traffic: {', '.join(f'{k} {v}%' for k, v in traffic.items())}")
                self._set_traffic(traffic)
                report.steps.append(traffic)
                if self.step_wait_s:
                    self.sleep(self.step_wait_s)
                self._smoke(new)
        except RolloutError as exc:
            raise self._roll_back(new, old, str(exc)) from exc
        except Exception as exc:
            cause = f"Rollout of {new} failed: {_service_message(exc)}"
            raise self._roll_back(new, old, cause) from exc
        report.traffic = {new: 100}
        self._autoscale(endpoint, new)
        if old is not None and self.delete_old:
            self.log(f"Removing {old}: {self._remove(old)}.")
        return report


def rollout(
    ml_client: MLClient,
    *,
    endpoint_name: str | None = None,
    model: str | None = None,
    no_code: bool = False,
    steps: Sequence[int] = TRAFFIC_STEPS,
    step_wait_s: float = 0.0,
    delete_old: bool = False,
    digits: SampleDigits | None = None,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    sampling_rate: float | None = None,
    operations: azure_monitor.Operations | None = None,
) -> RolloutReport:
    """Roll ``model`` out to the endpoint as the idle colour; see the module docstring.

    ``sampling_rate`` overrides the share of requests the data collector keeps
    (deployment.yml's ``data_collector.sampling_rate``); ``operations``: the stack's Log
    Analytics workspace and instance range (none: no diagnostic or autoscale settings).
    """
    steps = list(steps)
    if (
        not steps
        or steps[-1] != 100
        or any(not 0 < s <= 100 for s in steps)
        or steps != sorted(steps)
    ):
        raise RolloutError(
            f"Traffic steps {steps} must rise within 1-100 and end at 100, e.g. 10 50 100."
        )
    spec = specs.MLFLOW_DEPLOYMENT_SPEC if no_code else specs.DEPLOYMENT_SPEC
    check_sampling_rate(sampling_rate)
    # loaded once: checked here, then made the new colour by the rollout
    deployment = deployment_for(spec, endpoint_name=endpoint_name, model=model)
    if sampling_rate is not None and deployment.data_collector is None:
        raise RolloutError(
            f"{spec.name} has no data_collector, so there is nothing to sample: leave out the "
            "sampling rate, or add a data_collector section to the spec."
        )
    endpoint = specs.load_endpoint(str(deployment.endpoint_name))
    problems = specs.check_deployment(deployment)
    if problems:
        raise RolloutError(f"{spec.name} is inconsistent: " + " ".join(problems))
    return _Rollout(
        ml_client,
        endpoint=endpoint,
        deployment=deployment,
        no_code=no_code,
        steps=steps,
        step_wait_s=step_wait_s,
        delete_old=delete_old,
        digits=digits or load_sample_digits(),
        log=log,
        sleep=sleep,
        sampling_rate=sampling_rate,
        operations=operations,
    ).run()


def check_sampling_rate(rate: float | None) -> None:
    """RolloutError unless ``rate`` is None or a share in (0, 1]."""
    if rate is not None and not 0 < rate <= 1:
        raise RolloutError(
            f"Sampling rate {rate:g} must be above 0 and at most 1 (the share of requests whose "
            "inputs and outputs the data collector keeps), e.g. 0.1."
        )


def deployment_for(spec: Path, **overrides: Any) -> ManagedOnlineDeployment:
    """The deployment ``rollout`` would create, as loaded before it becomes blue or green
    (``rollout`` loads it once with this; --dry-run prints it)."""
    return specs.load_deployment(spec, **overrides)
