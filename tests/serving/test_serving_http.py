"""serving/code/score.py under the real azmlinfsrv, over HTTP on loopback, with a trained model.

The published API and the answers to bad requests are checked for both built-in models (the
DNN and the CNN, ``each_server``): they take the same images, so every shape, status and message
is the same. tests/serving/test_serving_cnn.py scores real images with the CNN.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.endpoints.local_server import LocalServer, ServerError
from tests.serving.server_fixtures import listening_addresses

pytestmark = pytest.mark.slow

MAX_BATCH = 512  # deployment.yml's SCORING_MAX_BATCH; checked below against the server's settings


def _check_scores(body: dict, n: int) -> np.ndarray:
    """Response properties every successful answer must have; returns the probabilities."""
    assert set(body) == {"predictions", "probabilities"}
    probabilities = np.asarray(body["probabilities"])
    assert probabilities.shape == (n, 10)
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert body["predictions"] == probabilities.argmax(axis=1).tolist()
    assert all(isinstance(p, int) for p in body["predictions"])
    return probabilities


def test_health_route_answers_once_init_has_run(scoring_server):
    reply = scoring_server.client.request("GET", "/")
    assert (reply.status, reply.body) == (200, b"Healthy")
    assert scoring_server.settings["SCORING_MAX_BATCH"] == str(MAX_BATCH)
    assert scoring_server.server.startup_seconds is not None


PIXEL = {"type": "number", "minimum": 0, "maximum": 1}
FLAT_BATCH = {  # 1 to 512 images of 784 pixels
    "type": "array",
    "minItems": 1,
    "maxItems": 512,
    "items": {"type": "array", "minItems": 784, "maxItems": 784, "items": PIXEL},
}
ROWS_BATCH = {  # 1 to 512 images of 28 rows of 28 pixels
    "type": "array",
    "minItems": 1,
    "maxItems": 512,
    "items": {
        "type": "array",
        "minItems": 28,
        "maxItems": 28,
        "items": {"type": "array", "minItems": 28, "maxItems": 28, "items": PIXEL},
    },
}


def _without(schema: dict, *keys: str) -> dict:
    return {k: v for k, v in schema.items() if k not in keys}


@pytest.mark.parametrize("version", ["2", "3", "3.1"])
def test_swagger_states_exactly_what_run_accepts_and_returns(each_server, version):
    reply = each_server.client.request("GET", f"/swagger.json?version={version}")
    assert reply.status == 200
    doc = reply.json()
    if version == "2":
        schemas, prefix = doc["definitions"], "#/definitions/"
        operation = doc["paths"]["/score"]["post"]
        assert operation["parameters"][0]["required"] is True
        responses = {code: r["schema"]["$ref"] for code, r in operation["responses"].items()}
    else:
        schemas, prefix = doc["components"]["schemas"], "#/components/schemas/"
        operation = doc["paths"]["/score"]["post"]
        assert operation["requestBody"]["required"] is True
        responses = {
            code: r["content"]["application/json"]["schema"]["$ref"]
            for code, r in operation["responses"].items()
        }
    expected_version = {"2": "2.0", "3": "3.0.3", "3.1": "3.1.0"}[version]
    assert doc.get("openapi", doc.get("swagger")) == expected_version
    request = schemas["ServiceInput"]
    assert request["required"] == ["data"] and request["additionalProperties"] is False
    data = _without(request["properties"]["data"], "description")
    # Swagger 2.0 has no oneOf: it states the flat form, which every model takes.
    assert data == (FLAT_BATCH if version == "2" else {"oneOf": [FLAT_BATCH, ROWS_BATCH]})
    assert len(request["example"]["data"][0]) == 784

    response = schemas["ServiceOutput"]
    assert response["required"] == ["predictions", "probabilities"]
    assert response["additionalProperties"] is False
    predictions = _without(response["properties"]["predictions"], "description")
    assert predictions == {
        "type": "array",
        "minItems": 1,
        "maxItems": 512,
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
    }
    probabilities = _without(response["properties"]["probabilities"], "description")
    ten = {"type": "array", "minItems": 10, "maxItems": 10, "items": PIXEL}
    assert probabilities == {"type": "array", "minItems": 1, "maxItems": 512, "items": ten}

    assert responses == {
        "200": prefix + "ServiceOutput",
        "400": prefix + "ScoringError",
        "408": prefix + "ScoringError",
        "413": prefix + "ScoringError",
        "415": prefix + "ScoringError",  # a .npy body sent with another Content-Type
        "default": prefix + "ErrorResponse",  # the server's own errors: {"message": ...}
    }
    npy = "(n, 784) or (n, 28, 28), n from 1 to 512, dtype float32 with values in [0, 1] or uint8"
    assert npy in operation["description"]
    if version != "2":  # OpenAPI 3: the second content type of the request body
        content = operation["requestBody"]["content"]
        assert sorted(content) == ["application/json", "application/x-npy"]
        assert npy in content["application/x-npy"]["schema"]["description"]
    error = schemas["ScoringError"]
    assert error["required"] == ["error"] and error["additionalProperties"] is False
    assert error["properties"]["error"]["required"] == ["code", "message"]


def test_server_listens_on_loopback_only(scoring_server):
    """azmlinfsrv asks gunicorn for 0.0.0.0; the local server must listen on 127.0.0.1."""
    port = scoring_server.server.port
    log = scoring_server.server.log_path.read_text()
    assert f"Listening at: http://127.0.0.1:{port} " in log, log[-2000:]
    assert "0.0.0.0" not in log
    assert listening_addresses(port) == ["127.0.0.1"]


def test_scores_real_mnist_test_images_accurately(full_batch):
    _, labels, reply = full_batch
    assert reply.status == 200, reply.body[:500]
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    _check_scores(body, MAX_BATCH)
    accuracy = float((np.asarray(body["predictions"]) == labels).mean())
    assert accuracy >= 0.95, accuracy  # two epochs reach about 97%


def test_28x28_images_score_the_same_as_flat_ones(scoring_server, full_batch):
    images, _, flat = full_batch
    reply = scoring_server.client.score({"data": images[:64].tolist()})  # 64 x 28 x 28
    assert reply.status == 200, reply.body[:500]
    body = reply.json()
    _check_scores(body, 64)
    assert body["predictions"] == flat.json()["predictions"][:64]
    np.testing.assert_allclose(
        body["probabilities"], flat.json()["probabilities"][:64], rtol=1e-5, atol=1e-6
    )


def test_single_image_and_integer_pixels(scoring_server):
    reply = scoring_server.client.score({"data": [[0] * 783 + [1]]})
    assert reply.status == 200, reply.body
    _check_scores(reply.json(), 1)


def test_content_type_is_not_required(scoring_server):
    reply = scoring_server.client.request(
        "POST", "/score", json.dumps({"data": [[0.5] * 784]}), {"Content-Type": "text/plain"}
    )
    assert reply.status == 200, reply.body


def _image(value: object = 0.0, n: int = 784) -> str:
    return "[" + ", ".join([json.dumps(value) if not isinstance(value, str) else value] * n) + "]"


def _with_pixel(pixel: str, at: int = 3) -> bytes:
    values = ["0.0"] * 784
    values[at] = pixel
    return ('{"data": [[' + ", ".join(values) + "]]}").encode()


ROWS_28 = json.dumps([[0.0] * 28] * 28)
ROWS_27 = json.dumps({"data": [[[0.0] * 28] * 5 + [[0.0] * 27] + [[0.0] * 28] * 22]})

# (id, body, status, error code, fragments the message must contain)
BAD_REQUESTS = [
    ("not-json", b"data=0.1,0.2", 400, "NotJson", ["not valid JSON", '{"data"']),
    ("truncated-json", b'{"data": [[0.1, 0.2', 400, "NotJson", ["not valid JSON", "line 1"]),
    ("empty-body", b"", 400, "EmptyBody", ["empty"]),
    ("not-utf8", b'{"data": [[\xff\xfe]]}', 400, "NotUtf8", ["not UTF-8", "byte 0xff"]),
    ("utf16", '{"data": []}'.encode("utf-16"), 400, "NotUtf8", ["UTF-8"]),
    ("json-list", f"[{_image()}]".encode(), 400, "WrongKeys", ["not an object", '"data"']),
    ("wrong-key", f'{{"images": [{_image()}]}}'.encode(), 400, "WrongKeys",
     ['no "data" key', '"images"']),
    ("mlflow-format", f'{{"input_data": [{_image()}]}}'.encode(), 400, "WrongKeys",
     ["MLflow", '"data"']),
    ("extra-key", f'{{"data": [{_image()}], "debug": true}}'.encode(), 400, "WrongKeys",
     ['unknown key(s) "debug"']),
    ("data-not-list", b'{"data": "0.1, 0.2"}', 400, "InvalidShape", ["the string", "list"]),
    ("empty-batch", b'{"data": []}', 400, "EmptyBatch", ["at least one image"]),
    ("unbatched-image", f'{{"data": {_image()}}}'.encode(), 400, "InvalidShape",
     ["single image", "wrap it in a list"]),
    ("short-image", f'{{"data": [{_image(n=783)}]}}'.encode(), 400, "InvalidShape",
     ["Image 0 has 783 values, expected 784"]),
    ("ragged-batch", f'{{"data": [{_image()}, {_image(n=700)}]}}'.encode(), 400, "InvalidShape",
     ["Image 1 has 700 values"]),
    ("ragged-rows", ROWS_27.encode(), 400, "InvalidShape", ["Row 5 of image 0 has 27 values"]),
    ("string-pixel", _with_pixel('"0.5"'), 400, "InvalidValue",
     ["Pixel 3 of image 0", 'string "0.5"', "not a number"]),
    ("null-pixel", _with_pixel("null"), 400, "InvalidValue", ["Pixel 3 of image 0 is null"]),
    ("bool-pixel", _with_pixel("true"), 400, "InvalidValue", ["Pixel 3 of image 0 is true"]),
    ("list-pixel", _with_pixel("[0.1]"), 400, "InvalidShape", ["mixes numbers and lists"]),
    ("nan", _with_pixel("NaN"), 400, "InvalidValue", ["Pixel 3 of image 0 is nan", "finite"]),
    ("infinity", _with_pixel("-Infinity", at=700), 400, "InvalidValue",
     ["Pixel 700 of image 0 is -inf"]),
    ("0-255-pixels", _with_pixel("255"), 400, "InvalidValue",
     ["outside [0, 1]", "divide 0-255 pixel values by 255"]),
    ("negative", _with_pixel("-0.1"), 400, "InvalidValue", ["-0.1, outside [0, 1]"]),
    ("huge-int", _with_pixel("1" + "0" * 400), 400, "InvalidValue", ["outside [0, 1]"]),
    ("deep-nesting", b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
     "InvalidShape", ["too deeply"]),
    ("deep-objects", b'{"data": ' + b'{"a": ' * 100_000 + b"0" + b"}" * 100_001, 400,
     "InvalidShape", ["too deeply"]),
    ("5000-digit-int", _with_pixel("1" * 5000), 400, "NotJson",
     ["more than 4,300 digits", "between 0 and 1"]),
    ("huge-exponent", _with_pixel("1e999999"), 400, "InvalidValue", ["Pixel 3 of image 0 is inf"]),
    ("lone-surrogate", _with_pixel('"\\ud800"'), 400, "InvalidValue",
     ["Pixel 3 of image 0 is the string", "not a number"]),
    ("surrogate-key", b'{"\\udc00": 1}', 400, "WrongKeys", ['no "data" key', '"\\udc00"']),
    ("object-pixel", _with_pixel('{"value": 0.5}'), 400, "InvalidValue",
     ["Pixel 3 of image 0 is an object"]),
    ("mixed-shapes", f'{{"data": [{_image()}, {_image()}, {ROWS_28}]}}'.encode(), 400,
     "InvalidShape", ["Image 0 is flat (784 numbers) but image 2 is 28x28", "same shape"]),
    ("over-limit", f'{{"data": [{", ".join([_image()] * (MAX_BATCH + 1))}]}}'.encode(), 413,
     "BatchTooLarge", [f"batch of {MAX_BATCH + 1} images", f"at most {MAX_BATCH}"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "code", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_4xx_that_says_what_to_fix(each_server, body, status, code, fragments):
    reply = each_server.client.score(body)
    assert reply.status == status, reply.body[:500]
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers.get("x-ms-run-function-failed") == "False"  # not counted as a crash
    error = reply.json()["error"]
    assert error["code"] == code
    for fragment in fragments:
        assert fragment in error["message"], error["message"]


def test_a_long_unknown_key_is_not_echoed_back(scoring_server):
    body = f'{{"data": [{_image()}], "{"k" * 1_000_000}": 1}}'
    reply = scoring_server.client.score(body)
    assert reply.status == 400
    message = reply.json()["error"]["message"]
    assert len(reply.body) < 1000, len(reply.body)
    assert 'unknown key(s) "kkkkkkkkkk' in message and "(1,000,002 characters)" in message


def test_oversized_body_is_refused_before_it_is_parsed(scoring_server):
    from serving.code.predictor import ImageFormat, max_body_bytes

    # Not even JSON: had the server parsed it, the answer would be a 400 NotJson.
    body = b'{"data": [' + b" " * max_body_bytes(MAX_BATCH, ImageFormat((784,))) + b"not json"
    reply = scoring_server.client.score(body)
    assert reply.status == 413
    error = reply.json()["error"]
    assert error["code"] == "BatchTooLarge"
    assert f"at most {MAX_BATCH} images" in error["message"]


def test_other_methods_get_405_with_allow(scoring_server):
    reply = scoring_server.client.request("GET", "/score")
    assert reply.status == 405
    assert reply.headers["Allow"] == "POST"
    assert "POST a JSON body" in reply.json()["error"]["message"]


def test_server_keeps_serving_after_bad_requests(scoring_server):
    for body in (b"\xff", b"[", b'{"data": [[NaN]]}', b'{"data": ' + b"[" * 50_000):
        assert 400 <= scoring_server.client.score(body).status < 500
    reply = scoring_server.client.score({"data": [[0.25] * 784]})
    assert reply.status == 200
    _check_scores(reply.json(), 1)
    assert scoring_server.server.process.poll() is None


@pytest.mark.parametrize(
    ("make_dir", "fragments"),
    [
        pytest.param(lambda tmp: tmp, ["No model in", "data/model.keras"], id="empty-dir"),
        pytest.param(
            lambda tmp: tmp / "missing", ["does not exist", "AZUREML_MODEL_DIR"], id="missing"
        ),
    ],
)
def test_init_failure_explains_what_was_expected_where(tmp_path: Path, make_dir, fragments):
    server = LocalServer(
        model_dir=make_dir(tmp_path),
        settings={"WORKER_COUNT": "1"},
        log_path=tmp_path / "server.log",
    )
    with pytest.raises(ServerError) as failure:
        server.start(timeout=120)
    server.stop()
    assert "exited with status" in str(failure.value)
    log = server.log_path.read_text()
    assert "User's init function failed" in log
    assert str(tmp_path) in log
    for fragment in fragments:
        assert fragment in log


def _score_log_lines(server: LocalServer, request_id: str) -> list[dict]:
    """The server's structured per-request lines (serving/code/request_log.py) for this request."""
    lines = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        start = line.find('{"event":"score"')
        if start >= 0 and request_id in line:
            lines.append(json.loads(line[start:]))
    return lines


def test_each_request_is_logged_once_with_id_status_images_and_latency(scoring_server):
    """One JSON line per request in the server's log, keyed by the caller's x-request-id, with
    the status and image count, and never the pixels."""
    import time

    pixel = 0.123456789  # a value that would be recognisable in the log
    ok = scoring_server.client.score(
        {"data": [[pixel] * 784] * 3}, headers={"x-request-id": "log-test-ok-7f3a"}
    )
    bad = scoring_server.client.score(
        {"data": [[2.5] * 784]}, headers={"x-ms-request-id": "log-test-bad-91c2"}
    )
    assert (ok.status, bad.status) == (200, 400)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the worker's stdout reaches the log file shortly after
        good_lines = _score_log_lines(scoring_server.server, "log-test-ok-7f3a")
        bad_lines = _score_log_lines(scoring_server.server, "log-test-bad-91c2")
        if good_lines and bad_lines:
            break
        time.sleep(0.1)
    assert len(good_lines) == 1 and len(bad_lines) == 1, scoring_server.server.log_tail()
    (good,), (refused,) = good_lines, bad_lines
    assert {k: good[k] for k in ("request_id", "status", "images")} == {
        "request_id": "log-test-ok-7f3a",
        "status": 200,
        "images": 3,
    }
    assert {k: refused[k] for k in ("request_id", "status", "images")} == {
        "request_id": "log-test-bad-91c2",
        "status": 400,
        "images": None,
    }
    assert 0 <= good["latency_ms"] < 60_000
    assert "0.123456" not in scoring_server.server.log_path.read_text(errors="replace")
