"""The size and time limits of score.py, over real HTTP, on a server configured unlike the default.

One worker of azmlinfsrv's own worker class (sync, as on the managed endpoint), with
``SCORING_MAX_BATCH=3`` and ``SCORING_TIMEOUT_MS=2000`` (so a body must arrive within 1 s), on
another loopback address (``--host`` at work): limits must follow the settings, not defaults.
"""

from __future__ import annotations

import io
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scripts.endpoints import specs
from scripts.endpoints.local_server import LocalServer
from tests.serving.server_fixtures import (
    Reply,
    chunked,
    listening_addresses,
    post_head,
    raw_request,
    read_reply,
)

pytestmark = pytest.mark.slow

HOST = "127.0.0.2"  # loopback too (127.0.0.0/8), but not the default address
IMAGE = [0.5] * 784


def _body(n: int) -> bytes:
    return json.dumps({"data": [IMAGE] * n}).encode()


@pytest.fixture(scope="module")
def small_server(trained_output: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    settings = {
        **specs.server_settings(),
        "SCORING_MAX_BATCH": "3",
        "SCORING_TIMEOUT_MS": "2000",
        "WORKER_COUNT": "1",
        "GUNICORN_CMD_ARGS": "--worker-class sync --threads 1",  # outranks gunicorn_local.py
    }
    log = tmp_path_factory.mktemp("small-server") / "azmlinfsrv.log"
    server = LocalServer(model_dir=trained_output, settings=settings, log_path=log, host=HOST)
    server.start(timeout=240)
    try:
        yield server
    finally:
        server.stop()


def _post(server: LocalServer, data: bytes, **kwargs: str) -> Reply:
    return raw_request(server.port, data, host=HOST, **kwargs)


def test_host_flag_binds_the_given_address_only(small_server):
    log = small_server.log_path.read_text()
    assert f"Listening at: http://{HOST}:{small_server.port} " in log
    assert "Using worker: sync" in log
    assert listening_addresses(small_server.port) == [HOST]


def test_scoring_max_batch_is_the_limit_over_http(small_server):
    ok = raw_request(small_server.port, post_head(len(_body(3))) + _body(3), host=HOST)
    assert ok.status == 200, ok.body
    assert len(ok.json()["predictions"]) == 3
    over = raw_request(small_server.port, post_head(len(_body(4))) + _body(4), host=HOST)
    assert over.status == 413
    error = over.json()["error"]
    assert error["code"] == "BatchTooLarge"
    assert "A batch of 4 images is over this endpoint's limit of 3 images" in error["message"]


def test_swagger_states_the_configured_batch_limit(small_server):
    reply = raw_request(
        small_server.port, b"GET /swagger.json?version=3 HTTP/1.1\r\nHost: t\r\n\r\n", host=HOST
    )
    data = reply.json()["components"]["schemas"]["ServiceInput"]["properties"]["data"]
    assert [form["maxItems"] for form in data["oneOf"]] == [3, 3]


def test_chunked_body_within_the_limit_is_scored(small_server):
    body = _body(2)
    reply = _post(small_server, post_head() + chunked([body[:1000], body[1000:]]))
    assert reply.status == 200, reply.body
    assert len(reply.json()["probabilities"]) == 2


def test_chunked_body_over_the_limit_gets_413_without_being_kept(small_server):
    """The limit counts bytes read: 5 MB of chunks (a 79 KB limit here) cannot slip past it."""
    pieces = [b'{"data": ['] + [b" " * 65536] * 80
    reply = _post(small_server, post_head() + chunked(pieces))
    assert reply.status == 413, reply.body[:300]
    assert reply.json()["error"]["code"] == "BatchTooLarge"


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"zz\r\n{}\r\n0\r\n\r\n", id="chunk-size-not-hex"),
        pytest.param(b"5\r\n{}\r\n0\r\n\r\n", id="chunk-shorter-than-its-size"),
        pytest.param(b"2;\rx\r\n{}\r\n0\r\n\r\n", id="bare-cr-in-extension"),
    ],
)
def test_malformed_chunked_body_gets_400(small_server, framing):
    reply = _post(small_server, post_head() + framing, then="close")
    assert reply.status == 400, reply.body[:300]
    error = reply.json()["error"]
    assert error["code"] == "UnreadableBody"
    assert "valid chunked encoding" in error["message"]


def test_body_shorter_than_content_length_gets_400(small_server):
    body = _body(1)
    reply = _post(small_server, post_head(len(body) + 500) + body, then="close")
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["code"] == "IncompleteBody"
    assert f"ended after {len(body):,} of the {len(body) + 500:,} bytes" in error["message"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_stalled_upload_gets_408_in_time(small_server, framing):
    body = _body(1)
    head = post_head(len(body)) if framing == "content-length" else post_head()
    started = time.monotonic()
    part = body[:100] if framing == "content-length" else b"64\r\n" + body[:100] + b"\r\n"
    reply = _post(small_server, head + part)  # then nothing: the client stalls
    elapsed = time.monotonic() - started
    assert reply.status == 408, reply.body[:300]
    error = reply.json()["error"]
    assert error["code"] == "RequestTimeout"
    # How much of it score.py saw depends on where the read was cut (gunicorn holds back an
    # incomplete chunk, for one): the count is not checked, only that it is said.
    assert "did not arrive within 1000 ms (" in error["message"]
    assert "bytes received)" in error["message"]
    assert 0.9 < elapsed < 5, elapsed


def test_trickled_upload_gets_408_at_the_deadline(small_server):
    """A byte every 0.2 s never trips a per-read timeout; the body deadline still holds."""
    body = _body(1)
    with socket.create_connection((HOST, small_server.port), timeout=30) as sock:
        sock.sendall(post_head(len(body)))
        started = time.monotonic()
        for byte in body[:40]:  # until the server answers (at most 8 s)
            if select.select([sock], [], [], 0.2)[0]:
                break
            sock.sendall(bytes([byte]))
        reply = read_reply(sock)
        elapsed = time.monotonic() - started
    assert reply.status == 408, reply.body[:300]
    assert "did not arrive within 1000 ms" in reply.json()["error"]["message"]
    assert elapsed < 3, elapsed


NPY = "application/x-npy"


def _npy(n: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.full((n, 28, 28), 0.5, np.float32))
    return buffer.getvalue()


def test_npy_bodies_have_the_same_batch_limit(small_server):
    ok = _post(small_server, post_head(len(_npy(3)), content_type=NPY) + _npy(3))
    assert ok.status == 200, ok.body[:300]
    assert len(ok.json()["predictions"]) == 3
    over = _post(small_server, post_head(len(_npy(4)), content_type=NPY) + _npy(4))
    assert over.status == 413, over.body[:300]
    message = over.json()["error"]["message"]
    assert "A batch of 4 images is over this endpoint's limit of 3" in message


def test_npy_bodies_have_a_size_limit_of_their_own(small_server):
    """A .npy body is held to a header and 3 float32 images (13,504 bytes here), not to the
    JSON limit (79,360): 20,000 bytes are refused as npy, read as JSON (then refused as JSON)."""
    body = _npy(3) + b"\0" * (20_000 - len(_npy(3)))
    for head in (post_head(len(body), content_type=NPY), post_head(None, content_type=NPY)):
        framed = body if b"chunked" not in head else chunked([body[:9000], body[9000:]])
        reply = _post(small_server, head + framed)
        assert reply.status == 413, reply.body[:300]
        assert reply.json()["error"]["code"] == "BatchTooLarge"
    as_json = _post(small_server, post_head(len(body)) + body)
    assert as_json.status == 415, as_json.body[:300]  # read, then told to say application/x-npy
    tail = _post(small_server, post_head(len(_npy(3)) + 4, content_type=NPY) + _npy(3) + b"\0" * 4)
    assert tail.status == 400 and "nothing after it" in tail.json()["error"]["message"]
