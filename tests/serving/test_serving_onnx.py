"""The scoring worker on ONNX Runtime: a model folder with data/model.onnx is scored without
TensorFlow, with Keras's own probabilities, and an ONNX file that does not belong to the folder
is refused at load with a message that says what to do.

Fast tests export small untrained models of the training package's architectures
(training/export.py, as training does); the slow ones serve the session's trained DNN and CNN
(``trained_output``, ``trained_cnn``) on real MNIST test images.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from serving.code.predictor import DigitClassifier, ModelLoadError
from tests.serving.server_fixtures import rss_mb, worker_pids

ROOT = Path(__file__).resolve().parents[2]
CODE = ROOT / "serving" / "code"

# Loads the model folder as score.py does, in a fresh interpreter that cannot import the
# repository, scores the images of an .npy file and reports what was imported.
SCORE_IN_A_FRESH_WORKER = r"""
import importlib.util, json, sys
import numpy as np
assert importlib.util.find_spec("training") is None, "the repository is importable"
sys.path.insert(0, sys.argv[1])
from predictor import DigitClassifier
classifier = DigitClassifier.load(sys.argv[2], max_batch=512)
classifier.warm_up()
images = np.load(sys.argv[3], allow_pickle=False)
np.save(sys.argv[4], classifier.predict_proba(images))
print("RESULT " + json.dumps({
    "runtime": classifier.runtime,
    "heavy": sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules),
}))
"""


def score_in_a_fresh_worker(model_dir: Path, images: np.ndarray, tmp_path: Path) -> tuple:
    """(probabilities, report, log) of SCORE_IN_A_FRESH_WORKER for ``images``."""
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [sys.executable, "-I", "-c", SCORE_IN_A_FRESH_WORKER, str(CODE), str(model_dir),
         str(tmp_path / "images.npy"), str(tmp_path / "probabilities.npy")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    report = json.loads(line[len("RESULT ") :])
    return np.load(tmp_path / "probabilities.npy"), report, result.stdout


def export(name: str, root: Path, seed: int = 0) -> Path:
    """An untrained model of the training package's architecture ``name``, written as
    training writes it (with data/model.onnx), in ``root/model``."""
    import keras

    from training import export as exporter
    from training.model import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(name)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    images = np.random.default_rng(seed).random((8, *shape), dtype=np.float32)
    return exporter.save_model(model, root / "model", example=images)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a model folder with ONNX: "dnn", "cnn", and "dnn-2", a DNN with other weights
    (never changed: copy them)."""
    root = tmp_path_factory.mktemp("exported")
    folders = {name: export(name, root / name) for name in ("dnn", "cnn")}
    return {**folders, "dnn-2": export("dnn", root / "dnn-2", seed=1)}


def copy(folder: Path, tmp_path: Path) -> Path:
    return shutil.copytree(folder, tmp_path / "model")


def keras_probabilities(model_dir: Path, images: np.ndarray) -> np.ndarray:
    import keras

    model = keras.models.load_model(model_dir / "data" / "model.keras", compile=False)
    return np.asarray(model(images, training=False))


# ------------------------------------------------------------------ it runs, without TensorFlow


@pytest.mark.parametrize("name", ["dnn", "cnn"])
def test_an_exported_folder_is_scored_by_onnx_runtime_with_keras_probabilities(
    exported, name, capsys
):
    folder = exported[name]
    classifier = DigitClassifier.load(folder.parent, max_batch=16)
    assert classifier.runtime == "onnxruntime"
    assert "Scoring with ONNX Runtime" in capsys.readouterr().out
    shape = classifier.contract.input_shape
    assert shape == {"dnn": (784,), "cnn": (28, 28, 1)}[name]
    images = np.random.default_rng(5).random((16, *shape), dtype=np.float32)
    expected = keras_probabilities(folder, images)
    np.testing.assert_allclose(classifier.predict_proba(images), expected, atol=1e-5)
    np.testing.assert_allclose(classifier.predict_proba(images[:1]), expected[:1], atol=1e-5)
    body = json.dumps({"data": images[:3].reshape(3, 784).tolist()}).encode()
    assert json.loads(classifier.score(body))["predictions"] == expected[:3].argmax(1).tolist()


def test_the_worker_never_imports_tensorflow(exported, tmp_path):
    images = np.random.default_rng(6).random((4, 784), dtype=np.float32)
    probabilities, report, _ = score_in_a_fresh_worker(exported["dnn"], images, tmp_path)
    assert report == {"runtime": "onnxruntime", "heavy": []}
    np.testing.assert_allclose(
        probabilities, keras_probabilities(exported["dnn"], images), atol=1e-5
    )


def test_onnx_runtime_takes_the_workers_thread_count_from_the_deployment(exported, monkeypatch):
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "1")
    options = DigitClassifier.load(exported["dnn"]).model.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "one")
    with pytest.raises(ModelLoadError, match="TF_NUM_INTRAOP_THREADS='one' must be a whole"):
        DigitClassifier.load(exported["dnn"])


# ------------------------------------------------------------------ refused at load


def _probe(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "data" / "onnx_probe.npz", allow_pickle=False) as probe:
        return dict(probe)


def _save_probe(folder: Path, **arrays: np.ndarray) -> None:
    with (folder / "data" / "onnx_probe.npz").open("wb") as file:
        np.savez(file, **arrays)


def corrupt_onnx(folder: Path, exported: dict[str, Path]) -> None:
    (folder / "data" / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)


def another_models_onnx(folder: Path, exported: dict[str, Path]) -> None:
    """The ONNX file of a DNN with other weights: it disagrees with this folder's Keras model
    (the probe and the hash are this folder's own)."""
    shutil.copy(exported["dnn-2"] / "data" / "model.onnx", folder / "data" / "model.onnx")


def the_cnns_onnx(folder: Path, exported: dict[str, Path]) -> None:
    shutil.copy(exported["cnn"] / "data" / "model.onnx", folder / "data" / "model.onnx")


def retrained_keras_file(folder: Path, exported: dict[str, Path]) -> None:
    """A new model.keras dropped into the folder, its old ONNX and probe left beside it."""
    shutil.copy(exported["dnn-2"] / "data" / "model.keras", folder / "data" / "model.keras")


def no_probe(folder: Path, exported: dict[str, Path]) -> None:
    (folder / "data" / "onnx_probe.npz").unlink()


def pickled_probe(folder: Path, exported: dict[str, Path]) -> None:
    _save_probe(folder, **{**_probe(folder), "inputs": np.array([object()], dtype=object)})


def probe_answers_changed(folder: Path, exported: dict[str, Path]) -> None:
    probe = _probe(folder)
    _save_probe(folder, **{**probe, "probabilities": probe["probabilities"] + 1e-3})


@pytest.mark.parametrize(
    ("break_it", "fragments"),
    [
        pytest.param(corrupt_onnx, ["Cannot load the ONNX model", "model.onnx"], id="corrupt"),
        pytest.param(
            another_models_onnx,
            ["ONNX Runtime's probabilities for the 16 probe images", "does not compute what "
             "data/model.keras does"],
            id="disagrees",
        ),
        pytest.param(
            the_cnns_onnx,
            ["says the model maps (-1, 784) to (-1, 10), but", "model.onnx maps (-1, 28, 28, 1) "
             "to (-1, 10)"],
            id="other-shapes",
        ),
        pytest.param(
            retrained_keras_file,
            ["was converted from another model.keras than the one beside it"],
            id="new-keras-file",
        ),
        pytest.param(no_probe, ["has no onnx_probe.npz beside it"], id="no-probe"),
        pytest.param(
            pickled_probe, ["Cannot read the ONNX probe", "allow_pickle=False"], id="pickled"
        ),
        pytest.param(
            probe_answers_changed, ["differ from the Keras model's by 1.0e-03"], id="answers"
        ),
    ],
)  # fmt: skip
def test_an_onnx_file_that_does_not_belong_to_the_folder_is_refused(
    exported, tmp_path, break_it, fragments
):
    folder = copy(exported["dnn"], tmp_path)
    break_it(folder, exported)
    with pytest.raises(ModelLoadError) as failure:
        DigitClassifier.load(tmp_path)
    message = str(failure.value)
    for fragment in fragments:
        assert fragment in message
    assert f"or delete {folder / 'data' / 'model.onnx'} to serve data/model.keras" in message


# ------------------------------------------------------------------ falls back to TensorFlow


@pytest.mark.parametrize("why", ["no-onnx-file", "no-onnxruntime"])
def test_without_onnx_the_folder_is_served_by_tensorflow_and_the_log_says_why(
    exported, tmp_path, monkeypatch, capsys, why
):
    folder = copy(exported["cnn"], tmp_path)
    if why == "no-onnx-file":  # e.g. trained in the Horovod environment (no tf2onnx)
        (folder / "data" / "model.onnx").unlink()
        reason = f"{folder} has no data/model.onnx"
    else:
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
        reason = "onnxruntime cannot be imported"
    classifier = DigitClassifier.load(folder, max_batch=4)
    assert classifier.runtime == "tensorflow"
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"Scoring with TensorFlow: {reason}")
    images = np.random.default_rng(7).random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(
        classifier.predict_proba(images), keras_probabilities(folder, images), atol=1e-5
    )


# ------------------------------------------------------------------ the trained models


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["trained_output", "trained_cnn"])
def test_the_trained_models_are_served_without_tensorflow_at_keras_accuracy(
    request, fixture, mnist_test, tmp_path
):
    """Training wrote data/model.onnx for the DNN and the CNN; a fresh worker scores 1,000 real
    test images with Keras's probabilities (1e-5) and the same predictions, TensorFlow unused."""
    model_dir = request.getfixturevalue(fixture) / "model"
    assert (model_dir / "data" / "model.onnx").is_file()
    x, y = mnist_test
    import keras

    keras_model = keras.models.load_model(model_dir / "data" / "model.keras", compile=False)
    images = (x[:1000].astype(np.float32) / 255).reshape(1000, *keras_model.input_shape[1:])
    probabilities, report, log = score_in_a_fresh_worker(model_dir, images, tmp_path)
    assert report == {"runtime": "onnxruntime", "heavy": []}
    assert "Scoring with ONNX Runtime" in log
    expected = np.asarray(keras_model(images, training=False))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert (probabilities.argmax(1) == expected.argmax(1)).all()
    assert (probabilities.argmax(1) == y[:1000]).mean() >= 0.95


def _mapped_files(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()}


@pytest.mark.slow
def test_the_served_workers_map_no_tensorflow_library_and_stay_small(each_server):
    """Under azmlinfsrv, as deployed (deployment.yml's workers): each worker has ONNX Runtime's
    library mapped and none of TensorFlow's, and holds at most 300 MB (about 800 MB with it).
    The server is healthy once its first worker is; the others may still be loading."""
    workers = worker_pids(each_server.server.process.pid)
    assert len(workers) == int(each_server.settings["WORKER_COUNT"])
    deadline = time.monotonic() + 120
    loading = set(workers)
    while loading and time.monotonic() < deadline:
        loading = {p for p in loading if not any("/onnxruntime/" in f for f in _mapped_files(p))}
        time.sleep(0.5)
    assert not loading, f"workers {sorted(loading)} never loaded ONNX Runtime"
    for pid in workers:
        assert not [path for path in _mapped_files(pid) if "/tensorflow/" in path], pid
        assert rss_mb(pid) <= 300, (pid, rss_mb(pid))
