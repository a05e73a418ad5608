"""The predictor's model loading (where AZUREML_MODEL_DIR may point, the shapes the folder
publishes, clear failures), the TensorFlow runtime for folders without ONNX, and the request
forms it reads for any model shape. ONNX Runtime's side: tests/serving/test_serving_onnx.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from serving.code.predictor import (
    BadRequest,
    DigitClassifier,
    ImageFormat,
    ModelLoadError,
    find_model_dir,
    parse_request,
)

FLAT = ImageFormat((784,))  # the DNN's images


def _signature(inputs: list[int], outputs: list[int], dtype: str = "float32") -> dict:
    def tensor(shape: list[int]) -> str:
        return json.dumps([{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}}])

    return {"inputs": tensor(inputs), "outputs": tensor(outputs), "params": None}


def _model_folder(root: Path, name: str = "model", signature: dict | None = None) -> Path:
    folder = root / name
    (folder / "data").mkdir(parents=True)
    mlmodel = {"flavors": {}, "signature": signature or _signature([-1, 784], [-1, 10])}
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (folder / "data" / "model.keras").write_bytes(b"placeholder")
    return folder


def _saved(model, root: Path, signature: dict | None = None) -> Path:
    """``model`` in a model folder as training writes it: data/model.keras and an MLmodel
    whose signature is training's own (training/export.py), unless ``signature`` replaces it.
    No data/model.onnx: these folders are served by TensorFlow."""
    from training.export import signature as signature_of

    folder = _model_folder(root, signature=signature or signature_of(model))
    model.save(folder / "data" / "model.keras")
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


def _tiny_dnn():
    import keras

    return keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(10, activation="softmax")], name="tiny"
    )


def _tiny_cnn(classes: int = 5):
    """An untrained convolutional net with the CNN's input shape and ``classes`` outputs."""
    import keras

    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(2, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


@pytest.mark.parametrize(
    ("mlmodel", "fragments"),
    [
        pytest.param("flavors: {tensorflow: {}}\n", ["MLmodel has no signature"], id="none"),
        pytest.param(None, ["has no MLmodel file", "MLflow model"], id="no-mlmodel"),
        pytest.param("{flavors: [", ["Cannot read", "MLmodel"], id="not-yaml"),
        pytest.param(
            yaml.safe_dump({"signature": {"inputs": '[{"type": "string"}]', "outputs": "[]"}}),
            ['model\'s inputs as [{"type": "string"}]', "one float32 tensor"],
            id="not-a-tensor",
        ),
        pytest.param(
            yaml.safe_dump({"signature": _signature([-1, 784], [-1, 10], "float64")}),
            ["inputs as a float64 tensor", "float32"],
            id="float64",
        ),
    ],
)
def test_the_folder_must_publish_a_float32_tensor_signature(tmp_path, mlmodel, fragments):
    folder = _model_folder(tmp_path)
    if mlmodel is None:
        (folder / "MLmodel").unlink()
    else:
        (folder / "MLmodel").write_text(mlmodel)
    with pytest.raises(ModelLoadError) as failure:
        DigitClassifier.load(tmp_path)
    for fragment in fragments:
        assert fragment in str(failure.value)


def test_a_signature_the_keras_model_does_not_match_is_refused(tmp_path):
    _saved(_tiny_dnn(), tmp_path, _signature([-1, 28, 28, 1], [-1, 10]))
    with pytest.raises(ModelLoadError) as failure:
        DigitClassifier.load(tmp_path)
    message = str(failure.value)
    assert "says the model maps (-1, 28, 28, 1) to (-1, 10)" in message
    assert "model.keras maps (-1, 784) to (-1, 10)" in message


@pytest.mark.parametrize(
    ("shapes", "fragment"),
    [
        pytest.param(((28, 28, 3), 10), "maps (-1, 28, 28, 3) to (-1, 10); the server takes "
                     "grayscale images", id="colour"),
        pytest.param(((784,), (10, 2)), "maps (-1, 784) to (-1, 10, 2); the server answers "
                     "class probabilities", id="2-d-output"),
    ],
)  # fmt: skip
def test_models_that_do_not_map_images_to_classes_are_refused(tmp_path, shapes, fragment):
    import keras

    inputs, outputs = shapes
    model = keras.Sequential(
        [
            keras.Input(inputs),
            keras.layers.Flatten(),
            keras.layers.Dense(int(np.prod(outputs))),
            keras.layers.Reshape(outputs if isinstance(outputs, tuple) else (outputs,)),
        ]
    )
    _saved(model, tmp_path)
    with pytest.raises(ModelLoadError) as failure:
        DigitClassifier.load(tmp_path)
    assert fragment in str(failure.value)


def test_a_convolutional_model_takes_both_request_forms_with_its_own_shapes(tmp_path):
    """No training: an untrained net of the CNN's input shape and 5 classes, saved as training
    saves models. The contract is the folder's; flat and row requests reach it reshaped."""
    model = _tiny_cnn(classes=5)
    classifier = DigitClassifier.load(_saved(model, tmp_path), max_batch=4)
    contract = classifier.contract
    assert (contract.input_shape, contract.classes, contract.pixels) == ((28, 28, 1), 5, 784)
    assert contract.image == (28, 28)
    assert classifier.runtime == "tensorflow"  # no data/model.onnx in the folder
    images = np.random.default_rng(2).random((3, 28, 28), dtype=np.float32)
    expected = np.asarray(model(images[..., np.newaxis], training=False))
    for sent in (images.reshape(3, 784), images):
        body = json.dumps({"data": sent.tolist()}).encode()
        parsed = classifier.parse(body)
        assert parsed.shape == (3, 28, 28, 1) and parsed.dtype == np.float32
        answer = json.loads(classifier.score(body))
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
        assert answer["predictions"] == expected.argmax(axis=1).tolist()
    single = json.loads(classifier.score(json.dumps({"data": images[:1].tolist()}).encode()))
    np.testing.assert_allclose(single["probabilities"], expected[:1], atol=1e-5)
    with pytest.raises(BadRequest, match=r"Image 0 has 783 values, expected 784 \(28x28\)"):
        classifier.parse(b'{"data": [[' + b"0.5, " * 782 + b"0.5]]}")
    # The channel axis is no request form: refused as for the DNN.
    with pytest.raises(
        BadRequest, match=r"Pixel \[0\]\[0\] of image 0 is a list of 1, not a number"
    ):
        classifier.parse(json.dumps({"data": images[:1, ..., np.newaxis].tolist()}).encode())
    with pytest.raises(BadRequest) as failure:
        classifier.parse(json.dumps({"data": [[0.5] * 784] * 5}).encode())
    assert failure.value.status == 413


def test_a_flat_input_that_is_not_square_takes_flat_images_only():
    import keras

    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3, activation="softmax")])
    classifier = DigitClassifier.from_keras(model)
    assert (classifier.contract.image, classifier.contract.classes) == (None, 3)
    assert classifier.parse(b'{"data": [' + b"[" + b"0.5, " * 11 + b"1]" + b"]}").shape == (1, 12)
    with pytest.raises(BadRequest, match="this model takes flat images"):
        classifier.parse(b'{"data": [[[0.5, 0.5], [0.5, 0.5]]]}')


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


def _dense_on_rows():
    import keras

    return keras.Sequential(  # Dense layers act on each row of a 2-D input: not a flat stack
        [keras.Input((28, 28)), keras.layers.Dense(4), keras.layers.Flatten(),
         keras.layers.Dense(10, activation="softmax")]
    )  # fmt: skip


def _tanh_and_batch_norm():
    import keras

    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(16, activation="tanh"),  # not exported: stays in TensorFlow
            keras.layers.BatchNormalization(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


@pytest.mark.parametrize("build", [_tiny_dnn, _tanh_and_batch_norm, _dense_on_rows, _tiny_cnn])
def test_the_tensorflow_runtime_gives_the_keras_models_probabilities(build):
    """The fallback for folders without ONNX runs any architecture: a batch through the traced
    function, a single image through the XLA-compiled one."""
    model = build()
    classifier = DigitClassifier.from_keras(model, max_batch=8)
    assert classifier.runtime == "tensorflow"
    shape = classifier.contract.input_shape
    pixels = np.random.default_rng(1).random((3, *shape), dtype=np.float32)
    expected = np.asarray(model(pixels, training=False))
    np.testing.assert_allclose(classifier.predict_proba(pixels), expected, atol=1e-6)
    np.testing.assert_allclose(classifier.predict_proba(pixels[:1]), expected[:1], atol=1e-6)


def test_parse_request_returns_float32_rows():
    body = b'{"data": [' + b", ".join([b"[" + b"0, " * 783 + b"1]"] * 3) + b"]}"
    array = parse_request(body, FLAT)
    assert array.dtype == np.float32 and array.shape == (3, 784)
    assert array[:, -1].tolist() == [1, 1, 1]


def test_parse_request_reports_the_first_bad_image_in_a_batch():
    good = "[" + ", ".join(["0.5"] * 784) + "]"
    bad = "[" + ", ".join(["0.5"] * 783 + ['"x"']) + "]"
    with pytest.raises(BadRequest, match="Pixel 783 of image 2 is the string"):
        parse_request(f'{{"data": [{good}, {good}, {bad}, {bad}]}}'.encode(), FLAT)


def test_requests_are_read_and_answered_the_same_without_orjson(monkeypatch):
    import json

    from serving.code import predictor

    body = b'{"data": [' + b"[" + b"0.25, " * 783 + b"1]" + b"]}"
    fast = parse_request(body, FLAT)
    result = predictor.Prediction(np.array([3]), np.full((1, 10), 0.1, np.float32))
    monkeypatch.setattr(predictor, "orjson", None)
    np.testing.assert_array_equal(parse_request(body, FLAT), fast)
    assert json.loads(result.to_json()) == result.to_body()
    with pytest.raises(BadRequest, match="is nan"):
        parse_request(body.replace(b"1]", b"NaN]"), FLAT)


# --------------------------------------------------------------------------- the fast reader

_P = "0.5, " * 783  # 783 pixels and a comma: an image is this and one more value
_783 = ", ".join(["0.5"] * 783)
NEAR_MISSES = {
    # Per image 784 items, 1,568 numbers in all, but one image holds [] and the other a pair.
    "nested arrays": f'{{"data": [[{_P}[]], [{_P}[0.5, 0.5]]]}}',
    # Three brackets for two images, 1,568 numbers: the first "image" holds an image and 783
    # more (784 items), the second is a number.
    "number as image": f'{{"data": [[[{_P}0.5], {_783}], 0.5]}}',
    "rows form": '{"data": [' + "[" + ", ".join(["[" + "0.5, " * 27 + "1]"] * 28) + "]" + "]}",
    "unbatched": f'{{"data": [{_P}0.5]}}',
    "short image": f'{{"data": [[{_P}0.5], [{_783}]]}}',
    "other key": f'{{"inputs": [[{_P}0.5]]}}',
    "over the batch limit": f'{{"data": [[{_P}0.5], [{_P}0.5], [{_P}0.5]]}}',
    "over 1": f'{{"data": [[{_P}1.0000000000000002]]}}',
    "tiny negative": f'{{"data": [[{_P}-5e-324]]}}',
    "NaN": f'{{"data": [[{_P}NaN]]}}',
    "overflow": f'{{"data": [[{_P}1e400]]}}',
    "huge integer": f'{{"data": [[{_P}{10**30}]]}}',
    "negative zero": f'{{"data": [[{_P}-0.0]]}}',  # a valid pixel, read the careful way
    "boolean": f'{{"data": [[{_P}true]]}}',
    "trailing garbage": f'{{"data": [[{_P}0.5]]}} x',
    "byte order mark": f'\ufeff{{"data": [[{_P}0.5]]}}',  # simdjson alone would skip it
    "leading zero": f'{{"data": [[{_P}00.5]]}}',
    "plus sign": f'{{"data": [[{_P}+0.5]]}}',
    "bare fraction": f'{{"data": [[{_P}.5]]}}',
}


def _careful(body: bytes, monkeypatch: pytest.MonkeyPatch) -> np.ndarray | BadRequest:
    """What parse_request makes of ``body`` without simdjson: the images or the error."""
    from serving.code import predictor

    with monkeypatch.context() as patch:
        patch.setattr(predictor, "simdjson", None)
        try:
            return parse_request(body, FLAT, max_batch=2)
        except BadRequest as exc:
            return exc


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_what_is_not_a_plain_batch_of_flat_images_is_read_the_careful_way(name, monkeypatch):
    """The fast reader takes none of these near misses; each gets the careful path's answer."""
    pytest.importorskip("simdjson")
    from serving.code import predictor

    body = NEAR_MISSES[name].encode()
    assert predictor._flat_batch(body, FLAT, 2) is None
    careful = _careful(body, monkeypatch)
    try:
        got = parse_request(body, FLAT, max_batch=2)
    except BadRequest as exc:
        assert isinstance(careful, BadRequest), f"{name}: refused only by the fast reader"
        assert (exc.status, exc.code) == (careful.status, careful.code)
        assert exc.message == careful.message
    else:
        assert not isinstance(careful, BadRequest), f"{name}: accepted only by the fast reader"
        np.testing.assert_array_equal(got, careful)


def test_the_fast_reader_gives_the_careful_readers_images(monkeypatch):
    pytest.importorskip("simdjson")
    from serving.code import predictor

    pixels = np.random.default_rng(7).random((2, 784))
    pixels[0, :3] = [0.0, 1.0, 5e-324]  # the range's edges, and the smallest double above 0
    pixels[1, :2] = [0, 1]  # integers
    body = json.dumps({"data": [pixels[0].tolist(), [0, 1, *pixels[1, 2:].tolist()]]}).encode()
    fast = predictor._flat_batch(body, FLAT, 2)
    assert fast is not None and fast.dtype == np.float32 and fast.shape == (2, 784)
    np.testing.assert_array_equal(fast, _careful(body, monkeypatch))
    np.testing.assert_array_equal(fast, pixels.astype(np.float32))
    cnn = ImageFormat((28, 28, 1))
    assert predictor._flat_batch(body, cnn, 2).shape == (2, 28, 28, 1)


@pytest.mark.parametrize("simdjson", [True, False], ids=["simdjson", "no-simdjson"])
def test_the_range_check_is_exact_at_its_edges(simdjson, monkeypatch):
    from serving.code import predictor

    if not simdjson:
        monkeypatch.setattr(predictor, "simdjson", None)
    for pixel in ("0", "-0.0", "5e-324", "1e-400", "0.9999999999999999", "1", "1.0", "1e0"):
        image = parse_request(f'{{"data": [[{_P}{pixel}]]}}'.encode(), FLAT)
        assert image[0, -1] == float(pixel), pixel
    for pixel in ("-5e-324", "-1", "1.0000000000000002", "1e308", "Infinity", "-Infinity", "NaN"):
        with pytest.raises(BadRequest, match="Pixel 783 of image 0 is"):
            parse_request(f'{{"data": [[{_P}{pixel}]]}}'.encode(), FLAT)
