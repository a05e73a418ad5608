"""Train the article's MNIST DNN (784-300-100-10) anywhere: laptop, cluster, one or many nodes.

Single node (laptop or an Azure ML command job)::

    python -m training.train --data-folder ../shared/data/mnist --output-dir ./outputs

Distributed: the same command, started by a launcher that sets the environment
(``training/distribute.py`` reads it, no flag needed)::

    python -m scripts run training/jobs/multi_worker.yml   # TF_CONFIG, one process a worker
    python -m scripts run training/jobs/parameter_server.yml
    horovodrun -np 2 -H localhost:2 --gloo python -m training.train  # Horovod

Re-running the same command with the same ``--output-dir`` resumes from the last epoch
checkpoint in ``OUTPUT_DIR/checkpoints`` (how low-priority nodes survive eviction).

Writes to ``--output-dir`` (only the chief): ``model/`` (an MLflow model; the Keras file is
``model/data/model.keras``), ``metrics.json``, ``training_curves.png``,
``confusion_matrix.png``; params and metrics go to MLflow (a local ``mlflow.db`` unless
``MLFLOW_TRACKING_URI`` is set, as it is on Azure ML).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import DataError, Mnist, load_mnist

# Defaults, each chosen once here. Together they reach >= 98% test accuracy in a few
# epochs on two CPU cores (see benchmarks/train_speed.py).
DEFAULT_BATCH_SIZE = 256  # per replica: keeps the cores busy, still generalises well
DEFAULT_FIRST_LAYER = 300  # the article's (and LeCun et al. 1998's) 300-100 net
DEFAULT_SECOND_LAYER = 100
DEFAULT_LEARNING_RATE = 3e-3  # Adam's peak rate after warm-up, for one replica
DEFAULT_EPOCHS = 6  # the cosine schedule reaches zero at the last epoch
DEFAULT_DROPOUT = 0.2  # keeps the last epochs at a low rate from overfitting
WARMUP_FRACTION = 0.1  # of all steps, rate ramps linearly to its peak
LABEL_SMOOTHING = 0.05  # softer targets: better-calibrated probabilities for serving
EVAL_BATCH = 2_000


class UsageError(Exception):
    """Flags that parse but cannot work together (e.g. a batch larger than the data)."""


@dataclass(frozen=True)
class Config:
    data_folder: str | None
    batch_size: int
    first_layer_neurons: int
    second_layer_neurons: int
    learning_rate: float
    epochs: int
    output_dir: str
    seed: int
    dropout: float
    tracking: bool


def _checked(convert: type, accept: Any, requirement: str) -> Any:
    """An argparse type: ``convert`` the text, then refuse values ``accept`` rejects."""
    noun = "whole number" if convert is int else "number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} {requirement}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "must be at least 1")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "must be a positive number")
_fraction = _checked(float, lambda v: 0 <= v < 1, "must be in [0, 1)")


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train the MNIST DNN; distribution is chosen from the environment.",
    )
    parser.add_argument(
        "--data-folder",
        help="folder with the four MNIST .gz files (default: $MNIST_DATA_DIR, else download)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="examples per replica per step (default %(default)s)",
    )
    parser.add_argument("--first-layer-neurons", type=_positive_int, default=DEFAULT_FIRST_LAYER)
    parser.add_argument("--second-layer-neurons", type=_positive_int, default=DEFAULT_SECOND_LAYER)
    parser.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=DEFAULT_LEARNING_RATE,
        help="peak learning rate for one replica (default %(default)s)",
    )
    parser.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS)
    parser.add_argument(
        "--output-dir",
        default="./outputs",
        help="model, metrics, pictures, checkpoints (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=_fraction, default=DEFAULT_DROPOUT)
    parser.add_argument(
        "--no-tracking", dest="tracking", action="store_false", help="do not log to MLflow"
    )
    return Config(**vars(parser.parse_args(argv)))


# ---------------------------------------------------------------------------- data


def make_dataset(
    images: Any,
    labels: Any,
    batch_size: int,
    *,
    seed: int,
    epoch: int | None,
    input_context: Any = None,
):
    """Batches of (float32 [batch, 784] in [0, 1], int32 labels), shuffled by seed and epoch.

    ``images`` (uint8 [N, 784]) and ``labels`` stay in memory as tensors, so there is
    nothing to cache. Shuffling is one vectorised permutation per epoch, batched into index
    rows; each row gathers and scales a whole batch at once and batches are prefetched. An
    element-wise ``shuffle`` of 60,000 indices costs more than the training step itself on
    two cores. With ``epoch`` the order depends only on ``seed`` and the epoch, so a resumed
    run sees the same batches as an uninterrupted one; with ``epoch=None`` it repeats
    forever with a new order each pass (parameter-server workers). ``input_context`` gives
    each worker its own slice of every epoch's permutation.
    """
    import tensorflow as tf

    # Tensors, not numpy arrays: a captured array is converted again on every map call.
    images, labels = tf.convert_to_tensor(images), tf.convert_to_tensor(labels)
    count = int(images.shape[0])
    shards, shard = 1, 0
    if input_context is not None:
        shards, shard = input_context.num_input_pipelines, input_context.input_pipeline_id
    epochs = (
        tf.data.Dataset.range(epoch, epoch + 1)
        if epoch is not None
        else tf.data.Dataset.range(2**62)
    )

    def epoch_batches(epoch_number):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64),
            seed=tf.stack([tf.constant(seed, tf.int64), epoch_number]),
        )[shard::shards]
        usable = (tf.size(order) // batch_size) * batch_size
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order[:usable], [-1, batch_size]))

    def gather(batch_indices):
        x = tf.cast(tf.gather(images, batch_indices), tf.float32) / 255.0
        return x, tf.gather(labels, batch_indices)

    return (
        epochs.flat_map(epoch_batches)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


# ---------------------------------------------------------------------------- training


@dataclass
class EpochResult:
    epoch: int
    loss: float
    accuracy: float
    test_loss: float
    test_accuracy: float
    learning_rate: float
    seconds: float


class Trainer:
    """The training loop for every runtime: one step function, several ways to run it."""

    def __init__(self, config: Config, runtime: Any, data: Mnist) -> None:
        import keras
        import tensorflow as tf

        from training.model import WarmupCosine, build_model

        self.config, self.runtime = config, runtime
        self.x_train = data.x_train.reshape(len(data.x_train), -1)
        self.y_train = data.y_train.astype(np.int32)
        self.x_test = data.x_test.reshape(len(data.x_test), -1).astype(np.float32) / 255.0
        self.y_test = data.y_test.astype(np.int32)
        self.global_batch = config.batch_size * runtime.num_replicas
        self.steps_per_epoch = len(self.x_train) // (self.global_batch * runtime.ranks_per_step)
        if self.steps_per_epoch < 1:
            raise UsageError(
                f"--batch-size {config.batch_size} x {runtime.num_replicas} replicas exceeds "
                f"the {len(self.x_train)} training examples; use a smaller --batch-size."
            )
        total_steps = self.steps_per_epoch * config.epochs
        # Square-root scaling keeps Adam stable when replicas multiply the batch.
        peak = config.learning_rate * math.sqrt(runtime.num_replicas * runtime.ranks_per_step)
        with runtime.strategy.scope():
            self.model = build_model(
                config.first_layer_neurons, config.second_layer_neurons, config.dropout
            )
            schedule = WarmupCosine(peak, total_steps, int(total_steps * WARMUP_FRACTION))
            self.optimizer = keras.optimizers.Adam(learning_rate=schedule)
            self.optimizer.build(self.model.trainable_variables)
            self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.schedule = schedule
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch_var
        )
        self._step = tf.function(self._distributed_step)
        self._predict = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec([None, self.x_test.shape[1]], tf.float32)],
        )
        self._first_step_done = False

    # one synchronous step on every replica; returns (summed loss, correct count)
    def _replica_step(self, x, y):
        import keras
        import tensorflow as tf

        with tf.GradientTape() as tape:
            probabilities = self.model(x, training=True)
            targets = tf.one_hot(y, 10)
            smoothed = targets * (1.0 - LABEL_SMOOTHING) + LABEL_SMOOTHING / 10.0
            per_example = keras.losses.categorical_crossentropy(smoothed, probabilities)
            loss = tf.reduce_sum(per_example) / self.global_batch
        tape = self.runtime.wrap_tape(tape)
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables, strict=True))
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(probabilities, axis=1, output_type=tf.int32), y), tf.float32)
        )
        return tf.reduce_sum(per_example), correct

    def _distributed_step(self, iterator):
        import tensorflow as tf

        x, y = next(iterator)
        loss, correct = self.runtime.strategy.run(self._replica_step, args=(x, y))
        strategy = self.runtime.strategy
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None),
        )

    def _epoch_dataset(self, epoch: int):
        config, runtime = self.config, self.runtime
        if runtime.kind == "horovod":
            shard = slice(runtime.worker_index, None, runtime.num_workers)
            return make_dataset(
                self.x_train[shard],
                self.y_train[shard],
                config.batch_size,
                seed=config.seed,
                epoch=epoch,
            )
        return runtime.strategy.distribute_datasets_from_function(
            lambda context: make_dataset(
                self.x_train,
                self.y_train,
                context.get_per_replica_batch_size(self.global_batch),
                seed=config.seed,
                epoch=epoch,
                input_context=context,
            )
        )

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        """One pass over the training data: (mean loss, accuracy, examples seen)."""
        if self.runtime.kind == "parameter_server":
            return self._train_epoch_ps()
        iterator = iter(self._epoch_dataset(epoch))
        loss_sum = correct = 0.0
        for _ in range(self.steps_per_epoch):
            loss, hits = self._step(iterator)
            if not self._first_step_done:
                self.runtime.after_first_step(self.model, self.optimizer)
                self._first_step_done = True
            loss_sum += float(loss)
            correct += float(hits)
        seen = self.steps_per_epoch * self.global_batch
        return loss_sum / seen, correct / seen, seen * self.runtime.ranks_per_step

    def _train_epoch_ps(self) -> tuple[float, float, int]:
        coordinator = self.runtime.coordinator
        if not hasattr(self, "_ps_iterator"):
            config = self.config

            def dataset_fn(_context=None):
                return make_dataset(
                    self.x_train, self.y_train, config.batch_size, seed=config.seed, epoch=None
                )

            self._ps_iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))
        results = [
            coordinator.schedule(self._step, args=(self._ps_iterator,))
            for _ in range(self.steps_per_epoch)
        ]
        coordinator.join()
        values = np.array([result.fetch() for result in results], dtype=np.float64)
        seen = self.steps_per_epoch * self.global_batch
        return values[:, 0].sum() / seen, values[:, 1].sum() / seen, seen

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [self._predict(x[i : i + EVAL_BATCH]).numpy() for i in range(0, len(x), EVAL_BATCH)]
        )

    def evaluate(self) -> tuple[float, float, np.ndarray]:
        """(test loss, test accuracy, predicted labels) on the full test set."""
        probabilities = self.predict(self.x_test)
        picked = probabilities[np.arange(len(self.y_test)), self.y_test]
        loss = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
        predictions = probabilities.argmax(axis=1)
        return loss, float(np.mean(predictions == self.y_test)), predictions

    def learning_rate(self) -> float:
        return float(self.schedule(self.optimizer.iterations))


# ---------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """Epoch checkpoints under OUTPUT_DIR/checkpoints, written so a kill never corrupts them.

    Every worker of a synchronous cluster must take part in saving; all but the chief save
    to a throw-away folder (the pattern the TF multi-worker guide prescribes).
    """

    def __init__(self, trainer: Trainer, output_dir: Path) -> None:
        import tensorflow as tf

        self.trainer = trainer
        self.directory = output_dir / "checkpoints"
        self.history_path = self.directory / "history.json"
        runtime = trainer.runtime
        if runtime.is_chief:
            target = self.directory
        else:
            target = Path(tempfile.mkdtemp(prefix=f"ckpt-worker{runtime.worker_index}-"))
        self._scratch = None if runtime.is_chief else target
        self.saves = runtime.is_chief or runtime.kind == "multi_worker"
        self.manager = tf.train.CheckpointManager(trainer.checkpoint, str(target), max_to_keep=2)

    def restore(self) -> tuple[int, list[dict[str, float]]]:
        """(first epoch to run, history so far); (0, []) when starting fresh."""
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(self.directory))
        if latest is None:
            return 0, []
        self.trainer.checkpoint.restore(latest).expect_partial()
        history = []
        if self.history_path.exists():
            history = json.loads(self.history_path.read_text())
        start = int(self.trainer.epoch_var.numpy())
        return start, [row for row in history if row["epoch"] <= start]

    def save(self, epoch: int, history: list[dict[str, float]]) -> None:
        self.trainer.epoch_var.assign(epoch)
        if not self.saves:
            return
        self.manager.save(checkpoint_number=epoch)
        if self.trainer.runtime.is_chief:
            _write_atomic(self.history_path, json.dumps(history, indent=1))

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------- outputs


def save_model(model: Any, destination: Path) -> Path:
    """Write the MLflow model (with its signature) to ``destination``, replacing it whole."""
    import keras
    import tensorflow as tf

    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        import mlflow.tensorflow
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec
    except ImportError:  # an environment without MLflow still gets the Keras file
        (staging / "data").mkdir(parents=True)
        model.save(staging / "data" / "model.keras")
        if keras.__version__.startswith("2."):  # tf.keras 2 (Horovod): serving runs Keras 3
            from training.keras_compat import rewrite_weights_for_keras3

            rewrite_weights_for_keras3(model, staging / "data" / "model.keras")
    else:
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 784), "pixels")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10), "probabilities")]),
        )
        mlflow.tensorflow.save_model(
            model,
            str(staging),
            signature=signature,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        )
    shutil.rmtree(destination, ignore_errors=True)
    staging.replace(destination)
    return destination


class Tracker:
    """MLflow on the chief: a local store by default, the workspace on Azure ML."""

    def __init__(self, enabled: bool, run_id_path: Path) -> None:
        self.mlflow = None
        if not enabled:
            return
        try:
            import mlflow
        except ImportError:
            print("MLflow is not installed: metrics go to metrics.json only.", file=sys.stderr)
            return
        self.mlflow = mlflow
        previous = run_id_path.read_text().strip() if run_id_path.exists() else None
        if os.environ.get("MLFLOW_RUN_ID") or previous is None:
            run = mlflow.start_run()
        else:
            run = mlflow.start_run(run_id=previous)  # a resumed run continues its MLflow run
        _write_atomic(run_id_path, run.info.run_id)

    def params(self, params: dict[str, Any]) -> None:
        if self.mlflow:
            self.mlflow.log_params(params)

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.mlflow:
            self.mlflow.log_metrics(metrics, step=step)

    def artifacts(self, paths: list[Path]) -> None:
        if self.mlflow:
            for path in paths:
                self.mlflow.log_artifact(str(path))

    def end(self) -> None:
        if self.mlflow:
            self.mlflow.end_run()


def write_reports(
    output_dir: Path,
    history: list[dict[str, float]],
    metrics: dict[str, Any],
    labels: np.ndarray,
    predictions: np.ndarray,
) -> list[Path]:
    from training.report import confusion_matrix, plot_confusion, plot_curves

    metrics_path = output_dir / "metrics.json"
    _write_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
    return [
        metrics_path,
        plot_curves(history, output_dir / "training_curves.png"),
        plot_confusion(confusion_matrix(labels, predictions), output_dir / "confusion_matrix.png"),
    ]


# ---------------------------------------------------------------------------- main


def train(config: Config, data: Mnist, runtime: Any) -> dict[str, Any] | None:
    """Run (or resume) training; returns the final metrics on the chief, else None."""
    import keras

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    trainer = Trainer(config, runtime, data)
    checkpoints = Checkpoints(trainer, output_dir)
    start, history = checkpoints.restore()
    start = runtime.after_restore(start, trainer.model, trainer.optimizer)
    chief = runtime.is_chief
    tracker = Tracker(config.tracking and chief, output_dir / "checkpoints" / "mlflow_run_id")
    if chief:
        if start:
            print(f"Resuming from the checkpoint after epoch {start} in {checkpoints.directory}")
        tracker.params(
            {
                **asdict(config),
                "distribution": runtime.kind,
                "replicas": runtime.num_replicas,
                "workers": runtime.num_workers,
                "global_batch_size": trainer.global_batch,
            }
        )
    train_seconds = sum(row["seconds"] for row in history)
    examples, fresh_seconds = 0, 0.0  # this process's own work, for its throughput
    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        loss, accuracy, seen = trainer.train_epoch(epoch)
        seconds = time.perf_counter() - began
        train_seconds += seconds
        fresh_seconds += seconds
        examples += seen
        test_loss, test_accuracy, _ = trainer.evaluate()
        row = asdict(
            EpochResult(
                epoch + 1,
                loss,
                accuracy,
                test_loss,
                test_accuracy,
                trainer.learning_rate(),
                seconds,
            )
        )
        history.append(row)
        checkpoints.save(epoch + 1, history)
        if chief:
            print(
                f"epoch {epoch + 1}/{config.epochs}  loss {loss:.4f}  acc {accuracy:.4f}  "
                f"test_loss {test_loss:.4f}  test_acc {test_accuracy:.4f}  ({seconds:.1f}s)",
                flush=True,
            )
            tracker.metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
    checkpoints.close()
    runtime.barrier()
    if not chief:
        return None
    test_loss, test_accuracy, predictions = trainer.evaluate()
    metrics = {
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "epochs": config.epochs,
        "train_seconds": round(train_seconds, 3),
        "examples_per_second": round(examples / fresh_seconds, 1) if fresh_seconds else None,
        "resumed_from_epoch": start,
        "distribution": runtime.kind,
        "replicas": runtime.num_replicas,
        "workers": runtime.num_workers,
        "global_batch_size": trainer.global_batch,
    }
    save_model(trainer.model, output_dir / "model")
    paths = write_reports(output_dir, history, metrics, trainer.y_test, predictions)
    tracker.artifacts(paths)
    tracker.end()
    return metrics


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        data = load_mnist(config.data_folder)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from training.distribute import ClusterConfigError, detect_runtime

    try:
        runtime = detect_runtime()
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if runtime is None:  # this process served a parameter-server cluster role
        return 0
    try:
        metrics = train(config, data, runtime)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if metrics is not None:
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
