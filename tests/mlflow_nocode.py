"""Azure ML's no-code (MLflow) scoring, emulated offline: ``score_nocode(model_dir, body)``.

An Azure ML no-code deployment of an MLflow model has no scoring script of ours: Azure ML runs
its own, under azureml-inference-server-http, with MLflow installed from the model's
requirements. Its documentation ("Guidelines for deploying MLflow models", section "Input
structure", learn.microsoft.com/azure/machine-learning/how-to-deploy-mlflow-models) says:

- the request body is JSON with the inputs under the key ``input_data`` (``mlflow models
  serve`` takes ``inputs``, ``instances`` or ``dataframe_split`` instead, and no
  ``input_data``: the two payloads are not interchangeable); an optional ``params``;
- a tensor input is a JSON list (``{"input_data": [[...], ...]}``), named tensors a dictionary
  of lists; a split-oriented DataFrame is ``{"input_data": {"columns", "index", "data"}}``;
- the model's signature decides how the input is parsed, and input that cannot be parsed
  that way fails the request.

The script Azure ML generates builds an inference-schema parameter type from the signature
(an unnamed tensor: a numpy array of the signature's dtype; named tensors: a dictionary of
them), decorates ``run(input_data, params=None)`` with it, calls the MLflow pyfunc model's
``predict`` and answers with the predictions made JSON-able as they are: for a tensor
output a bare list (``[[10 floats], ...]``), where ``mlflow models serve`` answers
``{"predictions": [[10 floats], ...]}``.

This module writes such a script (``NOCODE_SCORE_SCRIPT``) and runs it under the real
azureml-inference-server-http app (its Flask test client, the same request handling, status
codes and error bodies as the server), in a subprocess that cannot import this repository
(``python -I``, another working directory, ``AZUREML_MODEL_DIR`` and ``MLFLOW_MODEL_FOLDER``
set as Azure ML sets them). It is an emulation from the documentation, not Azure's code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

NOCODE_SCORE_SCRIPT = '''
"""The scoring script of an Azure ML no-code MLflow deployment, as documented (emulated)."""
import os

import mlflow
import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.standard_py_parameter_type import (
    StandardPythonParameterType,
)
from inference_schema.schema_decorators import input_schema
from mlflow.pyfunc.scoring_server import _get_jsonable_obj

MODEL_PATH = os.path.join(os.environ["AZUREML_MODEL_DIR"], os.environ["MLFLOW_MODEL_FOLDER"])
SIGNATURE = mlflow.models.Model.load(MODEL_PATH).signature


def _zeros(spec):
    shape = [1 if size == -1 else size for size in spec.shape]  # one row of a batch
    return np.zeros(shape, dtype=spec.type)


def _input_type():
    inputs = SIGNATURE.inputs
    if not inputs.is_tensor_spec():
        raise RuntimeError("this emulation covers tensor signatures only")
    if not inputs.has_input_names():
        return NumpyParameterType(_zeros(inputs.inputs[0]), enforce_shape=False)
    return StandardPythonParameterType(
        {
            spec.name: NumpyParameterType(_zeros(spec), enforce_shape=False)
            for spec in inputs.inputs
        }
    )


model = None


def init():
    global model
    model = mlflow.pyfunc.load_model(MODEL_PATH)


@input_schema("input_data", _input_type())
@input_schema("params", StandardPythonParameterType({}), optional=True)
def run(input_data, params=None):
    return _get_jsonable_obj(model.predict(input_data, params=params or None), "records")
'''

# Runs in the subprocess: bodies (a JSON list of strings) on stdin; the answers go to the
# file named by argv[1] (the server's print hook rewrites stdout).
_RUNNER = r"""
import importlib.util, json, sys
if importlib.util.find_spec("training") is not None:
    raise SystemExit("the repository is importable: the emulation would not be faithful")
from azureml_inference_server_http.server.create_app import create
client = create().test_client()
answers = []
for body in json.load(sys.stdin):
    answer = client.post("/score", data=body.encode(), content_type="application/json")
    answers.append([answer.status_code, answer.get_data(as_text=True)])
with open(sys.argv[1], "w") as out:
    json.dump(answers, out)
"""


def score_nocode_many(model_dir: Path, bodies: list[bytes]) -> list[tuple[int, Any]]:
    """(HTTP status, JSON body) for each request body, scored as a no-code deployment would,
    by one scoring process (the model loads once)."""
    model_dir = Path(model_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="nocode-") as folder:
        script = Path(folder) / "mlflow_score_script.py"
        script.write_text(NOCODE_SCORE_SCRIPT)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYTHON", "AZUREML_", "AML_", "MLFLOW_"))
        }
        env.update(
            AZUREML_MODEL_DIR=str(model_dir.parent),
            MLFLOW_MODEL_FOLDER=model_dir.name,
            AZUREML_ENTRY_SCRIPT=str(script),
            AML_APP_ROOT=folder,
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        answers_file = Path(folder) / "answers.json"
        result = subprocess.run(
            [sys.executable, "-I", "-c", _RUNNER, str(answers_file)],
            input=json.dumps([body.decode() for body in bodies]),
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        answers = json.loads(answers_file.read_text()) if answers_file.exists() else []
    if result.returncode != 0 or len(answers) != len(bodies):
        raise RuntimeError(
            f"the no-code scoring emulation failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-4000:]}"
        )
    return [(status, _json_or_text(text)) for status, text in answers]


def score_nocode(model_dir: Path, body: bytes) -> tuple[int, Any]:
    """(HTTP status, JSON body) of one request to a no-code deployment of ``model_dir``."""
    return score_nocode_many(model_dir, [body])[0]


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
