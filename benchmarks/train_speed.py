"""Wall time to 98.0% MNIST test accuracy: the default training against plain Keras.

Baseline: the same 784-300-100-10 net trained the way most samples do it (``model.fit``,
Adam at its default rate, batch 128, numpy arrays in), evaluated after every epoch until it
reaches the target. Ours: ``training.train`` with its defaults. Both run in this process,
one after the other, on real MNIST; training seconds exclude the per-epoch evaluation.

    MNIST_DATA_DIR=../shared/data/mnist python -m benchmarks.train_speed [--repeats 3]

Prints seconds to target for each, the speed-up ratio (goal: >= 2x) and examples/second.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace

import numpy as np

TARGET = 0.98


def baseline(data, max_epochs: int) -> dict[str, float]:
    import keras

    from training.model import NUM_CLASSES, NUM_PIXELS

    keras.utils.set_random_seed(0)
    x_train = data.x_train.reshape(-1, NUM_PIXELS).astype("float32") / 255.0
    x_test = data.x_test.reshape(-1, NUM_PIXELS).astype("float32") / 255.0
    model = keras.Sequential(
        [
            keras.Input((NUM_PIXELS,)),
            keras.layers.Dense(300, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    class UntilTarget(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds, self.accuracy, self.epochs = 0.0, 0.0, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds += time.perf_counter() - self.began
            self.epochs = epoch + 1
            predictions = model(x_test, training=False).numpy().argmax(axis=1)
            self.accuracy = float(np.mean(predictions == data.y_test))
            if self.accuracy >= TARGET:
                self.model.stop_training = True

    tracker = UntilTarget()
    model.fit(
        x_train, data.y_train, batch_size=128, epochs=max_epochs, verbose=0, callbacks=[tracker]
    )
    return {
        "seconds_to_target": tracker.seconds if tracker.accuracy >= TARGET else float("inf"),
        "epochs": tracker.epochs,
        "test_accuracy": tracker.accuracy,
        "examples_per_second": tracker.epochs * len(x_train) / tracker.seconds,
    }


def ours(data) -> dict[str, float]:
    import json
    from pathlib import Path

    from training.config import parse_args
    from training.distribute import detect_runtime
    from training.train import train

    with tempfile.TemporaryDirectory() as out:
        config = replace(parse_args([]), output_dir=out, tracking=False)
        metrics = train(config, data, detect_runtime())
        history = json.loads((Path(out) / "checkpoints" / "history.json").read_text())
    elapsed, to_target, epochs = 0.0, float("inf"), 0
    for row in history:
        elapsed += row["seconds"]
        if row["test_accuracy"] >= TARGET:
            to_target, epochs = elapsed, row["epoch"]
            break
    return {
        "seconds_to_target": to_target,
        "epochs": epochs,
        "test_accuracy": metrics["test_accuracy"],
        "full_run_seconds": metrics["train_seconds"],
        "examples_per_second": metrics["examples_per_second"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=30)
    args = parser.parse_args()

    from training.data import load_mnist

    data = load_mnist()
    base_runs, our_runs = [], []
    for _ in range(args.repeats):
        base_runs.append(baseline(data, args.max_epochs))
        our_runs.append(ours(data))

    def median(runs, key):
        return statistics.median(run[key] for run in runs)

    for name, runs in (("baseline model.fit", base_runs), ("training.train", our_runs)):
        print(
            f"{name:20s} to {TARGET:.1%}: {median(runs, 'seconds_to_target'):6.2f} s "
            f"({median(runs, 'epochs'):.0f} epochs), final test acc "
            f"{median(runs, 'test_accuracy'):.4f}, "
            f"{median(runs, 'examples_per_second'):,.0f} examples/s"
        )
    print(f"training.train full default run: {median(our_runs, 'full_run_seconds'):.2f} s")
    ratio = median(base_runs, "seconds_to_target") / median(our_runs, "seconds_to_target")
    print(f"speed-up to {TARGET:.1%} (baseline / ours): {ratio:.2f}x  (goal >= 2x)")


if __name__ == "__main__":
    main()
