"""The serving specs (YAML, loaded with azure-ai-ml's own loaders) and the rules they must keep.

Client side only (``python -m scripts serve|deploy``, the tests): not uploaded to the endpoint.

- :func:`server_settings` reads the scoring server's environment variables from
  ``deployment.yml``, the single source that ``serve`` and the tests start ``azmlinfsrv`` with.
- :func:`load_deployment` turns the one deployment definition into blue or green (or points it
  at another endpoint or model) with ``params_override``, as ``az ml ... --set`` would.
- :func:`check_deployment` lists every way the numbers disagree: concurrency against workers
  and cores, the scoring timeout against the request timeout and the measured time of a full
  batch, the probes against the measured start-up time.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from azure.ai.ml.entities import Environment, ManagedOnlineDeployment, OnlineEndpoint

SERVING_DIR = Path(__file__).resolve().parents[2] / "serving"
ENDPOINT_SPEC = SERVING_DIR / "endpoint.yml"
DEPLOYMENT_SPEC = SERVING_DIR / "deployment.yml"
MLFLOW_DEPLOYMENT_SPEC = SERVING_DIR / "mlflow-deployment.yml"
ENVIRONMENT_SPEC = SERVING_DIR / "environment" / "environment.yml"
COLOURS = ("blue", "green")

# vCPUs of the instance types this template expects for CPU scoring (Azure ML's list of
# managed online endpoint SKUs). Add yours here if you change instance_type.
INSTANCE_VCPUS: dict[str, int] = {
    "Standard_DS2_v2": 2,
    "Standard_DS3_v2": 4,
    "Standard_DS4_v2": 8,
    "Standard_DS5_v2": 16,
    "Standard_F2s_v2": 2,
    "Standard_F4s_v2": 4,
    "Standard_F8s_v2": 8,
    "Standard_F16s_v2": 16,
    "Standard_F32s_v2": 32,
    "Standard_E2s_v3": 2,
    "Standard_E4s_v3": 4,
    "Standard_E8s_v3": 8,
    "Standard_E16s_v3": 16,
    "Standard_D2as_v4": 2,
    "Standard_D4as_v4": 4,
    "Standard_D8as_v4": 8,
    "Standard_D16as_v4": 16,
}

# Azure ML's defaults for what a deployment spec leaves out (managed online endpoints).
DEFAULT_REQUEST_TIMEOUT_MS = 5000
DEFAULT_MAX_CONCURRENT = 1
DEFAULT_PROBE = {"initial_delay": 10, "period": 10, "timeout": 2, "failure_threshold": 30}
# azmlinfsrv's defaults.
DEFAULT_WORKER_COUNT = 1
DEFAULT_SCORING_TIMEOUT_MS = 3_600_000

# Margins. Azure nodes can be slower than the machine that measured, and a request also spends
# time in the network and the gateway's queue before it reaches the server.
STARTUP_SAFETY = 3.0  # probes wait at least 3x the measured start-up before giving up
FULL_BATCH_SAFETY = 4.0  # the scoring timeout is at least 4x a measured full batch
GATEWAY_MARGIN_MS = 500  # request_timeout_ms minus SCORING_TIMEOUT_MS
MAX_PROBE_BUDGET_S = 600  # a container that has not started in 10 minutes is broken


class SpecError(Exception):
    """A spec file is missing, is not valid YAML, or fails azure-ai-ml's validation."""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"Cannot read {path}: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold a YAML mapping (a deployment spec).")
    return data


def server_settings(spec: Path = DEPLOYMENT_SPEC) -> dict[str, str]:
    """The environment variables the deployment gives the scoring server, as strings."""
    variables = _read_yaml(spec).get("environment_variables") or {}
    if not isinstance(variables, dict):
        raise SpecError(f"environment_variables in {spec} must be a mapping of names to values.")
    return {str(name): str(value) for name, value in variables.items()}


def _load(loader: Any, path: Path, overrides: dict[str, Any]) -> Any:
    from azure.ai.ml.exceptions import ValidationException
    from marshmallow import ValidationError

    if not path.is_file():
        raise SpecError(f"Spec file {path} does not exist.")
    params = [{key: value} for key, value in overrides.items() if value is not None]
    try:
        return loader(path, params_override=params)
    except (ValidationException, ValidationError) as exc:
        raise SpecError(f"{path} is not a valid spec: {exc}") from exc


def load_endpoint(name: str | None = None, spec: Path = ENDPOINT_SPEC) -> OnlineEndpoint:
    """The managed online endpoint spec, optionally under another name."""
    from azure.ai.ml import load_online_endpoint

    return _load(load_online_endpoint, spec, {"name": name})


def load_deployment(
    spec: Path = DEPLOYMENT_SPEC,
    *,
    name: str | None = None,
    endpoint_name: str | None = None,
    model: str | None = None,
    environment: str | None = None,
) -> ManagedOnlineDeployment:
    """One deployment from the shared definition: blue, green, another endpoint or model."""
    from azure.ai.ml import load_online_deployment

    overrides = {
        "name": name,
        "endpoint_name": endpoint_name,
        "model": model,
        "environment": environment,
    }
    return _load(load_online_deployment, spec, overrides)


def load_serving_environment(spec: Path = ENVIRONMENT_SPEC) -> Environment:
    """The scoring environment spec (base image and pinned conda file)."""
    from azure.ai.ml import load_environment

    return _load(load_environment, spec, {})


@dataclass(frozen=True)
class Probe:
    initial_delay: int
    period: int
    timeout: int
    failure_threshold: int

    @property
    def budget_s(self) -> int:
        """Seconds from container start until the probe can have failed for good."""
        return self.initial_delay + self.period * self.failure_threshold


def _probe(settings: Any) -> Probe:
    values = dict(DEFAULT_PROBE)
    if settings is not None:
        values.update({k: v for k, v in vars(settings).items() if k in values and v is not None})
    return Probe(**values)


def _int_setting(variables: dict[str, str], name: str, default: int, problems: list[str]) -> int:
    raw = variables.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"environment_variables.{name} must be a whole number, not {raw!r}.")
        return default
    if value < 1:
        problems.append(f"environment_variables.{name} must be at least 1, not {value}.")
    return value


def gunicorn_threads(variables: dict[str, str], problems: list[str]) -> int:
    """Request threads per worker: ``--threads N`` in ``GUNICORN_CMD_ARGS``, else 1.

    azmlinfsrv starts gunicorn's sync workers (one request at a time each); gunicorn reads
    ``GUNICORN_CMD_ARGS`` from the environment, and ``--threads`` above 1 makes each worker a
    threaded one that serves that many requests at once.
    """
    try:
        words = shlex.split(variables.get("GUNICORN_CMD_ARGS", ""))
    except ValueError as exc:
        problems.append(f"environment_variables.GUNICORN_CMD_ARGS cannot be parsed: {exc}.")
        return 1
    threads = "1"
    for i, word in enumerate(words):
        if word == "--threads" and i + 1 < len(words):
            threads = words[i + 1]
        elif word.startswith("--threads="):
            threads = word.partition("=")[2]
    return _int_setting(
        {"GUNICORN_CMD_ARGS --threads": threads}, "GUNICORN_CMD_ARGS --threads", 1, problems
    )


def check_deployment(
    deployment: ManagedOnlineDeployment,
    *,
    startup_seconds: float | None = None,
    full_batch_ms: float | None = None,
) -> list[str]:
    """Every inconsistency in a deployment's serving settings, as sentences (empty: none).

    ``startup_seconds`` (time to a healthy server) and ``full_batch_ms`` (run() time of a
    request at SCORING_MAX_BATCH) are measurements under the real server, when available.
    """
    problems: list[str] = []
    variables = {k: str(v) for k, v in (deployment.environment_variables or {}).items()}
    workers = _int_setting(variables, "WORKER_COUNT", DEFAULT_WORKER_COUNT, problems)
    request_threads = gunicorn_threads(variables, problems)
    scoring_ms = _int_setting(variables, "SCORING_TIMEOUT_MS", DEFAULT_SCORING_TIMEOUT_MS, problems)
    settings = deployment.request_settings
    request_ms = (settings and settings.request_timeout_ms) or DEFAULT_REQUEST_TIMEOUT_MS
    concurrent = (settings and settings.max_concurrent_requests_per_instance) or (
        DEFAULT_MAX_CONCURRENT
    )

    vcpus = INSTANCE_VCPUS.get(deployment.instance_type or "")
    if vcpus is None:
        problems.append(
            f"instance_type {deployment.instance_type!r} is not one this template knows; use "
            f"one of {', '.join(INSTANCE_VCPUS)} or add it with its vCPUs to "
            "scripts/endpoints/specs.py INSTANCE_VCPUS."
        )
    else:
        threads = _int_setting(variables, "TF_NUM_INTRAOP_THREADS", vcpus, problems)
        if workers * threads > vcpus:
            problems.append(
                f"WORKER_COUNT {workers} x TF_NUM_INTRAOP_THREADS {threads} is more threads "
                f"than the {vcpus} vCPUs of {deployment.instance_type}: workers would fight over "
                "cores. Lower one of them."
            )
    if concurrent != workers * request_threads:
        serves = (
            "each azmlinfsrv worker serves one request at a time"
            if request_threads == 1
            else f"each worker serves {request_threads} requests at once (GUNICORN_CMD_ARGS "
            f"--threads {request_threads}), {workers * request_threads} in all"
        )
        problems.append(
            f"request_settings.max_concurrent_requests_per_instance is {concurrent} but "
            f"WORKER_COUNT is {workers}: {serves}, so more requests only queue and fewer leave "
            f"workers idle. Set it to {workers * request_threads}."
        )
    if scoring_ms + GATEWAY_MARGIN_MS > request_ms:
        problems.append(
            f"SCORING_TIMEOUT_MS {scoring_ms} must be at least {GATEWAY_MARGIN_MS} ms below "
            f"request_settings.request_timeout_ms {request_ms}, so that a slow request ends "
            "with the server's error, not the gateway's timeout."
        )
    if full_batch_ms is not None and full_batch_ms * FULL_BATCH_SAFETY > scoring_ms:
        problems.append(
            f"A full batch took {full_batch_ms:.0f} ms here; SCORING_TIMEOUT_MS {scoring_ms} "
            f"leaves less than {FULL_BATCH_SAFETY:g}x that for slower nodes. Raise it (and "
            "request_timeout_ms) or lower SCORING_MAX_BATCH."
        )
    if "SCORING_MAX_BATCH" in variables:
        _int_setting(variables, "SCORING_MAX_BATCH", 1, problems)

    for kind in ("readiness_probe", "liveness_probe"):
        probe = _probe(getattr(deployment, kind))
        if probe.timeout >= probe.period:
            problems.append(
                f"{kind}.timeout {probe.timeout} s must be below its period {probe.period} s."
            )
        if probe.budget_s > MAX_PROBE_BUDGET_S:
            problems.append(
                f"{kind} waits {probe.budget_s} s (initial_delay + period x failure_threshold) "
                f"before acting, over {MAX_PROBE_BUDGET_S} s: a stuck container would go "
                "unnoticed. Lower failure_threshold or period."
            )
        if startup_seconds is not None and probe.budget_s < STARTUP_SAFETY * startup_seconds:
            problems.append(
                f"{kind} gives up after {probe.budget_s} s, but the server took "
                f"{startup_seconds:.1f} s to start here; allow at least {STARTUP_SAFETY:g}x "
                "that (raise initial_delay or failure_threshold)."
            )
    readiness = _probe(deployment.readiness_probe)
    liveness = _probe(deployment.liveness_probe)
    if readiness.initial_delay > liveness.initial_delay:
        problems.append(
            "readiness_probe.initial_delay must not exceed liveness_probe.initial_delay: a "
            "ready container should not wait on the liveness check to receive traffic."
        )
    return problems


def model_settings_summary(deployment: ManagedOnlineDeployment) -> str:
    """One line for messages: what a deployment runs on."""
    variables = deployment.environment_variables or {}
    return (
        f"{deployment.instance_count} x {deployment.instance_type}, "
        f"WORKER_COUNT={variables.get('WORKER_COUNT', DEFAULT_WORKER_COUNT)}"
    )
