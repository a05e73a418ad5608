"""Fixtures for the serving and adversarial tests: the real trained model and scoring server.

A pytest plugin (tests/conftest.py loads it), so that tests/serving and tests/serving share
one training run and one server per session.

``trained_output`` runs ``python -m training.train --epochs 2`` once per session (real MNIST),
``scoring_server`` starts serving/code/score.py under ``azmlinfsrv`` on a free loopback port with
the environment variables of serving/deployment.yml, pointing ``AZUREML_MODEL_DIR`` at the
training output folder: the folder *above* ``model/``, as Azure ML mounts registered models.
``trained_cnn`` and ``cnn_server`` do the same for the convolutional net (``--model cnn
--epochs 1``: about 45 s of training on two cores), served by the very same score.py;
``each_server`` is either server, for the tests that hold for every model.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts.endpoints import specs
from scripts.endpoints.local_server import LocalServer

ROOT = Path(__file__).resolve().parents[2]


def _train(mnist_dir: Path, out: Path, *flags: str) -> Path:
    """``out``, the output folder of a real training run with ``flags``."""
    env = {
        **os.environ,
        "MNIST_DATA_DIR": str(mnist_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-m", "training.train", *flags, "--output-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"training failed ({result.returncode}):\n{result.stderr[-3000:]}")
    assert (out / "model" / "data" / "model.keras").is_file(), list(out.rglob("*"))
    return out


@pytest.fixture(scope="session")
def trained_output(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a real 2-epoch training run (``model/``, ``metrics.json``, ...)."""
    return _train(mnist_dir, tmp_path_factory.mktemp("trained"), "--epochs", "2")


@pytest.fixture(scope="session")
def trained_cnn(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a real 1-epoch run of the CNN (about 98% test accuracy)."""
    out = tmp_path_factory.mktemp("trained-cnn")
    return _train(mnist_dir, out, "--model", "cnn", "--epochs", "1")


@pytest.fixture(scope="session")
def mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images (uint8, N x 28 x 28) and labels, read by training's loader."""
    from training.data import load_mnist

    data = load_mnist(mnist_dir)
    return data.x_test, data.y_test


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6} (hex, in host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def listening_addresses(port: int) -> list[str]:
    """The addresses the kernel has a listening TCP socket on for ``port`` (from /proc)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(_address(address))
    return sorted(found)


def worker_pids(server_pid: int) -> list[int]:
    """The gunicorn workers: the children of the azmlinfsrv (gunicorn master) process."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A tiny HTTP client for the local server (its sync workers close every connection)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body, headers or {})
            response = conn.getresponse()
            return Reply(response.status, dict(response.getheaders()), response.read())
        finally:
            conn.close()

    def score(self, payload: Any, **kwargs: Any) -> Reply:
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        headers = {"Content-Type": "application/json", **kwargs.get("headers", {})}
        return self.request("POST", "/score", body, headers)


def read_reply(sock: socket.socket) -> Reply:
    """One HTTP/1.1 response from a socket (Content-Length framed, as azmlinfsrv answers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"the server closed the connection; got {data[:200]!r}")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(headers.get("Content-Length", 0))
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return Reply(int(lines[0].split()[1]), headers, body[:length])


def raw_request(
    port: int, data: bytes, *, host: str = "127.0.0.1", then: str = "wait", timeout: float = 30
) -> Reply:
    """Send ``data`` as it is (framing and all), then read the reply. ``then``: ``"wait"``
    keeps the connection open (a stalled client), ``"close"`` ends the upload (truncated).

    Like any careful HTTP client, it reads the reply even when the server answered (a 413,
    say) and closed before the whole body was sent."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if then == "close":
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError) as exc:
            try:
                return read_reply(sock)
            except OSError:
                raise exc from None
        return read_reply(sock)


def chunked(pieces: list[bytes]) -> bytes:
    """A chunked request body: each piece as one chunk, then the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def post_head(
    length: int | None = None, extra: str = "", content_type: str = "application/json"
) -> bytes:
    """The head of a POST /score: Content-Length ``length``, or chunked when None."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"{extra}{framing}\r\n\r\n"
    ).encode()


@dataclass
class RunningServer:
    server: LocalServer
    client: Client
    settings: dict[str, str]


def _serve(model_dir: Path, log_dir: Path) -> Iterator[RunningServer]:
    """score.py under azmlinfsrv with deployment.yml's settings, serving ``model_dir``."""
    settings = specs.server_settings()
    server = LocalServer(
        model_dir=model_dir, settings=settings, log_path=log_dir / "azmlinfsrv.log"
    )
    server.start(timeout=240)
    try:
        yield RunningServer(server, Client(server.port), settings)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def scoring_server(
    trained_output: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    yield from _serve(trained_output, tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="session")
def cnn_server(
    trained_cnn: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    yield from _serve(trained_cnn, tmp_path_factory.mktemp("cnn-server"))


@pytest.fixture(scope="session", params=["dnn", "cnn"])
def each_server(request: pytest.FixtureRequest) -> RunningServer:
    """The DNN's server, then the CNN's: for what must hold whatever the model."""
    return request.getfixturevalue("scoring_server" if request.param == "dnn" else "cnn_server")


@pytest.fixture(scope="session")
def full_batch(scoring_server: RunningServer, mnist_test) -> tuple[np.ndarray, np.ndarray, Reply]:
    """A full batch (SCORING_MAX_BATCH) of real MNIST test images and the server's reply."""
    images, labels = mnist_test
    n = int(scoring_server.settings["SCORING_MAX_BATCH"])
    pixels = images[:n].astype(np.float64) / 255.0
    reply = scoring_server.client.score({"data": pixels.reshape(n, 784).tolist()})
    return pixels, labels[:n], reply
