"""The batch endpoint, deployment and environment specs load with azure-ai-ml's own loaders and
agree with the infrastructure (the CPU cluster that scales to zero) and with the scoring code."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml
from azure.ai.ml import (
    load_batch_deployment,
    load_batch_endpoint,
    load_environment,
    load_online_deployment,
)
from azure.ai.ml._utils._asset_utils import get_ignore_file

from infra.config import load_project, read_stack_values, validate_config

BATCH = Path(__file__).resolve().parents[2] / "serving" / "batch"


def test_specs_load_with_azure_ai_ml_and_declare_their_schema() -> None:
    endpoint = load_batch_endpoint(BATCH / "endpoint.yml")
    deployment = load_batch_deployment(BATCH / "deployment.yml")
    assert (endpoint.name, endpoint.auth_mode) == ("mnist-digits-batch", "aad_token")
    assert deployment.endpoint_name == endpoint.name
    assert deployment.code_configuration.scoring_script == "batch_score.py"
    assert (deployment.output_action, deployment.output_file_name) == (
        "append_row",
        "predictions.csv",
    )
    assert deployment.model == "tf-mnist@latest"
    schemas = {
        name: yaml.safe_load((BATCH / name).read_text())["$schema"]
        for name in ("endpoint.yml", "deployment.yml", "environment/environment.yml")
    }
    assert schemas == {
        "endpoint.yml": "https://azuremlschemas.azureedge.net/latest/batchEndpoint.schema.json",
        "deployment.yml": "https://azuremlschemas.azureedge.net/latest/batchDeployment.schema.json",
        "environment/environment.yml": (
            "https://azuremlschemas.azureedge.net/latest/environment.schema.json"
        ),
    }


def test_the_deployment_runs_on_the_cpu_cluster_that_scales_to_zero() -> None:
    deployment = load_batch_deployment(BATCH / "deployment.yml")
    project = load_project()
    for stack in ("dev", "prod"):
        cpu = validate_config(read_stack_values(stack, project), project).cpu
        assert cpu is not None and cpu.name == "cpu-cluster"
        assert deployment.compute == cpu.name  # the loader drops the azureml: prefix
        assert cpu.min_nodes == 0  # no node, no cost, between jobs
        assert 1 <= deployment.resources.instance_count <= cpu.max_nodes
        workers = deployment.resources.instance_count * deployment.max_concurrency_per_instance
        assert workers <= cpu.max_nodes * cpu.vcpus_per_node


def test_the_environment_has_what_the_batch_driver_and_the_script_import() -> None:
    deployment = load_batch_deployment(BATCH / "deployment.yml")
    environment = load_environment(BATCH / "environment" / "environment.yml")
    assert deployment.environment == f"{environment.name}:{environment.version}"
    pins = {
        line.strip("- ").split("==")[0]: line.split("==")[1].split()[0]
        for line in (BATCH / "environment" / "conda.yml").read_text().splitlines()
        if "==" in line
    }
    assert {"azureml-core", "azureml-dataset-runtime[fuse]", "pillow", "keras", "numpy"} <= set(
        pins
    )
    script = ast.parse((BATCH / "code" / "batch_score.py").read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(script)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    third_party = imported - {"__future__", "csv", "io", "logging", "math", "os", "pathlib"}
    assert third_party - {"typing"} == {"numpy", "PIL", "keras"}  # nothing of this repository
    assert "PIL" not in pins and "pillow" in pins


def _uploaded(code: Path, into: Path) -> list[str]:
    """What azure-ai-ml uploads of a copy of ``code`` after a test run and an editor left their
    caches in it (the ignore file of the folder decides, as on upload)."""
    import shutil

    copy = into / code.name
    shutil.copytree(code, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "score.cpython-311.pyc").write_bytes(b"\x00")
    (copy / "stray.pyc").write_bytes(b"\x00")
    ignore = get_ignore_file(copy)
    return sorted(
        p.relative_to(copy).as_posix()
        for p in copy.rglob("*")
        if p.is_file() and not ignore.is_file_excluded(p)
    )


def test_only_the_scoring_script_is_uploaded(tmp_path: Path) -> None:
    deployment = load_batch_deployment(BATCH / "deployment.yml")
    code = Path(deployment.base_path, deployment.code_configuration.code).resolve()
    assert code == BATCH / "code"
    assert _uploaded(code, tmp_path) == ["batch_score.py"]


def test_the_online_code_folder_uploads_its_modules_and_no_caches(tmp_path: Path) -> None:
    deployment = load_online_deployment(BATCH.parent / "deployment.yml")
    code = Path(deployment.base_path, deployment.code_configuration.code).resolve()
    assert code == BATCH.parent / "code"
    assert _uploaded(code, tmp_path) == [
        "contract.py",
        "npy_body.py",
        "predictor.py",
        "request_log.py",
        "score.py",
    ]
