"""Real training on real MNIST: default run, preemption and resume, distributed modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from scripts.launch import run_tasks, tensorflow_tasks
from tests.conftest import ROOT
from training.data import load_mnist

pytestmark = pytest.mark.slow
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_default_run_reaches_98_percent_and_writes_every_output(mnist_dir, tmp_path, run_python):
    out = tmp_path / "outputs"
    result = run_python("-m", "training.train", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.98, metrics
    assert metrics["epochs"] == 6 and metrics["distribution"] == "single"
    assert metrics["train_seconds"] > 0 and metrics["examples_per_second"] > 1000
    for picture in ("training_curves.png", "confusion_matrix.png"):
        data = (out / picture).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000

    # The model folder is an MLflow model with a signature, and the Keras file inside
    # maps [batch, 784] pixels in [0, 1] to probabilities that classify the test set.
    mlmodel = yaml.safe_load((out / "model" / "MLmodel").read_text())
    assert {"tensorflow", "python_function"} <= set(mlmodel["flavors"])
    inputs = json.loads(mlmodel["signature"]["inputs"])[0]["tensor-spec"]
    assert inputs == {"dtype": "float32", "shape": [-1, 784]}
    import keras

    model = keras.saving.load_model(out / "model" / "data" / "model.keras")
    test = load_mnist(mnist_dir)
    probabilities = np.asarray(model(test.x_test.reshape(-1, 784).astype("float32") / 255.0))
    assert probabilities.shape == (10_000, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    accuracy = np.mean(probabilities.argmax(axis=1) == test.y_test)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)

    # MLflow recorded the same run: params and the final metric.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = (out / "checkpoints" / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.data.params["first_layer_neurons"] == "300"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert len(client.get_metric_history(run_id, "test_loss")) == 6


def _wait_for_epoch(history: Path, epoch: int, process: subprocess.Popen, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if history.exists() and len(json.loads(history.read_text() or "[]")) >= epoch:
            return
        if process.poll() is not None:
            pytest.fail(f"training exited early: {process.stdout.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"no checkpoint for epoch {epoch} within {limit} s")


def test_killed_run_resumes_from_its_checkpoint_and_finishes_as_well(mnist_dir, tmp_path):
    out = tmp_path / "outputs"
    command = [sys.executable, "-m", "training.train", "--output-dir", str(out), "--no-tracking"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for_epoch(out / "checkpoints" / "history.json", 2, first, limit=300)
        first.send_signal(signal.SIGKILL)  # eviction: no warning, no clean-up
    finally:
        first.kill()
        first.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    done = len(json.loads((out / "checkpoints" / "history.json").read_text()))

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resuming from the checkpoint after epoch {done}" in second.stdout
    assert "epoch 1/6" not in second.stdout  # finished epochs are not trained again
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == done >= 2
    assert metrics["test_accuracy"] >= 0.98
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]


def _run_cluster(tmp_path: Path, workers: int, ps: int, epochs: int) -> dict:
    out = tmp_path / "outputs"
    command = [
        sys.executable,
        "-m",
        "training.train",
        "--epochs",
        str(epochs),
        "--output-dir",
        str(out),
        "--no-tracking",
    ]
    log = tmp_path / "cluster.log"
    with log.open("w") as sink:
        code = run_tasks(
            tensorflow_tasks(command, workers, ps),
            cwd=ROOT,
            base_env={**os.environ, "TMPDIR": str(tmp_path)},  # where non-chief scratch goes
            timeout=600,
            sink=sink,
        )
    assert code == 0, log.read_text()[-5000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_worker_multi_worker_run_trains_above_97_percent(mnist_dir, tmp_path):
    metrics = _run_cluster(tmp_path, workers=2, ps=0, epochs=4)
    assert metrics["distribution"] == "multi_worker"
    assert metrics["replicas"] == 2 and metrics["global_batch_size"] == 512
    assert metrics["test_accuracy"] > 0.97
    assert not list(tmp_path.glob("ckpt-worker*")), "non-chief checkpoint scratch left behind"


def test_parameter_server_run_with_chief_two_workers_one_ps_trains_above_97_percent(
    mnist_dir, tmp_path
):
    # Azure ML style: 3 workers + 1 ps, no chief; worker 0 becomes the coordinator.
    metrics = _run_cluster(tmp_path, workers=3, ps=1, epochs=4)
    assert metrics["distribution"] == "parameter_server" and metrics["workers"] == 2
    assert metrics["test_accuracy"] > 0.97
