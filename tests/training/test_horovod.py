"""Horovod: the same training package on 2 local processes over Gloo, in its own environment.

The slow tests build the pinned Horovod virtualenv on first use (minutes; see
training/environments/horovod/build_env.py) and reuse it afterwards. Where it cannot be
built (no compiler, no Python 3.8-3.11) they fail and say why: CI must not pass by skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.local_jobs import files_of
from training.data import Mnist
from training.environments.horovod import build_env
from training.horovod_runtime import HorovodRuntime

NP = 2
EPOCHS = 3
EXPECTED_OUTPUTS = {
    "model",
    "metrics.json",
    "training_curves.png",
    "confusion_matrix.png",
    "checkpoints",
}


# ------------------------------------------------------------------ the environment builder


def test_requirements_pin_every_package_and_install_horovod_last():
    base, horovod = build_env.requirement_lines()
    assert horovod == ["horovod==0.28.1"]
    assert all("==" in pin for pin in base), [pin for pin in base if "==" not in pin]
    names = {pin.split("==")[0].lower() for pin in base}
    assert {"tensorflow-cpu", "cmake", "numpy", "matplotlib"} <= names
    cmake = next(pin for pin in base if pin.lower().startswith("cmake=="))
    # Horovod 0.28.1 fails to configure with CMake 4.
    assert int(cmake.split("==")[1].split(".")[0]) < 4


def test_fingerprint_follows_the_pins_and_the_python(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tensorflow-cpu==2.13.1\nhorovod==0.28.1\n")
    first = build_env.fingerprint("3.11", requirements)
    assert build_env.fingerprint("3.11", requirements) == first
    assert build_env.fingerprint("3.10", requirements) != first
    requirements.write_text("tensorflow-cpu==2.12.1\nhorovod==0.28.1\n")
    assert build_env.fingerprint("3.11", requirements) != first


def test_an_unstamped_or_stale_venv_is_not_current(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    assert not build_env.is_current(venv)  # an interrupted build leaves no stamp
    (venv / build_env.STAMP).write_text("0" * 64 + "\n")
    assert not build_env.is_current(venv)  # built from other pins
    version = "{}.{}".format(*sys.version_info[:2])
    (venv / build_env.STAMP).write_text(build_env.fingerprint(version) + "\n")
    assert build_env.is_current(venv)


def test_missing_compiler_is_reported_before_building(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no c++, g++, clang++ or make
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(build_env.HorovodEnvError, match=r"C\+\+17 compiler.*make"):
        build_env.check_toolchain({"version": "3.11", "include": str(tmp_path)})


def test_horovod_launch_without_horovod_fails_with_a_clear_message(mnist_dir, tmp_path):
    """An MPI launcher around the default environment (TF 2.21, no Horovod): exit 2, no
    traceback, and the message says how to get the Horovod environment."""
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--output-dir", str(tmp_path / "out")],
        cwd=ROOT,
        env={**os.environ, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "Horovod cannot be imported" in result.stderr
    assert "make horovod-env" in result.stderr


# ------------------------------------------------------------------ sharding (no Horovod)


def test_each_rank_trains_on_its_own_interleaved_shard():
    """Rank r of n trains on examples r, r+n, r+2n, ... of every epoch's data: the shards
    are disjoint, cover the data, and every rank runs the same number of steps."""
    from training.config import parse_args
    from training.train import Trainer

    count, batch = 1_000, 50
    index = np.arange(count)
    # Each image spells its own index in its first two pixels, so batches reveal it.
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = index // 256, index % 256
    data = Mnist(images, (index % 10).astype(np.uint8), images[:20], np.zeros(20, np.uint8), Path())
    config = parse_args(["--batch-size", str(batch), "--epochs", "2", "--no-tracking"])
    import tensorflow as tf

    seen = {}
    for rank in range(NP):
        runtime = HorovodRuntime(
            "horovod", tf.distribute.get_strategy(), worker_index=rank, num_workers=NP
        )
        trainer = Trainer(config, runtime, data)
        assert trainer.steps_per_epoch == count // (batch * NP)
        assert float(trainer.schedule.peak) == pytest.approx(config.learning_rate * NP**0.5)
        epoch = runtime.epoch_dataset(trainer.examples, epoch=0)
        batches = list(epoch.take(trainer.steps_per_epoch))
        pixels = np.concatenate([np.rint(x.numpy()[:, :2] * 255) for x, _ in batches])
        seen[rank] = (pixels[:, 0] * 256 + pixels[:, 1]).astype(int)
        assert len(seen[rank]) == trainer.steps_per_epoch * batch
        assert set(seen[rank] % NP) == {rank}, "a rank read another rank's examples"
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == count  # 1000 = 2 ranks x 10 steps x 50


# ------------------------------------------------------------------ real runs under horovodrun


@pytest.fixture(scope="module")
def horovod_python() -> Path:
    try:
        return build_env.ensure(say=lambda message: print(message, flush=True))
    except build_env.HorovodEnvError as exc:
        pytest.fail(f"The Horovod environment cannot be built here: {exc}", pytrace=False)


def horovodrun(python: Path, output_dir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        str(python.parent / "horovodrun"),
        "--gloo",
        "-np",
        str(NP),
        "-H",
        f"localhost:{NP}",
        str(python),
        "-m",
        "training.train",
        "--output-dir",
        str(output_dir),
        "--no-tracking",
        *args,
    ]
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )


def rank_lines(output: str, rank: int) -> list[str]:
    """What one rank printed: horovodrun prefixes each line with ``[rank]<stream>:``."""
    prefix = f"[{rank}]<stdout>:"
    return [line[len(prefix) :] for line in output.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def horovod_run(horovod_python, mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("horovod") / "outputs"
    result = horovodrun(horovod_python, out, "--epochs", str(EPOCHS))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return out, result.stdout


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a cold build of the environment takes minutes
def test_two_ranks_train_the_net_to_97_percent(horovod_run, mnist_dir):
    out, stdout = horovod_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.97, metrics
    assert metrics["distribution"] == "horovod"
    assert metrics["workers"] == NP and metrics["replicas"] == 1
    assert metrics["epochs"] == EPOCHS and metrics["resumed_from_epoch"] == 0

    # Both ranks ran, as Horovod ranks of one job...
    for rank in range(NP):
        assert any(f"Horovod rank {rank} of {NP}" in line for line in rank_lines(stdout, rank))
    # ...but only rank 0 reported epochs and the final metrics...
    chief, other = rank_lines(stdout, 0), rank_lines(stdout, 1)
    assert sum(line.startswith("epoch ") for line in chief) == EPOCHS
    assert not any(line.startswith("epoch ") or "test_accuracy" in line for line in other)
    # ...and only the chief's outputs are there, complete (no staging or worker folders).
    assert {p.name for p in out.iterdir()} == EXPECTED_OUTPUTS
    # The model, written by tf.keras 2.13, loads in Keras 3 (serving) and classifies the test
    # set exactly as rank 0 measured it.
    import keras

    from training.data import load_mnist

    model = keras.saving.load_model(out / "model" / "data" / "model.keras", compile=False)
    test = load_mnist(mnist_dir)
    probabilities = np.asarray(model(test.x_test.reshape(-1, 784).astype("float32") / 255.0))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    accuracy = np.mean(probabilities.argmax(axis=1) == test.y_test)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.index"))
    assert checkpoints == [f"ckpt-{EPOCHS - 1}.index", f"ckpt-{EPOCHS}.index"]


def rewind_to_epoch(out: Path, epoch: int) -> None:
    """Leave ``out`` as a kill right after epoch ``epoch``'s checkpoint would: later
    checkpoints, the model and metrics gone, the run not finished."""
    checkpoints = out / "checkpoints"
    for path in checkpoints.glob("ckpt-*"):
        if int(path.name.split(".")[0].split("-")[1]) > epoch:
            path.unlink()
    (checkpoints / "checkpoint").write_text(
        f'model_checkpoint_path: "ckpt-{epoch}"\nall_model_checkpoint_paths: "ckpt-{epoch}"\n'
    )
    record = json.loads((checkpoints / "run.json").read_text())
    (checkpoints / "run.json").write_text(json.dumps({**record, "finished": False}))
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rerun_of_a_finished_folder_changes_nothing_then_a_kill_resumes_every_rank(
    horovod_python, horovod_run
):
    """The same command on the finished folder: nothing to do on any rank, nothing changes.
    After a kill that left epoch EPOCHS - 1's checkpoint, both ranks resume from it (else
    the all-reduce would hang), tf.keras 2 restores every variable, and the chief's history
    continues."""
    out, _ = horovod_run
    before = files_of(out)
    result = horovodrun(horovod_python, out, "--epochs", str(EPOCHS))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert any("nothing to do" in line for line in rank_lines(result.stdout, 0))
    assert files_of(out) == before

    rewind_to_epoch(out, EPOCHS - 1)
    result = horovodrun(horovod_python, out, "--epochs", str(EPOCHS))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    chief = rank_lines(result.stdout, 0)
    assert any(f"Resuming from the checkpoint after epoch {EPOCHS - 1}" in line for line in chief)
    assert [line.split()[1] for line in chief if line.startswith("epoch ")] == [
        f"{EPOCHS}/{EPOCHS}"
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == EPOCHS - 1 and metrics["epochs"] == EPOCHS
    assert metrics["epochs_this_run"] == 1
    assert metrics["test_accuracy"] >= 0.97, metrics
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_horovod_after_a_default_run_is_refused_and_the_model_is_untouched(
    horovod_python, mnist_dir, tmp_path
):
    """README order: the default run into a folder, then `make train-horovod NP=2` into the
    same folder. Its checkpoint cannot be resumed by two tf.keras 2 ranks: every rank stops
    before training with what differs, and the default run's model stays as it was."""
    out = tmp_path / "outputs"
    flags = ["--epochs", "1", "--batch-size", "1024"]
    default = subprocess.run(
        [sys.executable, "-m", "training.train", "--output-dir", str(out), "--no-tracking", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert default.returncode == 0, default.stderr[-3000:]
    before = files_of(out)

    result = horovodrun(horovod_python, out, *flags)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    # horovodrun itself ends with a RuntimeError traceback when a rank exits non-zero; the
    # ranks print none and train nothing.
    rank_output = [line for line in output.splitlines() if line.startswith("[")]
    assert not any("Traceback" in line or "epoch 1/1" in line for line in rank_output)
    refusal = [line for line in rank_output if line.startswith("[0]<stderr>:error:")]
    assert len(refusal) == 1, output[-4000:]
    differences = ("distribution single -> horovod", "keras_major 3 -> 2", "workers 1 -> 2")
    assert all(difference in refusal[0] for difference in differences), refusal[0]
    assert "--output-dir" in refusal[0] and "--restart" in refusal[0]
    assert files_of(out) == before


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_local_mpi_launcher_starts_every_rank_with_the_horovod_python(horovod_python):
    """The local stand-in for Azure ML's mpirun: one horovodrun starting NP ranks of the
    job's command, where `python` is the Horovod environment's interpreter."""
    import io

    from scripts.horovod_launch import horovod_tasks
    from scripts.launch import run_tasks

    script = "import os, sys; print(os.environ['HOROVOD_RANK'], sys.prefix)"
    command = ["bash", "-c", f'python -c "{script}"']
    tasks = horovod_tasks(command, NP, str(horovod_python))
    sink = io.StringIO()
    assert run_tasks(tasks, cwd=ROOT, timeout=300, sink=sink) == 0, sink.getvalue()[-3000:]
    reported = {
        line.split()[0]: line.split()[1]
        for rank in range(NP)
        for line in rank_lines(sink.getvalue(), rank)
    }
    assert sorted(reported) == [str(rank) for rank in range(NP)]
    assert set(reported.values()) == {str(horovod_python.parent.parent)}
