"""The predictor's model loading: where AZUREML_MODEL_DIR may point, and clear failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.code.predictor import (
    BadRequest,
    DigitClassifier,
    ModelLoadError,
    find_model_dir,
    parse_request,
)


def _model_folder(root: Path, name: str = "model") -> Path:
    folder = root / name
    (folder / "data").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "data" / "model.keras").write_bytes(b"placeholder")
    return folder


def test_model_dir_may_be_the_model_folder_or_the_folder_above(tmp_path):
    model = _model_folder(tmp_path)
    (tmp_path / "checkpoints").mkdir()  # what else training writes beside model/
    (tmp_path / "metrics.json").write_text("{}")
    assert find_model_dir(model) == model
    assert find_model_dir(tmp_path) == model  # Azure ML: .../azureml-models/<name>/<version>


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        (lambda tmp: None, ["AZUREML_MODEL_DIR is not set", "data/model.keras"]),
        (lambda tmp: tmp / "nope", ["does not exist", "AZUREML_MODEL_DIR"]),
        (lambda tmp: tmp, ["No model in", "found nothing", "python -m training.train"]),
    ],
    ids=["unset", "missing", "empty"],
)
def test_no_model_is_explained(tmp_path, setup, fragments):
    with pytest.raises(ModelLoadError) as failure:
        find_model_dir(setup(tmp_path))
    for fragment in fragments:
        assert fragment in str(failure.value)


def test_unrelated_files_are_listed(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    with pytest.raises(ModelLoadError, match=r"found model\.h5, other/"):
        find_model_dir(tmp_path)


def test_two_models_are_ambiguous(tmp_path):
    _model_folder(tmp_path, "model")
    _model_folder(tmp_path, "model-old")
    with pytest.raises(ModelLoadError, match="several model folders \\(model, model-old\\)"):
        find_model_dir(tmp_path)


def test_a_corrupt_model_file_is_a_load_error(tmp_path):
    _model_folder(tmp_path)
    with pytest.raises(ModelLoadError, match=r"Cannot load the Keras model .*model\.keras"):
        DigitClassifier.load(tmp_path)


def test_a_model_with_other_shapes_breaks_the_contract(tmp_path):
    import keras

    folder = tmp_path / "model" / "data"
    folder.mkdir(parents=True)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(5)])
    model.save(folder / "model.keras")
    with pytest.raises(ModelLoadError, match=r"maps \(None, 28, 28\) to \(None, 5\)"):
        DigitClassifier.load(tmp_path)


@pytest.mark.slow
def test_the_trained_model_loads_and_scores_without_a_server(trained_output, mnist_test):
    classifier = DigitClassifier.load(trained_output / "model", max_batch=64)
    classifier.warm_up()
    images, labels = mnist_test
    pixels = images[:64].reshape(64, 784).astype(np.float32) / 255
    prediction = classifier.predict(pixels)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1, atol=1e-5)
    assert (prediction.labels == labels[:64]).mean() >= 0.9
    with pytest.raises(BadRequest) as failure:
        classifier.score(b'{"data": [' + b"[0.5]," * 64 + b"[0.5]]}")
    assert failure.value.status == 413


@pytest.mark.slow
def test_the_trained_dense_stack_runs_in_numpy_with_the_models_own_probabilities(
    trained_output, mnist_test
):
    classifier = DigitClassifier.load(trained_output / "model")
    assert classifier.dense_stack is not None  # the 784-300-100-10 net is exported
    images, _ = mnist_test
    pixels = images[:500].reshape(500, 784).astype(np.float32) / 255
    expected = np.asarray(classifier.model(pixels, training=False))
    np.testing.assert_allclose(classifier.predict_proba(pixels), expected, atol=1e-5)
    np.testing.assert_allclose(classifier.predict_proba(pixels[:1]), expected[:1], atol=1e-5)


def test_other_architectures_keep_the_tensorflow_function():
    import keras

    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(16, activation="tanh"),  # not exported: stays in TensorFlow
            keras.layers.BatchNormalization(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    classifier = DigitClassifier(model)
    assert classifier.dense_stack is None
    pixels = np.random.default_rng(1).random((3, 784), dtype=np.float32)
    np.testing.assert_allclose(
        classifier.predict_proba(pixels), np.asarray(model(pixels, training=False)), atol=1e-6
    )


def test_parse_request_returns_float32_rows():
    array = parse_request(b'{"data": [' + b", ".join([b"[" + b"0, " * 783 + b"1]"] * 3) + b"]}")
    assert array.dtype == np.float32 and array.shape == (3, 784)
    assert array[:, -1].tolist() == [1, 1, 1]


def test_parse_request_reports_the_first_bad_image_in_a_batch():
    good = "[" + ", ".join(["0.5"] * 784) + "]"
    bad = "[" + ", ".join(["0.5"] * 783 + ['"x"']) + "]"
    with pytest.raises(BadRequest, match="Pixel 783 of image 2 is the string"):
        parse_request(f'{{"data": [{good}, {good}, {bad}, {bad}]}}'.encode())


def test_requests_are_read_and_answered_the_same_without_orjson(monkeypatch):
    import json

    from serving.code import predictor

    body = b'{"data": [' + b"[" + b"0.25, " * 783 + b"1]" + b"]}"
    fast = parse_request(body)
    result = predictor.Prediction(np.array([3]), np.full((1, 10), 0.1, np.float32))
    monkeypatch.setattr(predictor, "orjson", None)
    np.testing.assert_array_equal(parse_request(body), fast)
    assert json.loads(result.to_json()) == result.to_body()
    with pytest.raises(BadRequest, match="is nan"):
        parse_request(body.replace(b"1]", b"NaN]"))
