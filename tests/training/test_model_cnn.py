"""The model is a seam: ``--model`` picks an architecture from training/model.py's registry, and
the data, the loss, the saved model's signature and its input example follow the model.

Fast: the registry builds each model with its shapes; the flags refuse an unknown model and a
model option the chosen model does not take (usage errors, exit 2); the Trainer shapes the
images as the model's input.

Slow: the CNN's default run (``python -m training.train --model cnn``, real MNIST, run once
for the module) reaches 99.0% test accuracy, and its model folder has the image signature
and loads with MLflow alone at that accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT
from tests.training.test_model_export import load_in_clean_process
from training.data import Mnist

CNN_IN = '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 28, 28, 1]}}]'
CNN_OUT = '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]'


# ------------------------------------------------------------------ fast


@pytest.mark.parametrize(
    ("name", "input_shape", "output_shape", "weights"),
    [
        ("dnn", (None, 784), (None, 10), 785 * 300 + 301 * 100 + 101 * 10),
        # conv 3x3x1x32, conv 3x3x32x64, dense 5x5x64 -> 128, dense 128 -> 10 (with biases)
        ("cnn", (None, 28, 28, 1), (None, 10), 320 + 18_496 + 204_928 + 1_290),
    ],
)
def test_the_registry_builds_each_model_with_its_shapes(name, input_shape, output_shape, weights):
    from training.model import MODELS, build_model

    model = build_model(name)
    assert tuple(model.input_shape) == input_shape
    assert tuple(model.output_shape) == output_shape
    assert model.count_params() == weights
    counted = MODELS[name].weights
    assert counted is None or counted(**MODELS[name].options()) == weights


def test_an_unknown_model_is_a_usage_error_naming_the_choices(run_python):
    result = run_python("-m", "training.train", "--model", "nope")
    assert result.returncode == 2
    assert "invalid choice: 'nope' (choose from 'cnn', 'dnn')" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_dnns_layer_sizes_are_refused_for_the_cnn(run_python, tmp_path):
    result = run_python(
        "-m", "training.train", "--model", "cnn", "--first-layer-neurons", "200",
        "--output-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--first-layer-neurons does not apply to --model cnn (its options: --dropout)" in (
        result.stderr
    )
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_each_model_gets_its_own_defaults():
    from training.config import parse_args

    dnn, cnn = parse_args([]), parse_args(["--model", "cnn"])
    assert (dnn.model, dnn.epochs, dnn.learning_rate) == ("dnn", 3, 5e-3)
    assert (dnn.first_layer_neurons, dnn.second_layer_neurons, dnn.dropout) == (300, 100, 0.0)
    assert (cnn.model, cnn.epochs, cnn.learning_rate) == ("cnn", 4, 3e-3)
    assert (cnn.first_layer_neurons, cnn.second_layer_neurons, cnn.dropout) == (None, None, 0.25)
    assert cnn.model_options() == {"dropout": 0.25}
    assert parse_args(["--model", "cnn", "--epochs", "2", "--dropout", "0"]).model_options() == {
        "dropout": 0.0
    }


def test_the_trainer_shapes_the_images_as_the_models_input():
    """The same 28x28 images become [N, 28, 28, 1] for the CNN and [N, 784] for the DNN, and
    one training step and a prediction run on them."""
    from training.distribute import detect_runtime
    from training.train import Trainer, parse_args

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (512, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 512, dtype=np.uint8)
    data = Mnist(images, labels, images[:64], labels[:64], Path())
    for name, shape in (("cnn", (28, 28, 1)), ("dnn", (784,))):
        trainer = Trainer(
            parse_args(["--model", name, "--batch-size", "256"]), detect_runtime(), data
        )
        assert trainer.x_train.shape == (512, *shape) and trainer.x_test.shape == (64, *shape)
        np.testing.assert_array_equal(trainer.x_train.reshape(512, 28, 28), images)
        loss, accuracy, seen = trainer.train_epoch(0)
        assert seen == 512 and np.isfinite(loss) and 0 <= accuracy <= 1
        _, _, predictions = trainer.evaluate()
        assert predictions.shape == (64,)


# ------------------------------------------------------------------ slow: the default CNN run


# fork:begin horovod
# Runs in the Horovod environment (tf.keras 2.13, no MLflow): the CNN as a Horovod job saves it.
SAVE_WITH_TF_KERAS_2 = r"""
import sys
import numpy as np
import keras
from training.export import write_without_mlflow
from training.model import build_model
assert keras.__version__.startswith("2."), keras.__version__
keras.utils.set_random_seed(0)
model = build_model("cnn")
x = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
write_without_mlflow(model, __import__("pathlib").Path(sys.argv[1]), x)
np.save(sys.argv[2], model(x, training=False).numpy())
"""


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a cold build of the Horovod environment takes minutes
def test_a_cnn_saved_by_tf_keras_2_loads_in_keras_3_with_its_weights(tmp_path):
    """Horovod jobs save with tf.keras 2.13, serving loads with Keras 3: the weights file is
    rewritten in Keras 3's layout, whose layer names (``conv2d``, ``max_pooling2d``) the
    rewrite must spell as Keras 3 does, or the CNN loads without its weights."""
    import keras

    from training.environments.horovod import build_env

    python = build_env.ensure(say=lambda message: print(message, flush=True))
    folder, expected = tmp_path / "model", tmp_path / "expected.npy"
    result = subprocess.run(
        [str(python), "-c", SAVE_WITH_TF_KERAS_2, str(folder), str(expected)],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert yaml.safe_load((folder / "MLmodel").read_text())["signature"]["inputs"] == CNN_IN
    model = keras.saving.load_model(folder / "data" / "model.keras", compile=False)
    x = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.load(expected), atol=1e-5)


# fork:end horovod
@pytest.fixture(scope="module")
def cnn_run(mnist_dir, tmp_path_factory) -> Path:
    """The output folder of ``python -m training.train --model cnn`` with every default."""
    out = tmp_path_factory.mktemp("cnn") / "outputs"
    command = ["-m", "training.train", "--model", "cnn", "--no-tracking", "--output-dir", str(out)]
    result = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env={**os.environ, "MNIST_DATA_DIR": str(mnist_dir)},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_default_cnn_reaches_99_percent(cnn_run):
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    assert metrics["model"] == "cnn"
    assert metrics["test_accuracy"] >= 0.990, metrics
    record = json.loads((cnn_run / "checkpoints" / "run.json").read_text())
    assert record["produced_by"]["model"] == "cnn" and record["finished"] is True


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_cnn_folder_has_the_image_signature_and_loads_with_mlflow_alone(
    cnn_run, mnist_dir, tmp_path
):
    model_dir = cnn_run / "model"
    meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    assert meta["signature"]["inputs"] == CNN_IN
    assert meta["signature"]["outputs"] == CNN_OUT
    example = np.asarray(json.loads((model_dir / "input_example.json").read_text()))
    assert example.shape == (2, 28, 28, 1)

    scored = load_in_clean_process(model_dir, mnist_dir, tmp_path, image_shape=(28, 28, 1))
    assert scored["modules"] == []
    assert scored["shape"] == [10_000, 10]
    assert scored["input_schema"] == "[Tensor('float32', (-1, 28, 28, 1))]"
    assert scored["max_difference"] < 1e-5
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    for key in ("pyfunc_accuracy", "keras_accuracy"):
        assert round(scored[key], 4) == round(metrics["test_accuracy"], 4), (key, scored)
