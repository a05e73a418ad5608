"""Schemathesis (an OpenAPI fuzzer) against score.py under the real azmlinfsrv and a real model.

It reads the server's own /swagger.json and generates requests from it: valid ones must be
scored (200, and the answer must match the documented response schema), invalid ones refused
with a documented 4xx, and nothing may give a 5xx. Those are the checks that belong to the
scoring script. Authentication is the managed endpoint's front end (Entra ID tokens, checked
before a request reaches the container), so its checks are left out and no security
parameters are generated. Bounded: a fixed seed and a few dozen cases per operation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.code.contract import Shapes, complete

CHECKS = [
    "not_a_server_error",
    "positive_data_acceptance",
    "negative_data_rejection",
    "response_schema_conformance",
]
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["200"]
[checks.negative_data_rejection]
expected-statuses = ["400", "408", "413"]
"""


@pytest.mark.slow
@pytest.mark.parametrize(("version", "examples"), [("3", 30), ("2", 15)])
def test_schemathesis_finds_nothing_in_the_scoring_script(
    scoring_server, tmp_path: Path, version: str, examples: int
):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{scoring_server.server.url}/swagger.json?version={version}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(examples),
        "--seed",
        "1",
        "--workers",
        "1",
        "--generation-with-security-parameters",
        "false",  # authentication is the endpoint's front end, not the scoring script
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output, output[-3000:]
    assert "Operations:       2 selected / 2 total" in output  # the health route and /score


def _template(version: str) -> dict:
    """azmlinfsrv's own template for a Swagger version, as its builder fills it in."""
    import azureml_inference_server_http.server as server

    name = "swagger2_template.json" if version == "2" else "swagger3_template.json"
    text = (Path(server.__file__).parent / name).read_text().replace("$PATH_PREFIX$", "")
    return json.loads(text)


@pytest.mark.parametrize("version", ["2", "3"])
def test_the_contract_follows_the_model_and_the_batch_limit(version):
    """Sizes come from the model (here images of 6 rows of 8, 3 classes) and SCORING_MAX_BATCH
    (7)."""
    shapes = Shapes(pixels=48, image=(6, 8), classes=3, max_batch=7)
    doc = complete(_template(version), version, shapes)
    schemas = doc["definitions"] if version == "2" else doc["components"]["schemas"]
    data = schemas["ServiceInput"]["properties"]["data"]
    batches = [data] if version == "2" else data["oneOf"]
    assert [(b["minItems"], b["maxItems"]) for b in batches] == [(1, 7)] * len(batches)
    assert (batches[0]["items"]["minItems"], batches[0]["items"]["maxItems"]) == (48, 48)
    if version != "2":
        rows = batches[1]["items"]
        assert (rows["minItems"], rows["maxItems"]) == (6, 6)
        assert (rows["items"]["minItems"], rows["items"]["maxItems"]) == (8, 8)
    output = schemas["ServiceOutput"]["properties"]
    assert output["predictions"]["items"] == {"type": "integer", "minimum": 0, "maximum": 2}
    assert output["probabilities"]["items"]["maxItems"] == 3


def test_a_flat_model_whose_images_have_no_rows_has_one_form():
    doc = complete(_template("3"), "3", Shapes(pixels=10, image=None, classes=2, max_batch=4))
    data = doc["components"]["schemas"]["ServiceInput"]["properties"]["data"]
    assert "oneOf" not in data and data["items"]["maxItems"] == 10


@pytest.mark.parametrize("version", ["2", "3"])
def test_the_contract_states_the_npy_body_with_the_models_shapes(version):
    shapes = Shapes(pixels=48, image=(6, 8), classes=3, max_batch=7)
    doc = complete(_template(version), version, shapes)
    operation = doc["paths"]["/score"]["post"]
    stated = (
        "Content-Type: application/x-npy): the bytes numpy.save writes for an array of shape "
        "(n, 48) or (n, 6, 8), n from 1 to 7, dtype float32 with values in [0, 1] or uint8 0-255"
    )
    assert stated in operation["description"]
    if version == "3":
        content = operation["requestBody"]["content"]
        assert sorted(content) == ["application/json", "application/x-npy"]
        npy = content["application/x-npy"]["schema"]
        assert (npy["type"], npy["format"]) == ("string", "binary")
        assert stated in npy["description"]
    assert "415" in operation["responses"]
