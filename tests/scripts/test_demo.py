"""The README's main command, end to end: train, register, serve under azmlinfsrv, score."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scripts.__main__ import main


@pytest.mark.slow
def test_demo_trains_registers_serves_and_scores(mnist_dir, tmp_path, run_python):
    out = tmp_path / "demo"
    result = run_python("-m", "scripts", "demo", "--output-dir", str(out), "--images", "3000")
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    trained = float(re.search(r"Trained: test accuracy ([\d.]+)%", text).group(1))
    assert trained >= 98.0
    assert re.search(r"Registered: MLflow model tf-mnist version 1 ", text)
    assert "Serving: azmlinfsrv + serving/code/score.py" in text
    served = re.search(r"Scored: 3000 test images over HTTP, accuracy ([\d.]+)%", text)
    assert served and float(served.group(1)) > 97.0
    assert (out / "model" / "MLmodel").is_file()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    version = client.get_model_version("tf-mnist", "1")
    assert version.source == str(out / "model")
    assert version.tags["framework"] == "TensorFlow"
    import tensorflow as tf

    assert version.tags["framework_version"] == tf.__version__

    # Again on the finished folder: training has nothing to do and says so; the model and
    # metrics.json stay as they were, and the demo still registers, serves and scores it.
    model_file = out / "model" / "data" / "model.keras"
    before = (model_file.read_bytes(), (out / "metrics.json").read_text())
    again = run_python("-m", "scripts", "demo", "--output-dir", str(out), "--images", "200")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(already trained: use --fresh to retrain)" in again.stdout
    assert "examples/s)" not in again.stdout
    assert (model_file.read_bytes(), (out / "metrics.json").read_text()) == before
    assert re.search(r"Registered: MLflow model tf-mnist version 2 ", again.stdout)
    assert re.search(r"Scored: 200 test images over HTTP", again.stdout)


def demo(capsys, *argv: str) -> tuple[int, str]:
    """``python -m scripts demo ARGV`` in this process: (exit status, stderr)."""
    try:
        status = main(["demo", *argv])
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ("0", "argument --images: 0 is out of range: MNIST has 10,000 test images, score 1 to"),
        ("-3", "argument --images: -3 is out of range"),
        ("10001", "argument --images: 10001 is out of range"),
        ("all", "argument --images: 'all' is not a whole number"),
    ],
)
def test_demo_refuses_an_image_count_before_training(
    tmp_path: Path, capsys, images: str, message: str
) -> None:
    out = tmp_path / "demo"
    status, err = demo(capsys, "--output-dir", str(out), "--images", images)
    assert status == 2 and message in err
    assert not out.exists()  # nothing trained


def test_demo_refuses_an_output_folder_that_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes").write_text("keep me")
    status, err = demo(capsys, "--output-dir", str(tmp_path / "notes" / "demo"))
    assert status == 2
    assert f"error: --output-dir {tmp_path}/notes/demo: {tmp_path}/notes is a file" in err
    assert (tmp_path / "notes").read_text() == "keep me"


def test_demo_checks_the_data_before_training(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "demo"
    status, err = demo(capsys, "--output-dir", str(out), "--data-folder", str(tmp_path / "empty"))
    assert status == 2 and "lacks train-images-idx3-ubyte.gz" in err
    assert not out.exists()


def test_demo_fresh_never_deletes_what_is_no_training_run(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    status, err = demo(capsys, "--fresh", "--output-dir", str(tmp_path))
    assert status == 2
    assert f"--fresh would delete {tmp_path}, which holds no training run" in err
    monkeypatch.chdir(tmp_path / "..")
    status, err = demo(capsys, "--fresh", "--output-dir", "..")
    assert status == 2 and f"holds the working directory ({tmp_path.parent})" in err
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
