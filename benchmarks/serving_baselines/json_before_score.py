"""serving/code/score.py reading JSON as it did before issue 12 (benchmarks only).

The reference for "today's JSON" in ``benchmarks/serving_speed.py``'s batch measurement: the
same entry script, server, model and response, with the two things issue 12 changed on the JSON
path put back as they were at commit 1e2810f: the body read through the request's stream
(gunicorn's ``Body``, 1 KB at a time) and ``predictor.parse_request`` (``numpy.asarray`` over
the decoded lists, after three word searches for ``true``, ``false`` and ``null``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

CODE = Path(__file__).resolve().parents[2] / "serving" / "code"
sys.path.insert(0, str(CODE))

import predictor  # noqa: E402  (the sibling score.py imports, from serving/code/)
import score  # noqa: E402
from predictor import (  # noqa: E402
    DEFAULT_MAX_BATCH,
    REQUEST_EXAMPLE,
    BadRequest,
    ImageFormat,
    _decode,
    _describe_value,
    _explain_bad_data,
    _names,
    as_batch,
    batch_too_large,
)


def parse_request_before(
    body: bytes, form: ImageFormat, *, max_batch: int = DEFAULT_MAX_BATCH
) -> np.ndarray:
    """predictor.parse_request as of commit 1e2810f."""
    payload: Any = _decode(body)
    if not isinstance(payload, dict):
        raise BadRequest(
            f"The request body is a JSON {type(payload).__name__}, not an object. Send "
            f'{{"data": [...]}}, a batch of images: {REQUEST_EXAMPLE}.',
            code="WrongKeys",
        )
    if set(payload) != {"data"}:
        unknown = sorted(set(payload) - {"data"})
        what = f"unknown key(s) {_names(unknown)}" if unknown else ""
        missing = 'no "data" key' if "data" not in payload else ""
        problems = " and ".join(p for p in (missing, what) if p)
        raise BadRequest(f"The request has {problems}.", code="WrongKeys")
    data = payload["data"]
    if not isinstance(data, list):
        raise BadRequest(f'"data" is {_describe_value(data)}.', code="InvalidShape")
    if not data:
        raise BadRequest('"data" is empty.', code="EmptyBatch")
    if not isinstance(data[0], list):
        raise _explain_bad_data(data, form)
    if len(data) > max_batch:
        raise batch_too_large(len(data), max_batch)
    if b"true" in body or b"false" in body or b"null" in body:
        raise _explain_bad_data(data, form)
    return as_batch(data, form)


predictor.parse_request = parse_request_before  # DigitClassifier.parse looks it up here
score._body_stream = lambda request: request.stream  # _read_body looks it up here
init = score.init
run = score.run
