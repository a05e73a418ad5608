"""The model folder training writes is an MLflow model that loads and serves anywhere.

Fast tests (a tiny Keras model): what ``training/export.py`` writes (signature from the model,
input example, pinned requirements, no pickles), that the writer used without MLflow (the
Horovod environment) writes what MLflow writes, and that ``outputs/model`` is replaced only
atomically: a failed write leaves the previous model and nothing else.

Slow tests: a model trained by each of the four modes (single, multi-worker, parameter
server, Horovod; one epoch each: the job specs' runs, made once per session by the
``local_job`` fixture of tests/local_jobs.py and checked by tests/scripts/test_jobs_run.py too)
loads with MLflow's own loaders in a process that cannot import this repository and scores
the MNIST test set at the accuracy its metrics.json reports; ``mlflow models serve`` and the
Azure ML no-code scoring (``tests/mlflow_nocode.py``) answer real test images over the
request formats they document.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT
from tests.local_jobs import files_of
from tests.mlflow_nocode import score_nocode_many
from training import export

UNNAMED_784 = '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 784]}}]'
UNNAMED_10 = '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]'
MODEL_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "input_example.json",
    "serving_input_example.json",
    "data/model.keras",
    "data/keras_module.txt",
    "data/save_format.txt",
}
# Beside the Keras model where tf2onnx and onnxruntime are installed (not the Horovod env).
ONNX_FILES = {"data/model.onnx", "data/onnx_probe.npz"}


def tiny_model(inputs: int = 12, classes: int = 3):
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(inputs,), name="pixels"),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


def mlmodel(folder: Path) -> dict:
    return yaml.safe_load((folder / "MLmodel").read_text())


# ------------------------------------------------------------------ what the folder holds


def test_signature_and_example_are_read_from_the_model(tmp_path):
    """A 12 -> 3 model gets a 12 -> 3 signature (nothing hard-coded to MNIST's 784 -> 10),
    and its input example is the first two of the rows it was given."""
    import keras
    import tensorflow as tf

    rows = np.random.default_rng(0).random((5, 12)).astype(np.float32)
    out = export.save_model(tiny_model(12, 3), tmp_path / "model", example=rows)

    meta = mlmodel(out)
    assert meta["signature"]["inputs"] == (
        '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 12]}}]'
    )
    assert meta["signature"]["outputs"] == (
        '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]'
    )
    assert set(meta["flavors"]) == {"tensorflow", "python_function"}
    assert meta["flavors"]["python_function"]["loader_module"] == "mlflow.tensorflow"
    assert meta["saved_input_example_info"]["type"] == "ndarray"
    example = json.loads((out / "input_example.json").read_text())
    np.testing.assert_array_equal(np.asarray(example, np.float32), rows[:2])
    served = json.loads((out / "serving_input_example.json").read_text())
    np.testing.assert_array_equal(np.asarray(served["inputs"], np.float32), rows[:2])
    assert (out / "requirements.txt").read_text().split() == [
        f"mlflow=={version('mlflow')}",
        f"tensorflow=={tf.__version__}",
        f"keras=={keras.__version__}",
    ]
    assert set(files_of(out)) == MODEL_FILES | ONNX_FILES


def test_an_image_models_signature_and_example_keep_its_image_shape(tmp_path):
    """A 6x6x1 convolutional model (the CNN's kind of input): both writers record
    [-1, 6, 6, 1] -> [-1, 3] and an input example of 6x6x1 images."""
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(6, 6, 1)),
            keras.layers.Conv2D(2, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    images = np.random.default_rng(2).random((4, 6, 6, 1)).astype(np.float32)
    export.write_with_mlflow(model, tmp_path / "mlflow", images)
    export.write_without_mlflow(model, tmp_path / "manual", images)
    for folder in ("mlflow", "manual"):
        meta = mlmodel(tmp_path / folder)
        assert meta["signature"]["inputs"] == (
            '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 6, 6, 1]}}]'
        ), folder
        assert meta["signature"]["outputs"] == (
            '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]'
        ), folder
        example = json.loads((tmp_path / folder / "input_example.json").read_text())
        np.testing.assert_array_equal(np.asarray(example, np.float32), images[:2])


def test_an_example_of_the_wrong_shape_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(export.ModelExportError, match=r"input example has shape \(2, 7\)"):
        export.save_model(tiny_model(12), tmp_path / "model", example=np.zeros((2, 7)))
    assert list(tmp_path.iterdir()) == []


def test_the_training_package_registers_nothing_that_mlflow_would_pickle(tmp_path):
    """Importing the model module (as training does) must leave Keras' global registry
    empty: MLflow pickles whatever is in it beside the model, and loading that pickle needs
    this repository (``ModuleNotFoundError: No module named 'training'`` on a deployment)."""
    # The registry and the schedule the Trainer imports (they register at import, if anything).
    from training import model, schedule  # noqa: F401

    out = export.save_model(tiny_model(), tmp_path / "model", example=np.zeros((1, 12)))
    assert not list(out.rglob("*.cloudpickle"))


def test_a_registered_custom_object_fails_the_write_not_the_deployment(tmp_path, monkeypatch):
    import keras
    import mlflow.tensorflow

    monkeypatch.setitem(mlflow.tensorflow.get_global_custom_objects(), "x>Thing", keras.Layer)
    with pytest.raises(export.ModelExportError, match="pickled Python objects"):
        export.save_model(tiny_model(), tmp_path / "model", example=np.zeros((1, 12)))
    assert list(tmp_path.iterdir()) == []


def test_the_writer_without_mlflow_writes_what_mlflow_writes(tmp_path):
    """The Horovod environment has no MLflow: export writes the folder itself. Run here (with
    Keras 3) it must produce MLflow's own files, up to the fields that differ on every save."""
    model = tiny_model()
    rows = np.random.default_rng(1).random((3, 12)).astype(np.float32)
    export.write_with_mlflow(model, tmp_path / "mlflow", rows)
    export.write_without_mlflow(model, tmp_path / "manual", rows)

    volatile = {"model_uuid", "utc_time_created", "model_size_bytes"}
    # MLflow 3 fields whose absence its loader fills with the same values.
    defaults = {
        "model_id": None,
        "prompts": None,
        "is_signature_from_type_hint": False,
        "type_hint_from_example": False,
    }
    ours, theirs = mlmodel(tmp_path / "manual"), mlmodel(tmp_path / "mlflow")
    for key in volatile:
        ours.pop(key), theirs.pop(key)
    assert {**defaults, **ours} == theirs
    ours_files, theirs_files = files_of(tmp_path / "manual"), files_of(tmp_path / "mlflow")
    assert set(ours_files) == set(theirs_files) == MODEL_FILES
    for name in MODEL_FILES - {"MLmodel", "data/model.keras"}:
        assert ours_files[name] == theirs_files[name], name


def test_horovod_models_pin_the_serving_stack():
    """A Horovod model (tf.keras 2.13, weights rewritten for Keras 3) is loaded by the
    serving stack, so its requirements pin that stack's versions and requirements.txt's
    MLflow."""
    conda = yaml.safe_load((ROOT / "serving/environment/conda.yml").read_text())
    pins = dict(p.split("==") for p in conda["dependencies"][-1]["pip"] if "==" in p)
    expected = (f"tensorflow=={pins['tensorflow-cpu']}", f"keras=={pins['keras']}")
    assert expected == export.KERAS3_REQUIREMENTS
    requirements = (ROOT / "requirements.txt").read_text().split()
    assert export.MLFLOW_REQUIREMENT in requirements


# ------------------------------------------------------------------ ONNX beside Keras


@pytest.mark.parametrize("shape", [(12,), (6, 6, 1)], ids=["flat", "image"])
def test_the_folder_carries_an_onnx_model_that_computes_what_keras_does(tmp_path, shape):
    """data/model.onnx takes the model's own input shape (any batch) and gives Keras's
    probabilities; its probe holds real and random images, Keras's answers and the hash of the
    Keras file it was converted from."""
    import hashlib

    import keras
    import onnxruntime

    model = keras.Sequential(
        [keras.Input(shape=shape), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")]
    )
    rows = np.random.default_rng(3).random((20, *shape)).astype(np.float32)
    out = export.save_model(model, tmp_path / "model", example=rows)
    assert set(files_of(out)) == MODEL_FILES | ONNX_FILES

    session = onnxruntime.InferenceSession(str(out / "data/model.onnx"))
    (tensor,) = session.get_inputs()
    assert tensor.shape[1:] == list(shape) and tensor.type == "tensor(float)"
    for batch in (rows[:1], rows):
        (got,) = session.run(None, {tensor.name: batch})
        np.testing.assert_allclose(got, np.asarray(model(batch, training=False)), atol=1e-6)

    with np.load(out / "data/onnx_probe.npz", allow_pickle=False) as probe:
        inputs, probabilities = probe["inputs"], probe["probabilities"]
        source = str(probe["keras_sha256"])
    assert inputs.shape == (16, *shape) and inputs.dtype == np.float32
    np.testing.assert_array_equal(inputs[:8], rows[:8])  # the first real images, then noise
    np.testing.assert_allclose(probabilities, np.asarray(model(inputs, training=False)), atol=1e-6)
    keras_file = (out / "data/model.keras").read_bytes()
    assert source == hashlib.sha256(keras_file).hexdigest()


@pytest.mark.parametrize(
    ("break_it", "reason"),
    [
        pytest.param(
            lambda monkeypatch: monkeypatch.setitem(sys.modules, "tf2onnx", None),
            "ImportError: tf2onnx is not installed (pip install tf2onnx==",
            id="no-converter",
        ),
        pytest.param(
            lambda monkeypatch: monkeypatch.setattr(export, "ONNX_TOLERANCE", -1.0),
            "ValueError: ONNX Runtime's probabilities (10, 3) differ from Keras's (10, 3) by",
            id="disagrees",
        ),
    ],
)
def test_without_a_good_conversion_the_folder_has_keras_only_and_one_line_says_why(
    tmp_path, monkeypatch, capsys, break_it, reason
):
    """The Horovod environment has no tf2onnx; a conversion may fail or disagree. Either way
    the model is saved (training does not fail), without ONNX files, and the log says why."""
    break_it(monkeypatch)
    out = export.save_model(tiny_model(), tmp_path / "model", example=np.zeros((2, 12)))
    assert set(files_of(out)) == MODEL_FILES
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "ONNX" in line]
    assert line.startswith(f"No ONNX export ({reason}")
    assert "serving runs with TensorFlow" in line


# ------------------------------------------------------------------ atomic replacement


def test_a_new_model_replaces_the_old_one_whole_and_leaves_nothing_beside_it(tmp_path):
    destination = tmp_path / "model"
    export.save_model(tiny_model(), destination, example=np.zeros((1, 12)))
    first = mlmodel(destination)["model_uuid"]
    export.save_model(tiny_model(), destination, example=np.ones((1, 12)))
    assert mlmodel(destination)["model_uuid"] != first
    assert json.loads((destination / "input_example.json").read_text()) == [[1.0] * 12]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_folders_are_swapped_in_one_atomic_step_here(tmp_path):
    """On Linux (ext4, tmpfs, ...) the two folders trade places in one renameat2 call: there
    is no moment without a model folder."""
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "MLmodel").write_text("new")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("old")
    assert export._exchange(tmp_path / "new", tmp_path / "model") is True
    assert (tmp_path / "model" / "MLmodel").read_text() == "new"
    assert (tmp_path / "new" / "MLmodel").read_text() == "old"


def test_after_every_file_system_step_of_a_replacement_a_complete_model_is_there(
    tmp_path, monkeypatch
):
    """Each rename, replace or folder removal save_model makes is followed by a check that
    ``model/`` holds a complete model, the old one or the new one (never none, never half)."""
    import shutil

    destination = tmp_path / "model"
    export.save_model(tiny_model(), destination, example=np.zeros((1, 12)))
    complete = files_of(destination).keys()
    steps = []

    def checked(name, function):
        def step(*args, **kwargs):
            result = function(*args, **kwargs)
            steps.append(name)
            assert files_of(destination).keys() == complete, f"after {name}{args}"
            return result

        return step

    monkeypatch.setattr(export, "_exchange", checked("exchange", export._exchange))
    monkeypatch.setattr(export.shutil, "rmtree", checked("rmtree", shutil.rmtree))
    monkeypatch.setattr(Path, "rename", checked("rename", Path.rename))
    monkeypatch.setattr(Path, "replace", checked("replace", Path.replace))
    export.save_model(tiny_model(), destination, example=np.ones((1, 12)))
    assert "exchange" in steps
    assert json.loads((destination / "input_example.json").read_text()) == [[1.0] * 12]


def test_without_an_atomic_exchange_the_old_model_is_moved_aside_then_removed(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(export, "_exchange", lambda first, second: False)
    destination = tmp_path / "model"
    export.save_model(tiny_model(), destination, example=np.zeros((1, 12)))
    export.save_model(tiny_model(), destination, example=np.ones((1, 12)))
    assert json.loads((destination / "input_example.json").read_text()) == [[1.0] * 12]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("stage", ["keras file", "swap"])
def test_a_failed_write_keeps_the_previous_model_and_says_where_and_why(
    tmp_path, monkeypatch, stage
):
    destination = tmp_path / "model"
    export.save_model(tiny_model(), destination, example=np.zeros((1, 12)))
    before = files_of(destination)

    model = tiny_model()
    if stage == "keras file":  # the disk fills up while the new model is written
        monkeypatch.setattr(model, "save", disk_full)
    else:  # ... or when it is swapped in
        monkeypatch.setattr(export, "_exchange", disk_full)
    with pytest.raises(export.ModelExportError) as raised:
        export.save_model(model, destination, example=np.ones((1, 12)))

    message = str(raised.value)
    assert str(destination) in message
    assert "No space left on device" in message
    assert "the previous model there is unchanged" in message
    assert raised.value.errno == errno.ENOSPC  # an OSError: train.py reports it as one
    assert files_of(destination) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no model.partial


def test_a_failed_first_write_leaves_no_folder(tmp_path, monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(model, "save", disk_full)
    with pytest.raises(export.ModelExportError, match="none is there"):
        export.save_model(model, tmp_path / "model", example=np.zeros((1, 12)))
    assert list(tmp_path.iterdir()) == []


def test_a_staging_folder_left_by_a_killed_run_is_cleared(tmp_path):
    (tmp_path / "model.partial" / "data").mkdir(parents=True)
    (tmp_path / "model.partial" / "data" / "model.keras").write_bytes(b"half a file")
    export.save_model(tiny_model(), tmp_path / "model", example=np.zeros((1, 12)))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# ------------------------------------------------------------------ models of every mode

MODES = [
    "single",
    "multi_worker",
    # fork:begin parameter_server
    "parameter_server",
    # fork:end parameter_server
    # fork:begin horovod
    "horovod",
    # fork:end horovod
]
# The two writers: MLflow's (every mode but Horovod) and our own (the Horovod environment).
WRITERS = [
    "single",
    # fork:begin horovod
    "horovod",
    # fork:end horovod
]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that points Python at this repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.fixture
def trained(local_job):
    """mode -> the output folder of its job spec's one-epoch run (``python -m scripts run``),
    run the first time a test of the session asks: tests/scripts/test_jobs_run.py checks the same
    runs' logs and metrics. Shared: read it; copy it before changing anything in it."""

    def get(mode: str) -> Path:
        job = local_job(mode)
        _check(job.result)
        return job.run

    return get


# Runs with ``python -I`` in a temporary folder: MLflow, TensorFlow and numpy only.
LOAD_AND_SCORE = r"""
import gzip, importlib.util, json, sys
import numpy as np
assert importlib.util.find_spec("training") is None, "the repository is importable"
import mlflow.pyfunc, mlflow.tensorflow
model_dir, mnist, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with gzip.open(mnist + "/t10k-images-idx3-ubyte.gz") as f:
    x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, *shape).astype(np.float32) / 255
with gzip.open(mnist + "/t10k-labels-idx1-ubyte.gz") as f:
    y = np.frombuffer(f.read(), np.uint8, offset=8)
pyfunc = mlflow.pyfunc.load_model(model_dir)
p = np.asarray(pyfunc.predict(x))
keras_model = mlflow.tensorflow.load_model(model_dir)
k = np.asarray(keras_model.predict(x, batch_size=2000, verbose=0))
print("RESULT " + json.dumps({
    "shape": list(p.shape),
    "pyfunc_accuracy": float(np.mean(p.argmax(1) == y)),
    "keras_accuracy": float(np.mean(k.argmax(1) == y)),
    "max_difference": float(np.abs(p - k).max()),
    "max_sum_error": float(np.abs(p.sum(1) - 1).max()),
    "input_schema": str(pyfunc.metadata.get_input_schema()),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("training", "scripts")),
}))
"""


def load_in_clean_process(
    model_dir: Path, mnist_dir: Path, tmp_path: Path, image_shape: tuple[int, ...] = (784,)
) -> dict:
    """MLflow's two loaders score the MNIST test images, given to the model as ``image_shape``."""
    command = [sys.executable, "-I", "-c", LOAD_AND_SCORE, str(model_dir), str(mnist_dir.resolve())]
    result = subprocess.run(
        [*command, json.dumps(image_shape)],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    _check(result)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_writes_a_model_that_mlflow_alone_loads_at_the_reported_accuracy(
    trained, mode, mnist_dir, tmp_path
):
    output = trained(mode)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["distribution"] == mode
    model_dir = output / "model"
    onnx = ONNX_FILES if mode != "horovod" else set()  # no tf2onnx in the Horovod env
    assert set(files_of(model_dir)) == MODEL_FILES | onnx  # no pickles, nothing else
    meta = mlmodel(model_dir)
    assert set(meta["flavors"]) == {"tensorflow", "python_function"}
    assert meta["signature"]["inputs"] == UNNAMED_784
    assert meta["signature"]["outputs"] == UNNAMED_10
    assert len(json.loads((model_dir / "input_example.json").read_text())) == 2

    scored = load_in_clean_process(model_dir, mnist_dir, tmp_path)
    assert scored["modules"] == []
    assert scored["shape"] == [10_000, 10]
    assert scored["input_schema"] == "[Tensor('float32', (-1, 784))]"
    assert scored["max_sum_error"] < 1e-4
    assert scored["max_difference"] < 1e-5
    for key in ("pyfunc_accuracy", "keras_accuracy"):
        assert round(scored[key], 4) == round(metrics["test_accuracy"], 4), (key, scored)


# ------------------------------------------------------------------ serving it


def mnist_test_images(mnist_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[:count]
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    return x.astype(np.float32) / 255.0, y


def reference_probabilities(model_dir: Path, x: np.ndarray) -> np.ndarray:
    import keras

    model = keras.saving.load_model(model_dir / "data" / "model.keras", compile=False)
    return np.asarray(model(x))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def mlflow_server(tmp_path):
    """Start ``mlflow models serve`` on a model (outside the repository, clean environment);
    stopped, with its workers, by the process group of the PID started here."""
    started: list[subprocess.Popen] = []

    def start(model_dir: Path, limit: float = 180) -> str:
        port = free_port()
        log = (tmp_path / "server.log").open("w")
        command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve"]
        command += ["-m", str(model_dir), "--env-manager", "local"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        return url
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"mlflow models serve not ready in {limit} s: {url}")

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


SERVED = 200


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("mode", WRITERS)
def test_mlflow_models_serve_scores_test_images_in_its_tensor_formats(
    trained, mode, mnist_dir, mlflow_server
):
    model_dir = trained(mode) / "model"
    x, y = mnist_test_images(mnist_dir, SERVED)
    expected = reference_probabilities(model_dir, x)
    url = mlflow_server(model_dir)

    for key in ("inputs", "instances"):
        status, body = post(f"{url}/invocations", {key: x.tolist()})
        assert status == 200, body
        assert set(body) == {"predictions"}
        probabilities = np.asarray(body["predictions"])
        assert probabilities.shape == (SERVED, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        assert np.mean(probabilities.argmax(1) == y) == np.mean(expected.argmax(1) == y)

    # Azure's key is not MLflow's: the local server refuses it, naming the keys it takes.
    status, body = post(f"{url}/invocations", {"input_data": x[:2].tolist()})
    assert status == 400 and "inputs" in body["message"], body
    status, body = post(f"{url}/invocations", {"inputs": x[:2, :700].tolist()})
    assert status == 400 and "784" in body["message"], body


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("mode", WRITERS)
def test_azure_no_code_scoring_takes_input_data_and_answers_a_bare_list(trained, mode, mnist_dir):
    model_dir = trained(mode) / "model"
    x, y = mnist_test_images(mnist_dir, SERVED)
    expected = reference_probabilities(model_dir, x)
    answers = score_nocode_many(
        model_dir,
        [
            json.dumps({"input_data": x.tolist()}).encode(),
            json.dumps({"input_data": x[:3].tolist(), "params": {}}).encode(),
            json.dumps({"inputs": x[:3].tolist()}).encode(),  # MLflow's key, not Azure's
            json.dumps({"input_data": x[:3, :700].tolist()}).encode(),
            b"{not json",
        ],
    )
    status, body = answers[0]
    assert status == 200, body
    probabilities = np.asarray(body)  # a bare list, not {"predictions": ...}
    assert probabilities.shape == (SERVED, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert np.mean(probabilities.argmax(1) == y) == np.mean(expected.argmax(1) == y)
    assert answers[1][0] == 200 and np.asarray(answers[1][1]).shape == (3, 10)
    assert answers[2] == (
        400,
        {"message": "A value is not provided for the 'input_data' parameter."},
    )
    assert answers[3][0] == 500  # the signature check fails inside the scoring script
    assert answers[4][0] == 400 and "could not be decoded as JSON" in answers[4][1]["message"]
