"""The README's main command, end to end: train, register, serve under azmlinfsrv, score."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.slow


def test_demo_trains_registers_serves_and_scores(mnist_dir, tmp_path, run_python):
    out = tmp_path / "demo"
    result = run_python("-m", "scripts", "demo", "--output-dir", str(out), "--images", "3000")
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    trained = float(re.search(r"Trained: test accuracy ([\d.]+)%", text).group(1))
    assert trained >= 98.0
    assert re.search(r"Registered: MLflow model tf-mnist version 1 ", text)
    assert "Serving: azmlinfsrv + serving/score.py" in text
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
