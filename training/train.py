"""Train an MNIST model anywhere: laptop, cluster, one or many nodes.

The model is chosen by name from ``training/model.py``'s registry: ``--model dnn`` (the
default, the article's 784-300-100-10 DNN) or ``--model cnn`` (a small convolutional net).
The images take the model's own input shape, and the model's own shapes become the saved
model's signature.

Single node (laptop or an Azure ML command job)::

    python -m training.train --data-folder ../shared/data/mnist --output-dir ./outputs
    python -m training.train --model cnn --output-dir ./outputs-cnn

Distributed: the same command, started by a launcher that sets the environment
(``training/distribute.py`` reads it, no flag needed)::

    python -m scripts run training/jobs/multi_worker.yml   # TF_CONFIG, one process a worker
    python -m scripts run training/jobs/parameter_server.yml
    horovodrun -np 2 -H 127.0.0.1:2 --gloo python -m training.train  # Horovod

Re-running the same command with the same ``--output-dir`` resumes from the last epoch
checkpoint in ``OUTPUT_DIR/checkpoints`` (how low-priority nodes survive eviction), but only
when ``OUTPUT_DIR/checkpoints/run.json`` says the same flags, runtime and data produced it
(``training/resume.py``; ``--epochs`` included: it sets the schedule's length); otherwise it
stops before training and says what differs. ``--restart`` discards the old checkpoints. A
rerun of a finished folder with the same flags has nothing to do and changes nothing.
SIGINT and SIGTERM stop after the current step with one line (exit 130 and 143).

Writes to ``--output-dir`` (only the chief): ``model/`` (an MLflow model; the Keras file is
``model/data/model.keras``), ``metrics.json``, ``training_curves.png``,
``confusion_matrix.png``; params and metrics go to MLflow (a local ``mlflow.db`` unless
``MLFLOW_TRACKING_URI`` is set, as it is on Azure ML).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import resume
from training.data import DataError, Mnist, load_mnist
from training.export import save_model
from training.model import DEFAULT_MODEL, MODELS

# Defaults, each chosen once here; each model's own (layer sizes, dropout, epochs, learning
# rate) are in training/model.py. Together the DNN's reach >= 98% test accuracy in a few
# epochs on two CPU cores (see benchmarks/train_speed.py).
DEFAULT_BATCH_SIZE = 256  # per replica: keeps the cores busy, still generalises well
# The model options that have a flag; each applies to the models whose builder takes it.
MODEL_OPTIONS = ("first_layer_neurons", "second_layer_neurons", "dropout")
WARMUP_FRACTION = 0.1  # of all steps, rate ramps linearly to its peak
LABEL_SMOOTHING = 0.05  # softer targets: better-calibrated probabilities for serving
EVAL_BATCH = 2_000

# Bounds the libraries enforce late (after TensorFlow loaded) or not at all: checked while
# parsing instead, so a typo costs a usage line, not a traceback or a run that cannot work.
MAX_SEED = 2**32 - 1  # NumPy and keras.utils.set_random_seed refuse seeds outside [0, 2**32)
MAX_EPOCHS = 10_000
MAX_LEARNING_RATE = 10.0  # Adam diverges long before; float32 overflows past ~3e38
MIN_LEARNING_RATE = 1e-30  # smaller rounds to zero (or a denormal) in float32: nothing learns
MAX_PARAMETERS = 100_000_000  # weights; Adam keeps two more copies: 1.2 GB of float32
TRAIN_EXAMPLES = 60_000  # MNIST's training set (training/data.py verifies the count)


class UsageError(Exception):
    """Flags that parse but cannot work together (e.g. a batch larger than the data)."""


@dataclass(frozen=True)
class Config:
    model: str
    data_folder: str | None
    batch_size: int
    first_layer_neurons: int | None  # None: the model does not take this option
    second_layer_neurons: int | None
    learning_rate: float
    epochs: int
    output_dir: str
    seed: int
    dropout: float | None
    tracking: bool
    restart: bool = False

    def model_options(self) -> dict[str, Any]:
        """The options the model's builder takes, as the flags set them."""
        takes = MODELS[self.model].options()
        return {option: getattr(self, option) for option in MODEL_OPTIONS if option in takes}


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
_epochs = _checked(int, lambda v: 1 <= v <= MAX_EPOCHS, f"must be between 1 and {MAX_EPOCHS}")
_batch = _checked(
    int,
    lambda v: 1 <= v <= TRAIN_EXAMPLES,
    f"must be between 1 and {TRAIN_EXAMPLES} (the MNIST training examples)",
)
_learning_rate = _checked(
    float,
    lambda v: math.isfinite(v) and MIN_LEARNING_RATE <= v <= MAX_LEARNING_RATE,
    f"must be a positive number between {MIN_LEARNING_RATE:g} and {MAX_LEARNING_RATE:g}",
)
_fraction = _checked(float, lambda v: 0 <= v < 1, "must be in [0, 1)")
_seed = _checked(int, lambda v: 0 <= v <= MAX_SEED, f"must be between 0 and {MAX_SEED} (2**32 - 1)")
_folder = _checked(str, lambda v: v.strip() != "", "must name a folder")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _defaults_help(value: Any) -> str:
    """``default: dnn 6, cnn 4``: a setting's default for each model that has one."""
    shown = [f"{name} {value(arch)}" for name, arch in MODELS.items() if value(arch) is not None]
    return "default: " + ", ".join(shown)


def _option_help(option: str) -> str:
    return (
        f"a model option ({_defaults_help(lambda arch: arch.options().get(option))}); "
        "refused with any other --model"
    )


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train an MNIST model; distribution is chosen from the environment.",
    )
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=DEFAULT_MODEL,
        help="the architecture, from training/model.py's MODELS (default %(default)s)",
    )
    parser.add_argument(
        "--data-folder",
        help="folder with the four MNIST .gz files (default: $MNIST_DATA_DIR, else download)",
    )
    parser.add_argument(
        "--batch-size",
        type=_batch,
        default=DEFAULT_BATCH_SIZE,
        help="examples per replica per step (default %(default)s)",
    )
    for option in ("first_layer_neurons", "second_layer_neurons"):
        parser.add_argument(_flag(option), type=_positive_int, help=_option_help(option))
    parser.add_argument(
        "--learning-rate",
        type=_learning_rate,
        help="peak learning rate for one replica "
        f"({_defaults_help(lambda arch: arch.learning_rate)})",
    )
    parser.add_argument(
        "--epochs",
        type=_epochs,
        help="length of the learning-rate schedule, which reaches zero at the last epoch "
        f"({_defaults_help(lambda arch: arch.epochs)})",
    )
    parser.add_argument(
        "--output-dir",
        type=_folder,
        default="./outputs",
        help="model, metrics, pictures, checkpoints (default %(default)s)",
    )
    parser.add_argument("--seed", type=_seed, default=0, help="0 to 2**32 - 1 (default 0)")
    parser.add_argument("--dropout", type=_fraction, help=_option_help("dropout"))
    parser.add_argument(
        "--no-tracking", dest="tracking", action="store_false", help="do not log to MLflow"
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoints and history in OUTPUT_DIR/checkpoints and train from "
        "scratch (without it, a rerun resumes, and only with the flags that wrote them)",
    )
    return _with_model_defaults(parser, vars(parser.parse_args(argv)))


def _with_model_defaults(parser: argparse.ArgumentParser, given: dict[str, Any]) -> Config:
    """Fill the flags left unset with the chosen model's defaults; refuse a model option the
    model does not take, and a model too large to train."""
    name = given["model"]
    architecture, takes = MODELS[name], MODELS[name].options()
    foreign = [_flag(o) for o in MODEL_OPTIONS if given[o] is not None and o not in takes]
    if foreign:
        own = ", ".join(_flag(o) for o in MODEL_OPTIONS if o in takes) or "none"
        parser.error(
            f"{' and '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to "
            f"--model {name} (its options: {own}); leave it out, or choose the model it "
            "belongs to with --model"
        )
    for option in MODEL_OPTIONS:
        if option in takes and given[option] is None:
            given[option] = takes[option]
    if given["epochs"] is None:
        given["epochs"] = architecture.epochs
    if given["learning_rate"] is None:
        given["learning_rate"] = architecture.learning_rate
    config = Config(**given)
    weights = architecture.weights(**config.model_options()) if architecture.weights else 0
    if weights > MAX_PARAMETERS:
        chosen = " ".join(f"{_flag(o)} {v}" for o, v in config.model_options().items())
        parser.error(
            f"--model {name} with {chosen} has {weights:,} weights, more than the "
            f"{MAX_PARAMETERS:,} this script allows (Adam keeps three float32 copies); "
            "choose smaller layers"
        )
    return config


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
    """Batches of (float32 [batch, *image] in [0, 1], int32 labels), shuffled by seed and epoch.

    ``images`` (uint8 [N, *image], shaped for the model) and ``labels`` stay in memory as
    tensors, so there is nothing to cache. Shuffling is one vectorised permutation per epoch,
    batched into index rows; each row gathers and scales a whole batch at once and batches are
    prefetched. An element-wise ``shuffle`` of 60,000 indices costs more than the training step
    itself on two cores. With ``epoch`` the order depends only on ``seed`` and the epoch, so a
    resumed run sees the same batches as an uninterrupted one; with ``epoch=None`` it repeats
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

        from training.model import build_model
        from training.schedule import WarmupCosine

        self.config, self.runtime = config, runtime
        self.global_batch = config.batch_size * runtime.num_replicas
        self.steps_per_epoch = len(data.x_train) // (self.global_batch * runtime.ranks_per_step)
        if self.steps_per_epoch < 1:
            raise UsageError(
                f"--batch-size {config.batch_size} x {runtime.num_replicas} replicas exceeds "
                f"the {len(data.x_train)} training examples; use a smaller --batch-size."
            )
        total_steps = self.steps_per_epoch * config.epochs
        # Square-root scaling keeps Adam stable when replicas multiply the batch.
        peak = config.learning_rate * math.sqrt(runtime.num_replicas * runtime.ranks_per_step)
        with runtime.strategy.scope():
            self.model = build_model(config.model, **config.model_options())
            schedule = WarmupCosine(peak, total_steps, int(total_steps * WARMUP_FRACTION))
            self.optimizer = keras.optimizers.Adam(learning_rate=schedule)
            self.optimizer.build(self.model.trainable_variables)
            self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.schedule = schedule
        # The images take the model's own input shape ([N, 784] pixels for the DNN, [N, 28, 28,
        # 1] for the CNN), the labels its number of classes.
        shape = (-1, *self.model.input_shape[1:])
        self.x_train = data.x_train.reshape(shape)
        self.y_train = data.y_train.astype(np.int32)
        self.x_test = data.x_test.reshape(shape).astype(np.float32) / 255.0
        self.y_test = data.y_test.astype(np.int32)
        self.classes = int(self.model.output_shape[-1])
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch_var
        )
        self._step = tf.function(self._distributed_step)
        self._predict = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec([None, *self.x_test.shape[1:]], tf.float32)],
        )
        self._first_step_done = False

    # one synchronous step on every replica; returns (summed loss, correct count)
    def _replica_step(self, x, y):
        import keras
        import tensorflow as tf

        with tf.GradientTape() as tape:
            probabilities = self.model(x, training=True)
            targets = tf.one_hot(y, self.classes)
            smoothed = targets * (1.0 - LABEL_SMOOTHING) + LABEL_SMOOTHING / self.classes
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


class RestoreError(Exception):
    """A checkpoint that does not restore every weight and the optimizer's state."""


class OutputError(Exception):
    """The output folder cannot be written (a file in the way, read-only, disk full)."""


def describe_write_error(exc: BaseException, what: str, path: Path | str) -> str:
    """One sentence: what could not be written where, and why (the system's words for an
    OSError, the first line of TensorFlow's for its own write errors)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "no space left on the device"
    else:
        reason = _first_line(exc)
    return f"cannot write {what} {path}: {reason}"


def _tf_write_error() -> tuple[type[BaseException], ...]:
    import tensorflow as tf

    return (OSError, tf.errors.OpError)


class Checkpoints:
    """Epoch checkpoints under OUTPUT_DIR/checkpoints, written so a kill never corrupts them.

    Every worker of a synchronous cluster must take part in saving; all but the chief save
    to a throw-away folder (the pattern the TF multi-worker guide prescribes). A restore must
    restore every variable of the model and the optimizer (and nothing else may be left
    over in the checkpoint): anything less is a ``RestoreError``, never a warning.
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
        """(first epoch to run, history so far); (0, []) when there is no checkpoint."""
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(self.directory))
        if latest is None:
            return 0, []
        status = None
        try:
            status = self.trainer.checkpoint.restore(latest)
            status.assert_consumed()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            if status is not None:
                status.expect_partial()  # reported below: no TF warning about it at exit
            raise RestoreError(
                f"The checkpoint {latest} does not restore this run's model and optimizer "
                f"({_first_line(exc)}), so resuming from it would train from partly fresh "
                "weights. Train into a new --output-dir, or pass --restart to discard the "
                "checkpoints there and train from scratch."
            ) from None
        history = []
        if self.history_path.exists():
            history = json.loads(self.history_path.read_text())
        start = int(self.trainer.epoch_var.numpy())
        return start, [row for row in history if row["epoch"] <= start]

    def save(self, epoch: int, history: list[dict[str, float]]) -> None:
        """Write epoch ``epoch``'s checkpoint, its history row first (a restore keeps only the
        rows up to the checkpoint's epoch). On a write error nothing of this epoch is left:
        the previous checkpoint stays the latest, whole."""
        self.trainer.epoch_var.assign(epoch)
        if not self.saves:
            return
        try:
            if self.trainer.runtime.is_chief:
                _write_atomic(self.history_path, json.dumps(history, indent=1))
            self.manager.save(checkpoint_number=epoch)
        except _tf_write_error() as exc:
            self._remove_partial(epoch)
            raise OutputError(
                f"{describe_write_error(exc, 'the checkpoint in', self.directory)}. "
                f"{self._kept(epoch - 1)}"
            ) from None

    def _remove_partial(self, epoch: int) -> None:
        for path in Path(self.manager.directory).glob(f"ckpt-{epoch}[._]*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _kept(self, epoch: int) -> str:
        if epoch < 1:
            return "No epoch had finished, so nothing was lost."
        return (
            f"The checkpoint after epoch {epoch} in {self.directory} is intact: free space or "
            "fix the folder, then rerun the same command to resume from it."
        )

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` whole, or leave it as it was (no ``.tmp`` left behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- outputs


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
        # A resumed run keeps the params it logged (MLflow refuses to change them).
        self.continued = previous is not None
        if os.environ.get("MLFLOW_RUN_ID") or previous is None:
            run = mlflow.start_run()
        else:
            run = mlflow.start_run(run_id=previous)  # a resumed run continues its MLflow run
        _write_atomic(run_id_path, run.info.run_id)

    def params(self, params: dict[str, Any]) -> None:
        if self.mlflow and not self.continued:
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


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """SIGINT (Ctrl-C) and SIGTERM (Azure ML's low-priority eviction) end training cleanly.

    The handler raises ``Interrupted`` between steps; inside ``critical()`` (a checkpoint or
    output being written) it waits for the block to end, so a signal never leaves half a
    checkpoint. ``main`` turns it into one line and exit status 128 + the signal number.
    """

    def __init__(self) -> None:
        self.saved_epoch = 0  # the last epoch whose checkpoint is on disk
        self.total_epochs = 0
        self._depth = 0
        self._pending: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self._depth:
            self._pending = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)

    def message(self, signum: int) -> str:
        name = signal.Signals(signum).name
        if not self.saved_epoch:
            return f"interrupted ({name}) before the first epoch finished; rerun to start again"
        return (
            f"interrupted ({name}) after epoch {self.saved_epoch} of {self.total_epochs}; "
            "rerun the same command to resume"
        )


def run_record(config: Config, runtime: Any, data: Mnist) -> dict[str, Any]:
    """What produces this run's checkpoints: the flags that change shapes or results, the
    runtime, and the data (see training/resume.py)."""
    import keras
    import tensorflow as tf

    from training.data import fingerprint

    return {
        "model": config.model,
        **config.model_options(),
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "epochs": config.epochs,
        "seed": config.seed,
        "label_smoothing": LABEL_SMOOTHING,
        "warmup_fraction": WARMUP_FRACTION,
        "distribution": runtime.kind,
        "replicas": runtime.num_replicas,
        "workers": runtime.num_workers,
        "tensorflow_major": int(tf.__version__.split(".")[0]),
        "keras_major": int(keras.__version__.split(".")[0]),
        "data_sha256": fingerprint(data),
    }


def plan_run(config: Config, runtime: Any, data: Mnist) -> resume.Plan:
    """Fresh, resume or finished, decided by the chief for every worker; raises
    ``ResumeRefused`` on every worker when the checkpoints belong to another run."""
    output_dir = Path(config.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    try:
        decided = resume.plan(
            checkpoint_dir, run_record(config, runtime, data), restart=config.restart
        )
        verdict: tuple[str, str] = (decided.action, "")
    except resume.ResumeRefused as exc:
        decided, verdict = None, ("refused", str(exc))
    action, reason = runtime.share_from_chief(verdict, "resume_plan")
    if action == "refused":
        raise resume.ResumeRefused(reason)
    record = decided.record if decided else run_record(config, runtime, data)
    if action == "finished" and not (output_dir / "model").exists():
        action = "resume"  # outputs lost after the last epoch: write them again, train nothing
    return resume.Plan(action, record)


def _start_fresh(checkpoint_dir: Path, record: dict[str, Any]) -> None:
    """The chief clears old checkpoints (only --restart or a folder without any gets here)
    and records what produces the new ones."""
    try:
        resume.discard(checkpoint_dir)
        _write_atomic(
            checkpoint_dir / resume.RECORD_NAME, resume.record_text(record, finished=False)
        )
    except OSError as exc:
        raise OutputError(
            f"{describe_write_error(exc, 'the checkpoints folder', checkpoint_dir)}. Fix the "
            "folder or choose another --output-dir."
        ) from None


def train(
    config: Config, data: Mnist, runtime: Any, guard: SignalGuard | None = None
) -> dict[str, Any] | None:
    """Run, resume or finish training; returns the final metrics on the chief, else None
    (also when the folder already holds this run, finished: nothing is written then)."""
    import keras

    guard = guard or SignalGuard()
    guard.total_epochs = config.epochs
    output_dir = Path(config.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    chief = runtime.is_chief
    decided = plan_run(config, runtime, data)
    if decided.action == "finished":
        if chief:
            print(
                f"{output_dir} already holds this run, finished after {config.epochs} epochs: "
                "nothing to do, nothing changed. Pass --restart to train it again."
            )
        return None
    if chief and decided.action == "fresh":
        with guard.critical():
            _start_fresh(checkpoint_dir, decided.record)
    keras.utils.set_random_seed(config.seed)
    trainer = Trainer(config, runtime, data)
    checkpoints = Checkpoints(trainer, output_dir)
    start, history = (0, []) if decided.action == "fresh" else checkpoints.restore()
    start = runtime.after_restore(start, trainer.model, trainer.optimizer)
    guard.saved_epoch = start
    tracker = Tracker(config.tracking and chief, checkpoint_dir / "mlflow_run_id")
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
        # Logged before the checkpoint: an epoch is either in MLflow and the checkpoint, or
        # trained (and logged) again after a kill.
        tracker.metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        with guard.critical():
            checkpoints.save(epoch + 1, history)
            guard.saved_epoch = epoch + 1
        if chief:
            print(
                f"epoch {epoch + 1}/{config.epochs}  loss {loss:.4f}  acc {accuracy:.4f}  "
                f"test_loss {test_loss:.4f}  test_acc {test_accuracy:.4f}  ({seconds:.1f}s)",
                flush=True,
            )
    checkpoints.close()
    runtime.barrier()
    if not chief:
        return None
    test_loss, test_accuracy, predictions = trainer.evaluate()
    metrics = {
        "model": config.model,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "epochs": len(history),  # in total, over every invocation
        "resumed_from_epoch": start,
        "epochs_this_run": config.epochs - start,
        "train_seconds": round(train_seconds, 3),
        "examples_per_second": round(examples / fresh_seconds, 1) if fresh_seconds else None,
        "distribution": runtime.kind,
        "replicas": runtime.num_replicas,
        "workers": runtime.num_workers,
        "global_batch_size": trainer.global_batch,
    }
    with guard.critical():
        paths = _write_outputs(output_dir, trainer, history, metrics, predictions)
        _write_atomic(
            checkpoint_dir / resume.RECORD_NAME, resume.record_text(decided.record, finished=True)
        )
    tracker.artifacts(paths)
    tracker.end()
    return metrics


def _write_outputs(
    output_dir: Path,
    trainer: Trainer,
    history: list[dict[str, float]],
    metrics: dict[str, Any],
    predictions: np.ndarray,
) -> list[Path]:
    """The model, then metrics.json and the pictures; a write error names what failed and
    that the last checkpoint can write them again."""
    try:
        save_model(trainer.model, output_dir / "model", example=trainer.x_test)
        return write_reports(output_dir, history, metrics, trainer.y_test, predictions)
    except _tf_write_error() as exc:
        raise OutputError(
            f"{describe_write_error(exc, 'the outputs in', output_dir)}. The checkpoint after "
            f"the last epoch is intact: free space or fix the folder, then rerun the same "
            "command to write the outputs from it (no epoch is trained again)."
        ) from None


def prepare_output_dir(path: Path) -> None:
    """Create ``--output-dir`` and prove a file can be created in it, before TensorFlow loads."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.is_file()), path)
        where = "is a file" if blocker == path else f"is under {blocker}, which is a file"
        raise OutputError(
            f"--output-dir {path} {where}, not a folder. Choose another --output-dir, or move "
            f"{blocker} away."
        ) from None
    except OSError as exc:
        raise OutputError(
            f"--output-dir {path} cannot be used: "
            f"{describe_write_error(exc, 'into', exc.filename or path)}. Choose a folder you can "
            "write to (on Azure ML, the job's outputs folder)."
        ) from None


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    guard = SignalGuard()
    guard.install()
    try:
        return _run(config, guard)
    except Interrupted as exc:
        print(guard.message(exc.signum), file=sys.stderr, flush=True)
        return 128 + exc.signum


def _run(config: Config, guard: SignalGuard) -> int:
    try:
        prepare_output_dir(Path(config.output_dir))
        data = load_mnist(config.data_folder)
    except (OutputError, DataError) as exc:
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
        metrics = train(config, data, runtime, guard)
    except (UsageError, resume.ResumeRefused, RestoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if metrics is not None:
        print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
