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
    assert metrics["epochs"] == 3 and metrics["distribution"] == "single"
    assert metrics["train_seconds"] > 0 and metrics["examples_per_second"] > 1000
    # Where each epoch's time went, measured: training (the epochs' seconds), the test-set
    # evaluation, MLflow, the checkpoint; compiling the DNN's step came before the first.
    parts = metrics["seconds_per_epoch"]
    assert set(parts) == {"train", "evaluate", "tracking", "checkpoint", "other"}
    assert min(parts["train"], parts["evaluate"], parts["tracking"], parts["checkpoint"]) > 0
    assert 3 * parts["train"] == pytest.approx(metrics["train_seconds"], abs=0.01)
    assert metrics["compiled_step"] is True and metrics["startup_seconds"] > 0
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
    assert len(client.get_metric_history(run_id, "test_loss")) == 3


def checkpointed_epoch(checkpoints: Path) -> int:
    """The epoch of the latest checkpoint the state file names (0 before the first)."""
    state = checkpoints / "checkpoint"
    if not state.exists():
        return 0
    for line in state.read_text().splitlines():
        if line.startswith("model_checkpoint_path:"):
            return int(line.split('"')[1].rsplit("-", 1)[1])
    return 0


def wait_for_checkpoint(out: Path, epoch: int, process: subprocess.Popen, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if checkpointed_epoch(out / "checkpoints") >= epoch:
            return
        if process.poll() is not None:
            pytest.fail(f"training exited early: {process.stdout.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"no checkpoint for epoch {epoch} within {limit} s")


def assert_restore_gives_the_saved_state(out: Path, data, args: list[str]) -> None:
    """A second Trainer restoring ``out``'s latest checkpoint holds exactly the values stored
    in it: every weight, both Adam slots of every weight, the step count and the epoch."""
    import tensorflow as tf

    from training.checkpoints import Checkpoints
    from training.config import parse_args
    from training.runtime import Runtime
    from training.train import Trainer

    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    reader = tf.train.load_checkpoint(latest)
    stored = reader.get_variable_to_shape_map()
    trainer = Trainer(parse_args(args), Runtime("single", tf.distribute.get_strategy()), data)
    fresh_kernel = trainer.model.get_layer("hidden1").kernel.numpy().copy()
    start, _ = Checkpoints(trainer, out).restore()
    assert start == int(latest.rsplit("-", 1)[1])

    # Weights and slots are matched by value: the checkpoint's own paths for them are
    # Keras internals (the weights are stored once, under the optimizer that tracks them).
    def ordered(arrays) -> list[np.ndarray]:
        return sorted(arrays, key=lambda a: (a.shape, float(a.sum())))

    saved = ordered(reader.get_tensor(key) for key, shape in stored.items() if shape)
    weights = [v.numpy() for v in trainer.model.weights]
    slots = [v.numpy() for v in trainer.optimizer.variables if len(v.shape)]
    assert (len(weights), len(slots), len(saved)) == (6, 12, 18)  # 3 Dense x (kernel, bias)
    for got, want in zip(ordered(weights + slots), saved, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(trainer.model.get_layer("hidden1").kernel.numpy(), fresh_kernel)
    assert all(np.abs(slot).sum() > 0 for slot in slots), "Adam slots restored as zeros"
    iterations = next(key for key in stored if "iterations" in key)
    assert int(trainer.optimizer.iterations.numpy()) == int(reader.get_tensor(iterations)) > 0


def test_killed_run_resumes_from_its_checkpoint_and_finishes_as_well(mnist_dir, tmp_path):
    """SIGKILL (eviction) after epoch 1, then the same command: the restore gives back the
    saved weights and optimizer state, the run continues its MLflow run, and the metrics say
    what happened."""
    out = tmp_path / "outputs"
    args = ["--output-dir", str(out)]
    command = [sys.executable, "-m", "training.train", *args]
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": tracking_uri}
    first = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_checkpoint(out, 1, first, limit=300)
        first.send_signal(signal.SIGKILL)  # eviction: no warning, no clean-up
    finally:
        first.kill()
        first.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    done = checkpointed_epoch(out / "checkpoints")
    assert_restore_gives_the_saved_state(out, load_mnist(mnist_dir), args)

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resuming from the checkpoint after epoch {done}" in second.stdout
    assert "epoch 1/3" not in second.stdout  # finished epochs are not trained again
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == done >= 1
    assert metrics["epochs"] == 3 and metrics["epochs_this_run"] == 3 - done
    assert metrics["test_accuracy"] >= 0.98
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]

    # One MLflow run across both processes, with a test loss for every epoch.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs(experiment_ids=["0"])
    assert [run.info.run_id for run in runs] == [
        (out / "checkpoints" / "mlflow_run_id").read_text().strip()
    ]
    steps = {point.step for point in client.get_metric_history(runs[0].info.run_id, "test_loss")}
    assert steps == {1, 2, 3}
    assert runs[0].data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


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


# fork:begin parameter_server
def test_parameter_server_run_with_chief_two_workers_one_ps_trains_above_97_percent(
    mnist_dir, tmp_path
):
    # Azure ML style: 3 workers + 1 ps, no chief; worker 0 becomes the coordinator.
    metrics = _run_cluster(tmp_path, workers=3, ps=1, epochs=4)
    assert metrics["distribution"] == "parameter_server" and metrics["workers"] == 2
    assert metrics["test_accuracy"] > 0.97


# fork:end parameter_server
def test_two_worker_multi_worker_run_trains_above_97_percent(mnist_dir, tmp_path):
    metrics = _run_cluster(tmp_path, workers=2, ps=0, epochs=4)
    assert metrics["distribution"] == "multi_worker"
    assert metrics["replicas"] == 2 and metrics["global_batch_size"] == 512
    assert metrics["test_accuracy"] > 0.97
    assert not list(tmp_path.glob("ckpt-worker*")), "non-chief checkpoint scratch left behind"
