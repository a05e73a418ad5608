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
    python -m scripts run training/jobs/OTHER.yml          # the other specs there, alike

Re-running the same command with the same ``--output-dir`` resumes from the last epoch
checkpoint in ``OUTPUT_DIR/checkpoints`` (how low-priority nodes survive eviction), but only
when ``OUTPUT_DIR/checkpoints/run.json`` says the same flags, runtime and data produced it
(``training/resume.py``; ``--epochs`` included: it sets the schedule's length); otherwise it
stops before training and says what differs. ``--restart`` discards the old checkpoints. A
rerun of a finished folder with the same flags has nothing to do and changes nothing.
SIGINT and SIGTERM stop after the current call of steps (the first step, then up to 64 a
call: ``Runtime.steps_per_call``) with one line (exit 130 and 143).

Writes to ``--output-dir`` (only the chief): ``model/`` (an MLflow model; the Keras file is
``model/data/model.keras``), ``metrics.json``, ``training_curves.png``,
``confusion_matrix.png``; params and metrics go to MLflow (a local ``mlflow.db`` unless
``MLFLOW_TRACKING_URI`` is set, as it is on Azure ML).

This file is the training loop (``Trainer``, ``train``) and ``main``; its neighbours each do
one job: ``training/config.py`` the flags, ``training/runtime.py`` (with ``distribute.py`` and
the cluster runtimes it imports) where and how the process trains, ``training/resume.py``
whether the output folder's checkpoints may be resumed, ``training/checkpoints.py`` the checkpoints
themselves, ``training/outputs.py`` the model, metrics and pictures, ``training/tracking.py``
MLflow, ``training/signals.py`` Ctrl-C and eviction.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import resume
from training.checkpoints import Checkpoints, RestoreError
from training.config import LABEL_SMOOTHING, WARMUP_FRACTION, Config, UsageError, parse_args
from training.data import DataError, Mnist, load_mnist
from training.outputs import OutputError, prepare_output_dir, write_outputs
from training.runtime import Examples, Runtime
from training.signals import Interrupted, SignalGuard
from training.tracking import Tracker

EVAL_BATCH = 2_000  # test images per prediction call
# XLA's newer CPU fusion emitters turn the random numbers behind Keras' Dropout (TensorFlow's
# default "auto_select" generator) into a ~30 ms loop per step: the DNN's compiled step ran
# 10x slower than without XLA. The older emitters keep it ~1 ms (TensorFlow 2.21, measured).
XLA_CPU_FLAG = "--xla_cpu_use_fusion_emitters=false"
XLA_FLAG_SINCE = (2, 21)  # older XLA has no such flag and aborts on unknown ones


def use_fast_xla_cpu_random() -> None:
    """Add ``XLA_CPU_FLAG`` to ``XLA_FLAGS`` unless it names the option already; XLA reads
    the variable once, at its first compilation, so call this before any."""
    import tensorflow as tf

    version = tuple(int(part) for part in tf.__version__.split(".")[:2])
    flags = os.environ.get("XLA_FLAGS", "")
    if version >= XLA_FLAG_SINCE and XLA_CPU_FLAG.split("=")[0] not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_FLAG}".strip()


def make_dataset(
    images: Any,
    labels: Any,
    batch_size: int,
    *,
    seed: int,
    epoch: int | None,
    input_context: Any = None,
    onward: bool = False,
) -> Any:
    """Batches of (float32 [batch, *image] in [0, 1], int32 labels), shuffled by seed and epoch.

    ``images`` (uint8 [N, *image], shaped for the model) and ``labels`` stay in memory as
    tensors, so there is nothing to cache. Shuffling is one vectorised permutation per epoch,
    batched into index rows; each row gathers and scales a whole batch at once and batches are
    prefetched. An element-wise ``shuffle`` of 60,000 indices costs more than the training step
    itself on two cores. With ``epoch`` the order depends only on ``seed`` and the epoch, so a
    resumed run sees the same batches as an uninterrupted one; with ``onward`` the epochs after
    ``epoch`` follow it, each exactly as its own dataset would be (one dataset, and one
    iterator, for a whole run); with ``epoch=None`` it repeats forever with a new order each
    pass, from epoch 0 (parameter-server workers). ``input_context`` gives each worker its own
    slice of every epoch's permutation.
    """
    import tensorflow as tf

    # Tensors, not numpy arrays: a captured array is converted again on every map call.
    images, labels = tf.convert_to_tensor(images), tf.convert_to_tensor(labels)
    count = int(images.shape[0])
    shards, shard = 1, 0
    if input_context is not None:
        shards, shard = input_context.num_input_pipelines, input_context.input_pipeline_id
    first, last = (0, 2**62) if epoch is None else (epoch, 2**62 if onward else epoch + 1)
    epochs = tf.data.Dataset.range(first, last)

    def epoch_batches(epoch_number: Any) -> Any:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64),
            seed=tf.stack([tf.constant(seed, tf.int64), epoch_number]),
        )[shard::shards]
        usable = (tf.size(order) // batch_size) * batch_size
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order[:usable], [-1, batch_size]))

    def gather(batch_indices: Any) -> tuple[Any, Any]:
        x = tf.cast(tf.gather(images, batch_indices), tf.float32) / 255.0
        return x, tf.gather(labels, batch_indices)

    return (
        epochs.flat_map(epoch_batches)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


@dataclass
class EpochResult:
    epoch: int
    loss: float
    accuracy: float
    test_loss: float
    test_accuracy: float
    learning_rate: float
    seconds: float


class EpochClock:
    """Where each epoch's wall time goes: ``lap(part)`` adds the seconds since the last lap
    (or ``start``) to ``part``; ``means()`` is each part's mean per epoch."""

    PARTS = ("train", "evaluate", "tracking", "checkpoint", "other")

    def __init__(self) -> None:
        self.totals = dict.fromkeys(self.PARTS, 0.0)
        self.epochs = 0
        self._last = 0.0

    def start(self) -> None:
        self.epochs += 1
        self._last = time.perf_counter()

    def lap(self, part: str) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self.totals[part] += seconds
        return seconds

    def means(self) -> dict[str, float] | None:
        if not self.epochs:
            return None
        return {part: round(total / self.epochs, 4) for part, total in self.totals.items()}


class Trainer:
    """The training loop for every runtime: one step function, several ways to run it.

    ``_steps(iterator, count)`` runs ``count`` steps in one graph loop (the host waits once a
    call, not once a step); the runtime's ``run_steps`` decides how many a call. The replica
    step inside is XLA-compiled where the model asks for it (``Architecture.jit``) and the
    runtime allows it (``Runtime.compiles_step``); ``warm_up`` compiles it before the clock.
    """

    def __init__(self, config: Config, runtime: Runtime, data: Mnist) -> None:
        import keras
        import tensorflow as tf

        from training.model import MODELS, build_model
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
        batches = functools.partial(make_dataset, seed=config.seed)
        self.examples = Examples(self.x_train, self.y_train, self.global_batch, batches)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch_var
        )
        # The model asks for XLA (``Architecture.jit``), the runtime says whether its step can
        # take it; either way the steps of one call run in one graph loop (``_steps``).
        self.jit = MODELS[config.model].jit and runtime.compiles_step
        if self.jit:
            use_fast_xla_cpu_random()
        # No AutoGraph for the compiled step: it has no Python control flow on tensors, and
        # converting it (Keras' calls included) costs ~0.1 s of its ~0.4 s trace.
        self._replica = (
            tf.function(self._replica_step, jit_compile=True, autograph=False) if self.jit else None
        )
        self._steps = tf.function(self._distributed_steps)
        self._predict = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec([None, *self.x_test.shape[1:]], tf.float32)],
        )
        self._first_step_done = False

    # one synchronous step on every replica; returns (summed loss, correct count)
    def _replica_step(self, x: Any, y: Any) -> tuple[Any, Any]:
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

    def _distributed_steps(self, iterator: Any, count: Any) -> tuple[Any, Any]:
        """``count`` synchronous steps, summed: (loss, correct count). Traced once by
        ``tf.function``: a tensor ``count`` becomes a loop in the graph, so the host neither
        dispatches nor waits for each step; a Python int unrolls (one step per call)."""
        import tensorflow as tf

        strategy = self.runtime.strategy
        replica_step = self._replica or self._replica_step
        loss_sum, correct_sum = tf.constant(0.0), tf.constant(0.0)
        for _ in range(count):
            x, y = next(iterator)
            loss, correct = strategy.run(replica_step, args=(x, y))
            loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            correct_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
        return loss_sum, correct_sum

    def warm_up(self, epoch: int = 0) -> None:
        """Trace and XLA-compile the step before the first epoch's clock starts.

        Runs one step on a batch of zeros (``_warm_up_batches``: the epochs' element spec, so
        the function traced and compiled is the one they call), then puts every variable of the
        model (weights and Dropout seeds) and the optimizer (slots, step count) back as they
        were, so training continues from exactly the state it had. While XLA compiles (in a
        thread: compiling holds no Python lock), the runtime builds the iterator of ``epoch``,
        the first to train (``Runtime.prepare_epoch``). Only a compiled step is warmed up (it
        runs on one replica); an uncompiled one traces in its first call.
        """
        import tensorflow as tf

        if not self.jit:
            return
        state = [*self.model.variables, *self.optimizer.variables]
        saved = [variable.numpy() for variable in state]
        iterator, count = iter(self._warm_up_batches()), tf.constant(1, tf.int32)
        self._steps.get_concrete_function(iterator, count)  # tracing holds the Python lock
        with ThreadPoolExecutor(1) as pool:
            compiled = pool.submit(self._steps, iterator, count)
            self.runtime.prepare_epoch(self.examples, epoch)
            compiled.result()
        for variable, value in zip(state, saved, strict=True):
            variable.assign(value)

    def _warm_up_batches(self) -> Any:
        """One batch of zeros, repeated, distributed as ``Runtime.epoch_dataset`` distributes
        the epochs' batches: the same element spec (float32 images, int32 labels, the replica's
        batch) without building the shuffled pipeline over every example (0.1-0.3 s) for one
        step. Only runtimes that compile the step warm up, and they batch that way."""
        import tensorflow as tf

        def batches(context: Any) -> Any:
            size = context.get_per_replica_batch_size(self.global_batch)
            x = tf.zeros([size, *self.x_train.shape[1:]], tf.float32)
            return tf.data.Dataset.from_tensors((x, tf.zeros([size], tf.int32))).repeat()

        return self.runtime.strategy.distribute_datasets_from_function(batches)

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        """One pass over the training data: (mean loss, accuracy, examples seen)."""
        loss_sum = correct = 0.0
        steps = self.runtime.run_steps(self._steps, self.examples, epoch, self.steps_per_epoch)
        for loss, hits in steps:
            if not self._first_step_done:
                self.runtime.after_first_step(self.model, self.optimizer)
                self._first_step_done = True
            loss_sum += float(loss)
            correct += float(hits)
        seen = self.steps_per_epoch * self.global_batch
        return loss_sum / seen, correct / seen, seen * self.runtime.ranks_per_step

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


def train(
    config: Config, data: Mnist, runtime: Runtime, guard: SignalGuard | None = None
) -> dict[str, Any] | None:
    """Run, resume or finish training; returns the final metrics on the chief, else None
    (also when the folder already holds this run, finished: nothing is written then)."""
    import keras

    guard = guard or SignalGuard()
    guard.total_epochs = config.epochs
    output_dir = Path(config.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    chief = runtime.is_chief
    decided = resume.plan_run(config, runtime, data)
    if decided.action == "finished":
        if chief:
            print(
                f"{output_dir} already holds this run, finished after {config.epochs} epochs: "
                "nothing to do, nothing changed. Pass --restart to train it again."
            )
        return None
    if chief and decided.action == "fresh":
        with guard.critical():
            resume.start_fresh(checkpoint_dir, decided.record)
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
    began = time.perf_counter()
    trainer.warm_up(start)
    startup_seconds = time.perf_counter() - began
    train_seconds = sum(row["seconds"] for row in history)
    examples, fresh_seconds = 0, 0.0  # this process's own work, for its throughput
    clock = EpochClock()
    for epoch in range(start, config.epochs):
        clock.start()
        loss, accuracy, seen = trainer.train_epoch(epoch)
        seconds = clock.lap("train")
        train_seconds += seconds
        fresh_seconds += seconds
        examples += seen
        test_loss, test_accuracy, predictions = trainer.evaluate()
        clock.lap("evaluate")
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
        clock.lap("tracking")
        with guard.critical():
            checkpoints.save(epoch + 1, history)
            guard.saved_epoch = epoch + 1
        clock.lap("checkpoint")
        if chief:
            print(
                f"epoch {epoch + 1}/{config.epochs}  loss {loss:.4f}  acc {accuracy:.4f}  "
                f"test_loss {test_loss:.4f}  test_acc {test_accuracy:.4f}  ({seconds:.1f}s)",
                flush=True,
            )
        clock.lap("other")
    checkpoints.close()
    runtime.barrier()
    if not chief:
        return None
    if start == config.epochs:  # killed after the last checkpoint: nothing evaluated yet
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
        "seconds_per_epoch": clock.means(),  # this run's epochs: where their time went
        "startup_seconds": round(startup_seconds, 3),  # compiling the step, before epoch 1
        "compiled_step": trainer.jit,
        "distribution": runtime.kind,
        "replicas": runtime.num_replicas,
        "workers": runtime.num_workers,
        "global_batch_size": trainer.global_batch,
    }
    with guard.critical():
        test_set = (trainer.x_test, trainer.y_test)
        paths = write_outputs(output_dir, trainer.model, test_set, history, metrics, predictions)
        resume.mark_finished(checkpoint_dir, decided.record)
    tracker.artifacts(paths)
    tracker.end()
    return metrics


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
