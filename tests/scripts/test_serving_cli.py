"""``serve`` and ``invoke`` (``deploy`` is in test_serving_deploy.py)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from scripts.endpoints import specs
from scripts.endpoints.local_server import SCORE_SCRIPT
from tests.conftest import ROOT


@pytest.fixture
def cli(monkeypatch):
    import scripts.__main__ as entry

    monkeypatch.setattr(entry, "COMMAND_MODULES", ("scripts.serving",))
    return entry.main


def test_serve_runs_score_py_under_azmlinfsrv_with_the_deployments_settings(
    cli, monkeypatch, tmp_path, capsys
):
    import scripts.serving

    model = tmp_path / "outputs" / "model"
    (model / "data").mkdir(parents=True)
    (model / "data" / "model.keras").write_bytes(b"x")
    started = {}

    class Server:  # stands in for the azmlinfsrv process
        def __init__(self, command, env):
            started.update(command=command, env=env)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(scripts.serving.subprocess, "Popen", Server)
    assert cli(["serve", "--model-dir", str(tmp_path / "outputs"), "--port", "5123"]) == 0
    command, env = started["command"], started["env"]
    assert command == [sys.executable, "-m", "azureml_inference_server_http",
                       "--entry_script", str(SCORE_SCRIPT), "--port", "5123"]  # fmt: skip
    assert env["AZUREML_MODEL_DIR"] == str(model)
    for name, value in specs.server_settings().items():
        assert env[name] == value
    # Loopback unless --host says otherwise: gunicorn_local.py rebinds azmlinfsrv's 0.0.0.0.
    assert env["AZMLINFSRV_BIND_HOST"] == "127.0.0.1"
    assert (
        f"--config {ROOT / 'scripts' / 'endpoints' / 'gunicorn_local.py'}"
        in env["GUNICORN_CMD_ARGS"]
    )
    assert "http://127.0.0.1:5123/score" in capsys.readouterr().out

    assert cli(["serve", "--model-dir", str(model), "--host", "0.0.0.0"]) == 0
    assert started["env"]["AZMLINFSRV_BIND_HOST"] == "0.0.0.0"
    assert "listening on 0.0.0.0" in capsys.readouterr().out


def test_gunicorn_hook_moves_every_address_to_the_host_keeping_ports():
    from scripts.endpoints.gunicorn_local import rebind

    assert rebind(["0.0.0.0:5001", "0.0.0.0:5000"], "127.0.0.1") == [
        "127.0.0.1:5001",
        "127.0.0.1:5000",
    ]
    assert rebind(["0.0.0.0:5001"], "::1") == ["[::1]:5001"]


def test_serve_without_a_model_says_what_to_do(cli, tmp_path, capsys):
    assert cli(["serve", "--model-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No model in") and "python -m training.train" in err


@pytest.mark.slow
def test_invoke_scores_the_sample_digits_on_the_local_server(cli, scoring_server, capsys):
    url = f"{scoring_server.server.url}/score"
    assert cli(["invoke", str(specs.SERVING_DIR / "sample-digits.json"), "--url", url]) == 0
    out = capsys.readouterr().out
    assert "image 0: 7" in out  # the first MNIST test image is a 7
    accuracy = float(out.strip().splitlines()[-1].split("accuracy ")[1].rstrip("%"))
    assert out.strip().splitlines()[-1].startswith("20 images, accuracy")
    assert accuracy >= 90


@pytest.mark.slow
def test_invoke_sends_big_files_in_batches_the_endpoint_accepts(
    cli, scoring_server, mnist_test, tmp_path, capsys
):
    images, labels = mnist_test
    path = tmp_path / "digits.npy"
    np.save(path, images[:1100])  # uint8 pixels, more than one request's worth
    assert cli(["invoke", str(path), "--url", f"{scoring_server.server.url}/score"]) == 0
    out = capsys.readouterr().out
    assert "... 1080 more" in out
    digits = [int(line.split(":")[1].split()[0]) for line in out.splitlines()[:20]]
    direct = scoring_server.client.score({"data": (images[:20] / 255).tolist()}).json()
    assert digits == direct["predictions"]
    assert (np.asarray(digits) == labels[:20]).mean() >= 0.85


def test_invoke_rejects_unscaled_float_files(cli, tmp_path, capsys):
    path = tmp_path / "digits.npy"
    np.save(path, np.full((2, 28, 28), 255.0))
    assert cli(["invoke", str(path)]) == 2
    assert "divide 0-255 pixel values by 255" in capsys.readouterr().err


def test_invoke_reports_a_bad_json_file(cli, tmp_path, capsys):
    path = tmp_path / "digits.json"
    path.write_text(json.dumps({"data": [[0.5] * 700]}))
    assert cli(["invoke", str(path)]) == 2
    assert "Image 0 has 700 values, expected 784" in capsys.readouterr().err


def test_invoke_without_a_server_says_how_to_start_one(cli, capsys):
    from scripts.endpoints.local_server import free_port

    sample = str(specs.SERVING_DIR / "sample-digits.json")
    assert cli(["invoke", sample, "--url", f"http://127.0.0.1:{free_port()}/score"]) == 2
    assert "python -m scripts serve" in capsys.readouterr().err


def test_sample_digits_are_real_mnist_test_images(mnist_test):
    images, labels = mnist_test
    sample = json.loads((specs.SERVING_DIR / "sample-digits.json").read_text())
    indexes = sample["indexes"]
    assert sample["labels"] == labels[indexes].tolist()
    assert sorted(set(sample["labels"])) == list(range(10))
    np.testing.assert_allclose(
        np.asarray(sample["data"]), images[indexes].reshape(-1, 784) / 255, atol=5e-4
    )
