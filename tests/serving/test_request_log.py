"""serving/code/request_log.py: the per-request log line, and the data handed to the collector.

The collector test runs azureml-ai-monitoring itself (its queue, worker thread and HTTP sender)
against a local stand-in for the deployment's data collection sidecar on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest

from serving.code import request_log
from serving.code.request_log import DataCollection, RequestLog


class Clock:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_one_json_line_per_request_with_id_status_images_and_latency():
    lines: list[str] = []
    log = RequestLog(lines.append, clock=Clock(10.0, 10.0125))
    started = log.started()
    log.record({"x-ms-request-id": "req-42"}, 200, 3, started)
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "event": "score",
        "request_id": "req-42",
        "status": 200,
        "images": 3,
        "latency_ms": 12.5,
    }


def test_the_request_id_comes_from_either_header_or_is_generated():
    assert request_log.request_id({"x-request-id": "abc"}) == "abc"
    both = {"x-request-id": "client-id", "x-ms-request-id": "azure-id"}
    assert request_log.request_id(both) == "azure-id"
    generated = request_log.request_id({})
    assert len(generated) == 36 and generated.count("-") == 4
    assert request_log.request_id({}) != generated


def test_a_hostile_request_id_cannot_forge_log_lines():
    lines: list[str] = []
    forged = 'x"\n{"event":"score","status":200}' + "y" * 500
    RequestLog(lines.append).record({"x-request-id": forged}, 400, None, 0.0)
    assert len(lines) == 1 and "\n" not in lines[0]
    entry = json.loads(lines[0])
    assert entry["request_id"].startswith('x"{"event"')
    assert len(entry["request_id"]) == 100
    assert entry["images"] is None and entry["status"] == 400


def test_the_log_line_never_carries_the_pixels(capsys):
    """The default writer: bare JSON on stdout, five fields, nothing from the body."""
    RequestLog().record({"x-request-id": "r1"}, 200, 512, 0.0)
    line = capsys.readouterr().out.strip()
    assert set(json.loads(line)) == {"event", "request_id", "status", "images", "latency_ms"}
    assert len(line) < 200


def test_a_failing_log_never_fails_the_request(capsys):
    def broken(line: str) -> None:
        raise OSError(28, "No space left on device")

    entry = RequestLog(broken).record({}, 200, 1, 0.0)
    assert entry["status"] == 200
    assert "request log failed: OSError" in capsys.readouterr().err


def test_no_collector_locally_and_collect_is_a_no_op(monkeypatch):
    for name in ("AZUREML_MDC_CONFIG_PATH", "AZUREML_MDC_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    collection = DataCollection.from_environment()
    assert not collection.enabled
    collection.collect(np.zeros((2, 784), np.float32), np.full((2, 10), 0.1))
    assert collection.errors == 0


class Sidecar(http.server.BaseHTTPRequestHandler):
    """What the deployment's data collection sidecar receives: POST /modeldata/log."""

    received: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sidecar(monkeypatch) -> Iterator[list[tuple[str, dict[str, str], bytes]]]:
    Sidecar.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sidecar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("AZUREML_MDC_CONFIG_PATH", raising=False)
    monkeypatch.setenv("AZUREML_MDC_ENABLED", "true")
    monkeypatch.setenv("AZUREML_MDC_HOST", "127.0.0.1")
    monkeypatch.setenv("AZUREML_MDC_PORT", str(server.server_address[1]))
    try:
        yield Sidecar.received
    finally:
        from azureml.ai.monitoring.init import teardown

        teardown(wait_for_flush=True)
        server.shutdown()
        server.server_close()


def test_inputs_and_outputs_reach_the_collector_sidecar_joined_by_one_id(sidecar):
    pytest.importorskip("azureml.ai.monitoring")
    collection = DataCollection.from_environment()
    assert collection.enabled
    images = np.zeros((3, 784), np.float32)
    images[:, 0] = [0.0, 0.5, 1.0]
    probabilities = np.full((3, 10), 0.02)
    probabilities[[0, 1, 2], [7, 2, 1]] = 0.82
    collection.collect(images, probabilities)

    from azureml.ai.monitoring.init import teardown

    teardown(wait_for_flush=True)  # the worker thread sends what is queued, then stops
    assert collection.errors == 0
    assert [path for path, _, _ in sidecar] == ["/modeldata/log", "/modeldata/log"]
    by_type = {headers["ce-type"]: (headers, json.loads(body)) for _, headers, body in sidecar}
    assert set(by_type) == {"azureml.inference.model_inputs", "azureml.inference.model_outputs"}
    inputs_headers, inputs = by_type["azureml.inference.model_inputs"]
    outputs_headers, outputs = by_type["azureml.inference.model_outputs"]
    assert inputs_headers["ce-x-request-id"] == outputs_headers["ce-x-request-id"]
    assert len(inputs) == 3 and len(inputs[0]) == 784
    assert [row["pixel_0"] for row in inputs] == [0.0, 0.5, 1.0]
    assert outputs == [
        {"digit": 7, "probability": 0.82},
        {"digit": 2, "probability": 0.82},
        {"digit": 1, "probability": 0.82},
    ]


def test_a_collector_that_fails_is_reported_once_and_never_raises(capsys):
    class Refusing:
        def __init__(self, *, name: str, on_error) -> None:
            self.on_error = on_error

        def collect(self, data, context=None):
            raise RuntimeError("queue is full")

    collection = DataCollection(Refusing)
    for _ in range(3):
        collection.collect(np.zeros((1, 784), np.float32), np.full((1, 10), 0.1))
    assert collection.errors == 3
    assert capsys.readouterr().err.count("data collection failed") == 1


def test_images_of_any_model_shape_are_collected_one_column_per_pixel():
    """A CNN's images (n, 28, 28, 1) reach the collector as the DNN's do: pixel_0..pixel_783."""
    pytest.importorskip("pandas")
    collected: dict[str, list] = {}

    class Recording:
        def __init__(self, *, name: str, on_error) -> None:
            self.name = name

        def collect(self, data, context=None):
            collected.setdefault(self.name, []).append(data)

    images = np.zeros((2, 28, 28, 1), np.float32)
    images[1, 27, 27, 0] = 1.0  # the last pixel of the second image
    DataCollection(Recording).collect(images, np.full((2, 10), 0.1))
    (inputs,) = collected["model_inputs"]
    assert list(inputs.columns) == [f"pixel_{i}" for i in range(784)]
    assert inputs["pixel_783"].tolist() == [0.0, 1.0]
    assert collected["model_outputs"][0]["digit"].tolist() == [0, 0]


def test_generated_request_ids_are_random_version_4_uuids():
    import uuid

    ids = {request_log.new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text  # lower-case hex, dashes at 8-4-4-4-12


def test_the_request_id_is_read_from_a_werkzeug_requests_environ():
    """score.py hands over werkzeug's headers: the same ids as from a plain mapping."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    def headers(**sent: str):
        names = {key.replace("_", "-"): value for key, value in sent.items()}
        return Request(EnvironBuilder(method="POST", headers=names).get_environ()).headers

    assert request_log.request_id(headers(x_request_id="abc")) == "abc"
    both = headers(x_request_id="client-id", x_ms_request_id="azure-id")
    assert request_log.request_id(both) == "azure-id"
    assert request_log.request_id(headers(x_ms_request_id="\x07", x_request_id="b")) == "b"
    assert len(request_log.request_id(headers(x_request_id="y" * 500))) == 100
    assert len(request_log.request_id(headers())) == 36


def test_the_log_line_is_ascii_json_whatever_the_request_id():
    """Non-ASCII ids are escaped as json.dumps escapes them (orjson alone would not)."""
    lines: list[str] = []
    RequestLog(lines.append).record({"x-request-id": "caf\u00e9\u2014"}, 200, 1, 0.0)
    assert lines[0].isascii() and "caf\\u00e9\\u2014" in lines[0]
    assert json.loads(lines[0])["request_id"] == "caf\u00e9\u2014"
    entry = {"event": "score", "request_id": "r", "status": 200, "images": None, "latency_ms": 1.5}
    assert request_log._json_line(entry) == json.dumps(entry, separators=(",", ":"))
