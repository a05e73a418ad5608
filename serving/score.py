"""Entry script for Azure ML managed online endpoints and ``azmlinfsrv``: ``init()`` and ``run()``.

A thin adapter over :class:`predictor.DigitClassifier`:

- ``init()`` loads the model from ``AZUREML_MODEL_DIR`` (the model folder or the folder above
  it, where Azure ML mounts registered models), warms it up, and publishes the API schema.
- ``run()`` takes the raw HTTP request (``@rawhttp``) so that every bad request gets a 4xx JSON
  body that says what is wrong and how to fix it, rather than the server's generic 500; it
  returns an ``AMLResponse`` with the status code.

Request ``{"data": [image, ...]}`` with each image 784 numbers or 28 lists of 28, scaled to
[0, 1]; response ``{"predictions": [digit, ...], "probabilities": [[10 floats], ...]}``.
``SCORING_MAX_BATCH`` (set in deployment.yml) caps the images per request (413 above it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

# The server loads this file by path, not as part of a package: make its siblings importable
# wherever the code folder is mounted (/var/azureml-app/<folder> on Azure, serving/ locally).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from predictor import (
    DEFAULT_MAX_BATCH,
    PIXELS,
    BadRequest,
    DigitClassifier,
    batch_too_large,
    max_body_bytes,
)

MAX_BATCH_ENV = "SCORING_MAX_BATCH"
_classifier: DigitClassifier | None = None
_max_body = 0
_JSON = {"Content-Type": "application/json"}
_DISCARD_LIMIT = 100 << 20  # what the endpoint's front end accepts (client_max_body_size 100m)


def _max_batch_from_env() -> int:
    raw = os.environ.get(MAX_BATCH_ENV, str(DEFAULT_MAX_BATCH))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_BATCH_ENV}={raw!r} must be a whole number of images, at least 1.")
    return value


def _publish_schema() -> None:
    """Register the JSON body's schema with inference-schema, so /swagger.json documents it.

    ``azmlinfsrv`` refuses a ``run()`` carrying both ``@rawhttp`` and ``@input_schema`` when it
    loads this script, yet builds /swagger.json from inference-schema's registry only after
    ``init()`` returns. The registry is keyed by module and function name, so registering a
    stand-in ``run(data)`` here documents the body that the real ``run()`` reads from the raw
    request (with ``data``, not ``request``, as the one property). The real-server tests check
    that /swagger.json carries this schema.
    """
    from inference_schema.parameter_types.standard_py_parameter_type import (
        StandardPythonParameterType,
    )
    from inference_schema.schema_decorators import input_schema, output_schema

    def run(data: list[list[float]]) -> dict[str, Any]:  # the documented shape; never called
        raise NotImplementedError

    run.__module__ = __name__
    images = StandardPythonParameterType([[0.0] * PIXELS])
    response = StandardPythonParameterType({"predictions": [7], "probabilities": [[0.1] * 10]})
    input_schema("data", images)(output_schema(response)(run))


def init() -> None:
    """Load and warm up the model; fail with a message saying what was expected where."""
    global _classifier, _max_body
    max_batch = _max_batch_from_env()
    _classifier = DigitClassifier.load(os.environ.get("AZUREML_MODEL_DIR"), max_batch=max_batch)
    _classifier.warm_up()
    _max_body = max_body_bytes(max_batch)
    _publish_schema()


def _error(exc: BadRequest, headers: dict[str, str] | None = None) -> AMLResponse:
    return AMLResponse(exc.to_body(), exc.status, headers or {}, json_str=True)


def _discard_body(request: AMLRequest) -> None:
    """Read an over-limit body without keeping it, up to a point, so that the client gets the
    413 rather than a reset connection; a body beyond that point is cut off."""
    remaining = min(request.content_length or 0, _DISCARD_LIMIT)
    while remaining > 0:
        chunk = request.stream.read(min(remaining, 1 << 20))
        if not chunk:
            break
        remaining -= len(chunk)


@rawhttp
def run(request: AMLRequest) -> AMLResponse:
    """Score one request; every client mistake becomes a 4xx with an explanation."""
    assert _classifier is not None, "init() has not run"
    if request.method != "POST":
        allow = {"Allow": "POST"}
        if request.method == "OPTIONS":
            return AMLResponse("", 200, allow)
        return _error(
            BadRequest(
                f"{request.method} is not supported on /score: POST a JSON body such as "
                '{"data": [[...784 numbers...]]}.',
                status=405,
                code="MethodNotAllowed",
            ),
            allow,
        )
    if (request.content_length or 0) > _max_body:
        _discard_body(request)
        return _error(batch_too_large(None, _classifier.max_batch))
    try:
        body = _classifier.score(request.get_data(cache=False))
    except BadRequest as exc:
        return _error(exc)
    return AMLResponse(body, 200, _JSON)
