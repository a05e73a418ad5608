"""Fixtures for the serving tests: the real trained model and the real scoring server.

``trained_output`` runs ``python -m training.train --epochs 2`` once per session (real MNIST),
``scoring_server`` starts serving/score.py under ``azmlinfsrv`` on a free loopback port with
the environment variables of serving/deployment.yml, pointing ``AZUREML_MODEL_DIR`` at the
training output folder: the folder *above* ``model/``, as Azure ML mounts registered models.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving import specs
from serving.local_server import LocalServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained_output(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a real 2-epoch training run (``model/``, ``metrics.json``, ...)."""
    out = tmp_path_factory.mktemp("trained")
    env = {
        **os.environ,
        "MNIST_DATA_DIR": str(mnist_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--epochs", "2", "--output-dir", str(out)],
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
def mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images (uint8, N x 28 x 28) and labels, read by training's loader."""
    from training.data import load_mnist

    data = load_mnist(mnist_dir)
    return data.x_test, data.y_test


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


@dataclass
class RunningServer:
    server: LocalServer
    client: Client
    settings: dict[str, str]


@pytest.fixture(scope="session")
def scoring_server(
    trained_output: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    settings = specs.server_settings()
    log = tmp_path_factory.mktemp("server") / "azmlinfsrv.log"
    server = LocalServer(model_dir=trained_output, settings=settings, log_path=log)
    server.start(timeout=240)
    try:
        yield RunningServer(server, Client(server.port), settings)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def full_batch(scoring_server: RunningServer, mnist_test) -> tuple[np.ndarray, np.ndarray, Reply]:
    """A full batch (SCORING_MAX_BATCH) of real MNIST test images and the server's reply."""
    images, labels = mnist_test
    n = int(scoring_server.settings["SCORING_MAX_BATCH"])
    pixels = images[:n].astype(np.float64) / 255.0
    reply = scoring_server.client.score({"data": pixels.reshape(n, 784).tolist()})
    return pixels, labels[:n], reply
