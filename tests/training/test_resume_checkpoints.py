"""Resumes that are honest: a rerun resumes only the run its checkpoints record, restores all
of it (every weight and the optimizer) or stops, and a finished folder stays as it is.

Training runs in this process through ``training.train.main`` (TensorFlow loads once) with a
short schedule: the assertions are about what is refused, restored and written, not accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_main
from tests.local_jobs import files_of
from training.data import Mnist

pytestmark = pytest.mark.slow

FAST = ["--epochs", "2", "--batch-size", "1024", "--no-tracking"]


@pytest.fixture(scope="module")
def finished(mnist_dir, tmp_path_factory) -> Path:
    """A folder holding a finished 2-epoch run with the FAST flags."""
    out = tmp_path_factory.mktemp("finished") / "outputs"
    assert run_main(*FAST, "--output-dir", str(out)) == 0
    return out


@pytest.fixture
def copy_of_finished(finished, tmp_path) -> Path:
    out = tmp_path / "outputs"
    shutil.copytree(finished, out)
    return out


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        (["--first-layer-neurons", "200"], "first_layer_neurons 300 -> 200"),
        (["--second-layer-neurons", "50"], "second_layer_neurons 100 -> 50"),
        (["--model", "cnn"], "model dnn -> cnn"),  # another architecture's weights
        (["--dropout", "0.5"], "dropout 0.0 -> 0.5"),
        (["--epochs", "1"], "epochs 2 -> 1"),  # fewer: would claim a 1-epoch model
        (["--epochs", "3"], "epochs 2 -> 3"),  # more: another cosine schedule
        (["--batch-size", "512"], "batch_size 1024 -> 512"),
        (["--learning-rate", "0.001"], "learning_rate 0.005 -> 0.001"),
        (["--seed", "7"], "seed 0 -> 7"),
    ],
)
def test_a_rerun_with_other_flags_is_refused_before_training_and_changes_nothing(
    finished, change, difference, capsys
):
    before = files_of(finished)
    args = [*FAST, "--output-dir", str(finished)]
    flag = change[0]
    args = [*args[: args.index(flag)], *args[args.index(flag) + 2 :]] if flag in args else args
    capsys.readouterr()
    assert run_main(*args, *change) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "it trained or printed metrics"
    message = captured.err.strip()
    assert message.startswith("error: ") and "\n" not in message, message  # one paragraph
    assert difference in message
    assert "--output-dir" in message and "--restart" in message
    assert files_of(finished) == before


def test_rerunning_a_finished_folder_with_its_flags_changes_nothing(finished, capsys):
    before = files_of(finished)
    capsys.readouterr()
    assert run_main(*FAST, "--output-dir", str(finished)) == 0
    captured = capsys.readouterr()
    assert "finished after 2 epochs: nothing to do" in captured.out
    assert "epoch 1/2" not in captured.out and "test_accuracy" not in captured.out
    assert files_of(finished) == before
    metrics = json.loads((finished / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumed_from_epoch"] == 0
    assert metrics["epochs_this_run"] == 2


def test_restart_discards_the_old_checkpoints_and_trains_the_new_flags(copy_of_finished, capsys):
    out = copy_of_finished
    old_model = files_of(out / "model")
    capsys.readouterr()
    args = ["--epochs", "1", "--batch-size", "1024", "--no-tracking", "--dropout", "0.5"]
    assert run_main(*args, "--output-dir", str(out), "--restart") == 0
    assert "Resuming" not in capsys.readouterr().out
    record = json.loads((out / "checkpoints" / "run.json").read_text())
    assert record["produced_by"]["dropout"] == 0.5 and record["produced_by"]["epochs"] == 1
    assert record["finished"] is True
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.index")) == ["ckpt-1.index"]
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["epochs"], metrics["resumed_from_epoch"], metrics["epochs_this_run"]) == (
        1,
        0,
        1,
    )
    assert files_of(out / "model") != old_model  # replaced by the finished new run


def test_checkpoints_without_a_record_are_not_resumed(copy_of_finished, capsys):
    out = copy_of_finished
    (out / "checkpoints" / "run.json").unlink()  # as an older version of the script left them
    before = files_of(out)
    capsys.readouterr()
    assert run_main(*FAST, "--output-dir", str(out)) == 2
    message = capsys.readouterr().err
    assert "without a record" in message and "--restart" in message
    assert files_of(out) == before


def test_lost_outputs_of_a_finished_run_are_written_again_without_training(
    copy_of_finished, capsys
):
    """Killed after the last checkpoint, before the model was written: the rerun writes the
    outputs from the checkpoint and trains no epoch again."""
    out = copy_of_finished
    expected = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    capsys.readouterr()
    assert run_main(*FAST, "--output-dir", str(out)) == 0
    printed = capsys.readouterr().out
    assert "Resuming from the checkpoint after epoch 2" in printed and "epoch 2/2" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=1e-6)
    assert (metrics["epochs"], metrics["resumed_from_epoch"], metrics["epochs_this_run"]) == (
        2,
        2,
        0,
    )
    assert (out / "model" / "MLmodel").is_file()


# ------------------------------------------------------------------ in-process, synthetic data


def tiny_mnist(seed: int = 0, count: int = 600) -> Mnist:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return Mnist(images, labels, images[:100], labels[:100], Path())


def single_runtime():
    import tensorflow as tf

    from training.runtime import Runtime

    return Runtime("single", tf.distribute.get_strategy())


def test_checkpoints_from_other_data_are_not_resumed(tmp_path):
    from training.config import parse_args
    from training.resume import ResumeRefused
    from training.train import train

    config = parse_args(
        ["--epochs", "2", "--batch-size", "100", "--no-tracking", "--output-dir", str(tmp_path)]
    )
    data = tiny_mnist()
    train(config, data, single_runtime())
    other = tiny_mnist()
    other.x_train[0, 0, 0] ^= 1  # one bit of one pixel
    with pytest.raises(ResumeRefused, match=r"data_sha256 [0-9a-f]{64} -> [0-9a-f]{64}"):
        train(config, other, single_runtime())


def _trainer(config_args: list[str], data: Mnist):
    from training.config import parse_args
    from training.train import Trainer

    return Trainer(parse_args([*config_args, "--no-tracking"]), single_runtime(), data)


@pytest.mark.parametrize("saved", ["epoch only", "model and epoch, no optimizer", "other shapes"])
def test_a_checkpoint_that_does_not_restore_everything_is_an_error(tmp_path, saved):
    """Whatever the record says, the restore itself must bind every weight and optimizer
    variable: anything less is a RestoreError, never a warning and a fresh model."""
    import tensorflow as tf

    from training.checkpoints import Checkpoints, RestoreError

    data = tiny_mnist()
    args = ["--batch-size", "100", "--epochs", "2", "--output-dir", str(tmp_path)]
    source = _trainer(args, data)
    source.train_epoch(0)
    source.epoch_var.assign(1)
    if saved == "epoch only":
        partial = tf.train.Checkpoint(epoch=source.epoch_var)
    elif saved == "model and epoch, no optimizer":
        partial = tf.train.Checkpoint(model=source.model, epoch=source.epoch_var)
    else:
        partial = _trainer([*args, "--first-layer-neurons", "20"], data).checkpoint
    tf.train.CheckpointManager(partial, str(tmp_path / "checkpoints"), 2).save(1)

    target = _trainer(args, data)
    with pytest.raises(RestoreError, match="does not restore this run's model and optimizer"):
        Checkpoints(target, tmp_path).restore()
