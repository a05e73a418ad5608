"""The serving specs: valid for azure-ai-ml's own loaders, one shared definition, consistent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from scripts.endpoints import specs

ROOT = Path(__file__).resolve().parents[2]


def test_endpoint_spec_loads_with_entra_id_auth():
    endpoint = specs.load_endpoint()
    assert endpoint.auth_mode == "aad_token"
    assert endpoint.name == "mnist-digits"
    assert specs.load_endpoint("fork-digits").name == "fork-digits"


def test_blue_and_green_are_one_definition_with_another_name():
    blue = specs.load_deployment(name="blue")
    green = specs.load_deployment(name="green", model="azureml:tf-mnist:7")
    assert (blue.name, green.name) == ("blue", "green")
    assert green.model == "tf-mnist:7"
    blue_dict, green_dict = blue._to_dict(), green._to_dict()
    for d in (blue_dict, green_dict):
        d.pop("name"), d.pop("model")
    assert blue_dict == green_dict
    assert blue.code_configuration.scoring_script == "score.py"
    assert Path(blue.base_path, blue.code_configuration.code).resolve() == ROOT / "serving" / "code"


def test_every_spec_file_declares_its_schema():
    for path in (
        specs.ENDPOINT_SPEC,
        specs.DEPLOYMENT_SPEC,
        specs.MLFLOW_DEPLOYMENT_SPEC,
        specs.ENVIRONMENT_SPEC,
    ):
        schema = yaml.safe_load(path.read_text())["$schema"]
        assert re.fullmatch(
            r"https://azuremlschemas\.azureedge\.net/latest/\w+\.schema\.json", schema
        )


def test_no_code_deployment_has_no_scoring_script_or_environment():
    deployment = specs.load_deployment(specs.MLFLOW_DEPLOYMENT_SPEC)
    assert deployment.code_configuration is None
    assert deployment.environment is None
    assert deployment.endpoint_name != specs.load_endpoint().name  # another request format
    assert specs.check_deployment(deployment) == []


def test_server_settings_are_the_deployments_environment_variables():
    deployment = specs.load_deployment()
    assert specs.server_settings() == deployment.environment_variables
    assert {"WORKER_COUNT", "SCORING_TIMEOUT_MS", "SCORING_MAX_BATCH"} <= set(
        specs.server_settings()
    )


def test_environment_is_pinned_and_matches_the_tested_versions():
    environment = specs.load_serving_environment()
    image, tag = environment.image.rsplit(":", 1)
    assert image.startswith("mcr.microsoft.com/azureml/")
    assert re.fullmatch(r"\d{8}\.v\d+", tag), "pin a dated tag, not latest"
    assert "ubuntu24.04" in image  # a current base image
    pip = next(d for d in environment.conda_file["dependencies"] if isinstance(d, dict))["pip"]
    pins = dict(line.split("==") for line in pip)
    assert len(pins) == len(pip), f"every pip package pinned with ==: {pip}"
    local = dict(
        line.split("==")
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for package in ("tensorflow-cpu", "azureml-inference-server-http", "inference-schema"):
        assert pins[package] == local[package], package
    assert pins["azureml-inference-server-http"] == "1.4.1"  # 1.5.x cannot coexist with TF 2.21


@pytest.mark.slow
def test_deployment_settings_fit_what_the_real_server_measured(scoring_server, full_batch):
    """Probes against the measured start-up, the scoring timeout against a full batch."""
    _, _, reply = full_batch
    assert reply.status == 200
    startup = scoring_server.server.startup_seconds
    full_batch_ms = float(reply.headers["x-ms-run-fn-exec-ms"])
    problems = specs.check_deployment(
        specs.load_deployment(), startup_seconds=startup, full_batch_ms=full_batch_ms
    )
    assert problems == [], f"startup {startup:.1f} s, full batch {full_batch_ms:.0f} ms"


def _deployment(**variables: str):
    deployment = specs.load_deployment()
    deployment.environment_variables.update(variables)
    return deployment


def _one_problem(deployment, **measured) -> str:
    problems = specs.check_deployment(deployment, **measured)
    assert len(problems) == 1, problems
    return problems[0]


def test_check_finds_concurrency_that_does_not_match_the_workers():
    deployment = _deployment()
    deployment.request_settings.max_concurrent_requests_per_instance = 8
    problem = _one_problem(deployment)
    assert "max_concurrent_requests_per_instance is 8 but WORKER_COUNT is 4" in problem


def test_threaded_workers_multiply_the_concurrency():
    deployment = _deployment(GUNICORN_CMD_ARGS="--timeout 60 --threads 2")
    problem = _one_problem(deployment)
    assert "max_concurrent_requests_per_instance is 4 but WORKER_COUNT is 4" in problem
    assert "each worker serves 2 requests at once" in problem and "Set it to 8." in problem
    deployment.request_settings.max_concurrent_requests_per_instance = 8
    assert specs.check_deployment(deployment) == []
    deployment = _deployment(GUNICORN_CMD_ARGS="--threads=3")
    deployment.request_settings.max_concurrent_requests_per_instance = 12
    assert specs.check_deployment(deployment) == []
    problem = _one_problem(_deployment(GUNICORN_CMD_ARGS="--threads=many"))
    assert "GUNICORN_CMD_ARGS --threads must be a whole number, not 'many'" in problem
    assert "cannot be parsed" in _one_problem(_deployment(GUNICORN_CMD_ARGS="--threads '2"))


def test_check_finds_more_threads_than_cores():
    deployment = _deployment(TF_NUM_INTRAOP_THREADS="2")
    assert "than the 4 vCPUs of Standard_DS3_v2" in _one_problem(deployment)
    deployment = _deployment()
    deployment.instance_type = "Standard_DS2_v2"
    problems = specs.check_deployment(deployment)
    assert any("than the 2 vCPUs" in p for p in problems)


def test_check_finds_a_scoring_timeout_at_or_over_the_request_timeout():
    problem = _one_problem(_deployment(SCORING_TIMEOUT_MS="5000"))
    assert "SCORING_TIMEOUT_MS 5000" in problem and "request_timeout_ms 5000" in problem
    deployment = _deployment()
    deployment.environment_variables.pop("SCORING_TIMEOUT_MS")  # the server's default: an hour
    assert "SCORING_TIMEOUT_MS 3600000" in _one_problem(deployment)


def test_check_finds_a_timeout_too_short_for_a_full_batch():
    problem = _one_problem(_deployment(), full_batch_ms=1500)
    assert "A full batch took 1500 ms" in problem


def test_check_finds_probes_too_short_for_the_measured_startup():
    problem = _one_problem(specs.load_deployment(), startup_seconds=72)
    assert problem.startswith("readiness_probe gives up after 210 s, but the server took 72.0 s")
    problems = specs.check_deployment(specs.load_deployment(), startup_seconds=80)
    assert any(p.startswith("liveness_probe gives up after 230 s") for p in problems), problems
    # the slowest start measured (TensorFlow fallback, four workers on two busy cores): fits
    assert specs.check_deployment(specs.load_deployment(), startup_seconds=62.7) == []


def test_check_finds_bad_values_and_unknown_sizes():
    deployment = _deployment(WORKER_COUNT="four")
    assert "WORKER_COUNT must be a whole number" in " ".join(specs.check_deployment(deployment))
    deployment = _deployment()
    deployment.instance_type = "Standard_NC6"
    assert "is not one this template knows" in _one_problem(deployment)
    deployment = _deployment()
    deployment.liveness_probe.timeout = 10
    assert "liveness_probe.timeout 10 s must be below its period" in _one_problem(deployment)


def test_a_broken_spec_is_a_clear_error(tmp_path):
    broken = tmp_path / "deployment.yml"
    broken.write_text(
        specs.DEPLOYMENT_SPEC.read_text().replace("instance_count: 2", "instance_count: two")
    )
    with pytest.raises(specs.SpecError, match="is not a valid spec"):
        specs.load_deployment(broken)
    with pytest.raises(specs.SpecError, match="does not exist"):
        specs.load_deployment(tmp_path / "missing.yml")
