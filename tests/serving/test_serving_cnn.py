"""The CNN (``python -m training.train --model cnn``) served by the very same serving/code/score.py
under the real azmlinfsrv, and scored by the same batch_score.py.

The model folder's signature says ``[-1, 28, 28, 1]`` pixels in, ``[-1, 10]`` probabilities out;
requests still send each image as 784 numbers or 28 lists of 28, and the answers must be the
model's own. The published API and the answers to bad requests are checked for both models in
tests/serving/test_serving_http.py (``each_server``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.slow

N = 256  # real MNIST test images per check


@pytest.fixture(scope="module")
def cnn_expected(trained_cnn: Path, mnist_test) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first N test images (float64 in [0, 1], N x 28 x 28), their labels, and the CNN's
    own probabilities for them, computed in this process by Keras."""
    import keras

    images, labels = mnist_test
    pixels = images[:N].astype(np.float64) / 255.0
    model = keras.models.load_model(trained_cnn / "model" / "data" / "model.keras", compile=False)
    probabilities = model.predict(pixels[..., np.newaxis].astype(np.float32), verbose=0)
    return pixels, labels[:N], np.asarray(probabilities)


def _scores(reply, n: int) -> np.ndarray:
    assert reply.status == 200, reply.body[:500]
    body = reply.json()
    assert set(body) == {"predictions", "probabilities"}
    probabilities = np.asarray(body["probabilities"])
    assert probabilities.shape == (n, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert body["predictions"] == probabilities.argmax(axis=1).tolist()
    return probabilities


def test_the_cnn_folder_publishes_its_image_shape(trained_cnn):
    """What serving reads: the signature training wrote from the CNN's own input and output."""
    signature = yaml.safe_load((trained_cnn / "model" / "MLmodel").read_text())["signature"]
    (inputs,), (outputs,) = json.loads(signature["inputs"]), json.loads(signature["outputs"])
    assert inputs["tensor-spec"] == {"dtype": "float32", "shape": [-1, 28, 28, 1]}
    assert outputs["tensor-spec"] == {"dtype": "float32", "shape": [-1, 10]}


@pytest.mark.parametrize("form", ["flat-784", "28x28"])
def test_both_request_forms_score_as_the_models_own_predictions(cnn_server, cnn_expected, form):
    pixels, labels, expected = cnn_expected
    sent = pixels.reshape(N, 784) if form == "flat-784" else pixels
    probabilities = _scores(cnn_server.client.score({"data": sent.tolist()}), N)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.95  # one epoch: about 98%
    # A single image goes through the XLA-compiled function: the same answer.
    single = _scores(cnn_server.client.score({"data": sent[:1].tolist()}), 1)
    np.testing.assert_allclose(single, expected[:1], atol=1e-5)


def test_the_batch_scorer_feeds_png_digits_to_the_cnn(trained_cnn, cnn_expected, tmp_path):
    """batch_score.py takes its image size and input shape from the model: 28x28 PNGs become
    the CNN's (n, 28, 28, 1) input, and each file's digit is the model's own."""
    from serving.batch.code.batch_score import DigitFiles

    pixels, _, expected = cnn_expected
    paths = []
    for i, image in enumerate(np.rint(pixels[:20] * 255).astype(np.uint8)):
        paths.append(str(tmp_path / f"{i:05d}.png"))
        Image.fromarray(image, mode="L").save(paths[-1])
    scorer = DigitFiles.load(trained_cnn)
    assert (scorer.height, scorer.width, scorer.input_shape) == (28, 28, (None, 28, 28, 1))
    rows = [line.split(",") for line in scorer.score_files(paths)]
    assert [row[0] for row in rows] == [f"{i:05d}.png" for i in range(20)]
    assert [int(row[1]) for row in rows] == expected[:20].argmax(axis=1).tolist()
    np.testing.assert_allclose(
        [float(row[2]) for row in rows], expected[:20].max(axis=1), atol=1e-5
    )
