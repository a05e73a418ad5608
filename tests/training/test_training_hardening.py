"""Training at its edges: values the libraries refuse, output folders that cannot be written,
a disk that fills up, Ctrl-C and eviction, and workers that must not write.

Each failure is one line (or one paragraph) with an exit status, never a traceback, and
loses nothing that was already saved.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_main
from training.data import Mnist

TF_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def checkpointed_epoch(checkpoints: Path) -> int:
    state = checkpoints / "checkpoint"
    if not state.exists():
        return 0
    first = state.read_text().splitlines()[0]  # model_checkpoint_path: "ckpt-N"
    return int(first.split('"')[1].rsplit("-", 1)[1])


def leftovers(out: Path) -> list[str]:
    """Half-written files a failed or interrupted write could leave."""
    patterns = ("**/*.tmp", "**/*_temp", "**/*.partial", "**/*tempstate*")
    return sorted(str(p.relative_to(out)) for pattern in patterns for p in out.glob(pattern))


# ------------------------------------------------------------------ flags, before TensorFlow

BAD_VALUES = [
    (["--seed", "-1"], "must be between 0 and 4294967295"),
    (["--seed", str(2**32)], "must be between 0 and 4294967295"),
    (["--epochs", "1000000"], "must be between 1 and 10000"),
    (["--batch-size", "1000000000"], "must be between 1 and 60000"),
    (["--learning-rate", "1e39"], "between 1e-30 and 10"),
    (["--learning-rate", "1e-45"], "between 1e-30 and 10"),
    (["--learning-rate", "inf"], "between 1e-30 and 10"),
    (["--first-layer-neurons", "2000000"], "weights, more than the 100,000,000"),
    (["--first-layer-neurons", "20000", "--second-layer-neurons", "20000"], "choose smaller"),
    (["--output-dir", ""], "must name a folder"),
]


def test_values_the_libraries_refuse_are_usage_errors_before_tensorflow_loads():
    """One interpreter tries every value: each exits 2 with argparse's usage and one error
    line, and TensorFlow is never imported (no traceback after a 5-second import)."""
    script = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from training.train import main
        results = []
        for args in json.loads(sys.argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    code = main(args)
                except SystemExit as exc:
                    code = exc.code
            results.append([code, err.getvalue()])
        print(json.dumps({"results": results, "tensorflow": "tensorflow" in sys.modules}))
        """
    )
    cases = json.dumps([args for args, _ in BAD_VALUES])
    result = subprocess.run(
        [sys.executable, "-c", script, cases],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tensorflow"] is False
    for (args, complaint), (code, stderr) in zip(BAD_VALUES, report["results"], strict=True):
        lines = stderr.strip().splitlines()
        assert code == 2, (args, stderr)
        assert lines[0].startswith("usage:") and complaint in lines[-1], (args, stderr)
        assert lines[-1].startswith("python -m training.train: error:")
        assert "Traceback" not in stderr


# ------------------------------------------------------------------ output folders


def test_an_output_dir_that_cannot_be_a_folder_is_one_line_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "model.txt"
    a_file.write_text("not a folder")
    cases = [
        (a_file, f"--output-dir {a_file} is a file, not a folder"),
        (a_file / "outputs", f"is under {a_file}, which is a file"),
    ]
    if Path("/sys").is_dir():  # a real folder where nothing can be created, even by root
        cases.append((Path("/sys/tf-mnist-outputs"), "cannot be used: cannot write into"))
    for folder, complaint in cases:
        capsys.readouterr()
        assert run_main("--output-dir", str(folder), "--no-tracking") == 2
        captured = capsys.readouterr()
        message = captured.err.strip()
        assert message.startswith("error: ") and "\n" not in message, message
        assert complaint in message and "--output-dir" in message
        assert captured.out == ""
    assert a_file.read_text() == "not a folder"
    assert not Path("/sys/tf-mnist-outputs").exists()


def _full_disk_at(monkeypatch, name: str, epoch: int) -> None:
    """The ``epoch``-th write of a file called ``name`` fails half-way with ENOSPC, as a full
    disk does: the first bytes land, then the write raises."""
    original = Path.write_text
    seen = {"writes": 0}

    def write_text(self: Path, data: str, *args, **kwargs):
        if self.name == name:
            seen["writes"] += 1
            if seen["writes"] == epoch:
                original(self, data[: len(data) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def _limited_file_size(limit: int):
    def apply() -> None:  # in the child: a write past ``limit`` bytes fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_partial_files(
    mnist_dir, tmp_path, monkeypatch, capsys
):
    """Epoch 2's history write hits ENOSPC (Python's writes), then a rerun's checkpoint write
    fails in TensorFlow's file system (a file-size limit: a real failing write): each time
    one paragraph, exit 1, epoch 1's checkpoint intact and no partial file. A third run with
    room resumes from epoch 1 and finishes."""
    out = tmp_path / "outputs"
    args = ["--epochs", "2", "--batch-size", "2048", "--no-tracking", "--output-dir", str(out)]
    with monkeypatch.context() as patch:
        _full_disk_at(patch, "history.json.tmp", epoch=2)
        capsys.readouterr()
        assert run_main(*args) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: cannot write the checkpoint in") and "\n" not in message
    assert "no space left on the device" in message
    assert "checkpoint after epoch 1" in message and "rerun the same command" in message
    assert checkpointed_epoch(out / "checkpoints") == 1 and leftovers(out) == []
    assert not list((out / "checkpoints").glob("ckpt-2*"))
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1]

    limited = subprocess.run(
        [sys.executable, "-m", "training.train", *args],
        cwd=ROOT,
        env={**os.environ, **TF_QUIET},
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limited_file_size(2_000_000),  # the checkpoint's data file is ~3.2 MB
    )
    assert limited.returncode == 1, limited.stderr[-3000:]
    assert "Traceback" not in limited.stderr
    last = limited.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write the checkpoint in") and "File too large" in last
    assert "checkpoint after epoch 1" in last
    assert checkpointed_epoch(out / "checkpoints") == 1 and leftovers(out) == []
    assert not list((out / "checkpoints").glob("ckpt-2*"))

    capsys.readouterr()
    assert run_main(*args) == 0
    assert "Resuming from the checkpoint after epoch 1" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["epochs"], metrics["resumed_from_epoch"]) == (2, 1)
    assert leftovers(out) == []


@pytest.mark.slow
def test_a_full_disk_while_writing_the_outputs_is_finished_by_the_next_run(
    mnist_dir, tmp_path, monkeypatch, capsys
):
    """ENOSPC on metrics.json after the last epoch: one paragraph, exit 1, nothing partial,
    the run not marked finished; the same command then writes the outputs from the last
    checkpoint without training again."""
    out = tmp_path / "outputs"
    args = ["--epochs", "1", "--batch-size", "2048", "--no-tracking", "--output-dir", str(out)]
    with monkeypatch.context() as patch:
        _full_disk_at(patch, "metrics.json.tmp", epoch=1)
        capsys.readouterr()
        assert run_main(*args) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: cannot write the outputs in") and "\n" not in message
    assert "no space left on the device" in message and "no epoch is trained again" in message
    assert not (out / "metrics.json").exists() and leftovers(out) == []
    assert json.loads((out / "checkpoints" / "run.json").read_text())["finished"] is False

    capsys.readouterr()
    assert run_main(*args) == 0
    printed = capsys.readouterr().out
    assert "Resuming from the checkpoint after epoch 1" in printed and "epoch 1/1" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["epochs"], metrics["resumed_from_epoch"], metrics["epochs_this_run"]) == (
        1,
        1,
        0,
    )
    assert json.loads((out / "checkpoints" / "run.json").read_text())["finished"] is True


# ------------------------------------------------------------------ signals


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_eviction_stop_with_one_line_and_a_resumable_folder(
    mnist_dir, tmp_path, signum, status
):
    out = tmp_path / "outputs"
    command = [
        sys.executable,
        "-m",
        "training.train",
        *("--epochs", "4", "--batch-size", "2048", "--no-tracking", "--output-dir", str(out)),
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **TF_QUIET},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while checkpointed_epoch(out / "checkpoints") < 1:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    saved = checkpointed_epoch(out / "checkpoints")
    assert process.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    name = signal.Signals(signum).name
    expected = f"interrupted ({name}) after epoch {saved} of 4; rerun the same command to resume"
    assert stderr.strip().splitlines()[-1] == expected
    assert 1 <= saved < 4 and not (out / "metrics.json").exists()
    assert leftovers(out) == []


# ------------------------------------------------------------------ only the chief writes


def tiny_mnist(count: int = 400) -> Mnist:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return Mnist(images, labels, images[:50], labels[:50], Path())


# fork:begin horovod
class OneProcessHorovod:
    """``horovod.tensorflow`` as seen by a rank whose collectives return its own values: the
    main environment has no Horovod (real ranks run in tests/training/test_horovod.py)."""

    def broadcast_object(self, value: object, root_rank: int, name: str = "") -> object:
        return value

    def broadcast_variables(self, variables: list, root_rank: int) -> None:
        pass

    def allreduce(self, tensor: object, name: str = "") -> object:
        return tensor

    def DistributedGradientTape(self, tape: object) -> object:  # Horovod's name
        return tape


# fork:end horovod
def worker_one_of_two(kind: str):
    """Worker 1 of a two-worker cluster of ``kind`` (not the chief), in this one process."""
    import tensorflow as tf

    from training.distribute import MultiWorkerRuntime

    where = {"is_chief": False, "worker_index": 1, "num_workers": 2}
    strategy = tf.distribute.get_strategy()
    # fork:begin horovod
    if kind == "horovod":
        from training.horovod_runtime import HorovodRuntime

        return HorovodRuntime(kind, strategy, **where, hvd=OneProcessHorovod())
    # fork:end horovod
    return MultiWorkerRuntime(kind, strategy, **where)


# The kinds of cluster whose non-chief workers are checked (those this project has).
KINDS = [
    "multi_worker",
    # fork:begin horovod
    "horovod",
    # fork:end horovod
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_worker_that_is_not_the_chief_writes_nothing_into_the_output_dir(
    kind, tmp_path, monkeypatch
):
    """A non-chief worker trains its share and saves (multi-worker: to a scratch folder it
    removes) but writes nothing into --output-dir: no checkpoints, record, MLflow run id,
    model or metrics, even with tracking on."""
    import tempfile

    from training.config import parse_args
    from training.train import train

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    out = tmp_path / "outputs"
    # What the chief has written by the time the workers start: the run's record.
    chiefs = out / "checkpoints" / "run.json"
    chiefs.parent.mkdir(parents=True)
    chiefs.write_text('{"written by": "the chief"}')
    config = parse_args(["--epochs", "2", "--batch-size", "100", "--output-dir", str(out)])
    assert train(config, tiny_mnist(), worker_one_of_two(kind)) is None
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "checkpoints",
        "checkpoints/run.json",
    ]
    assert chiefs.read_text() == '{"written by": "the chief"}'
    assert list(scratch.glob("ckpt-worker*")) == []  # its checkpoint scratch is removed
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("kind", "saved"),
    [
        ("multi_worker", ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]),
        # fork:begin horovod
        ("horovod", []),
        # fork:end horovod
    ],
)
def test_a_non_chief_saves_checkpoints_only_where_saving_is_collective(
    kind, saved, tmp_path, monkeypatch
):
    """A multi-worker checkpoint save is a collective operation, so worker 1 takes part, into
    a scratch folder of its own that it removes at the end; a Horovod rank other than 0 saves
    nothing. Neither writes into the output folder."""
    import tempfile

    from training.checkpoints import Checkpoints
    from training.config import parse_args
    from training.train import Trainer

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = parse_args(["--batch-size", "100", "--no-tracking"])
    checkpoints = Checkpoints(Trainer(config, worker_one_of_two(kind), tiny_mnist()), tmp_path)
    checkpoints.save(1, [{"epoch": 1}])
    (own,) = scratch.glob("ckpt-worker1-*")
    assert sorted(path.name for path in own.iterdir()) == saved
    assert not (tmp_path / "checkpoints").exists()
    checkpoints.close()
    assert list(scratch.iterdir()) == []
