"""The models training can build, by name: the article's MNIST DNN and a small CNN.

``MODELS`` is the registry ``python -m training.train --model NAME`` chooses from. Each entry
is one builder function plus its training defaults. A builder returns an uncompiled Keras model
with one input and one output; everything else follows from that model:

- its keyword parameters are its options: each one that ``training/config.py`` has a flag
  for (``MODEL_OPTIONS``: ``--first-layer-neurons``, ``--second-layer-neurons``,
  ``--dropout``) can be set from the command line, and its default is the parameter's
  default; a flag the builder does not take is refused for that model;
- ``model.input_shape`` decides how the training and test images are shaped (flat 784 pixels
  for the DNN, 28x28x1 for the CNN), and ``model.output_shape`` the number of classes;
- the saved MLflow model's signature and input example come from the model's own input and
  output (``training/export.py``), and serving reads them from there.

Adding an architecture: write one builder here (input shape of your choice, over the 28x28
pixels in [0, 1]; a softmax over ``NUM_CLASSES``) and add its name to ``MODELS``.

Kept free of distribution concerns: callers build models inside a strategy scope. Written
against the Keras API shared by Keras 3 (TF >= 2.16) and tf.keras 2.13 (TensorFlow 2.13.1, the
Horovod environment). Keras is imported inside the builders, so reading ``MODELS`` (to check the
flags) does not load TensorFlow.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from training.data import COLS, ROWS

if TYPE_CHECKING:
    import keras

NUM_PIXELS = ROWS * COLS
NUM_CLASSES = 10


def dnn(
    first_layer_neurons: int = 300, second_layer_neurons: int = 100, dropout: float = 0.0
) -> keras.Model:
    """784 -> first -> second -> 10 softmax: the article's (and LeCun et al. 1998's) 300-100 net.

    ``dropout`` > 0 adds Dropout after each hidden layer (off at inference). The default, 0,
    is the article's net as it was: in the default 3 epochs it does not overfit, and dropout
    only slows it down (after 3 epochs at the 5e-3 rate, seeds 0-4: 0.1 ends at 98.1-98.2%,
    none at 98.2-98.4%). The saved model maps float32 [batch, 784] pixels in [0, 1] to class
    probabilities.
    """
    import keras

    layers: list[Any] = [keras.Input(shape=(NUM_PIXELS,), name="pixels")]
    for index, units in enumerate((first_layer_neurons, second_layer_neurons), start=1):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"hidden{index}"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout{index}"))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities"))
    return keras.Sequential(layers, name="mnist_dnn")


def dnn_weights(first_layer_neurons: int = 300, second_layer_neurons: int = 100, **_: Any) -> int:
    """Weights and biases of ``dnn``, counted without building it."""
    first, second = first_layer_neurons, second_layer_neurons
    return (NUM_PIXELS + 1) * first + (first + 1) * second + (second + 1) * NUM_CLASSES


def cnn(dropout: float = 0.25) -> keras.Model:
    """28x28x1 -> conv 32 3x3 -> max-pool -> conv 64 3x3 -> max-pool -> dense 128 -> 10 softmax.

    The classic small MNIST convnet (225k weights, most in the dense layer). Dropout before
    the dense layers regularises the flattened features; the saved model maps float32
    [batch, 28, 28, 1] pixels in [0, 1] to class probabilities.
    """
    import keras

    layers: list[Any] = [
        keras.Input(shape=(ROWS, COLS, 1), name="image"),
        keras.layers.Conv2D(32, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(64, 3, activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.Flatten(name="flatten"),
    ]
    if dropout > 0:
        layers.append(keras.layers.Dropout(dropout, name="dropout1"))
    layers.append(keras.layers.Dense(128, activation="relu", name="hidden1"))
    if dropout > 0:
        layers.append(keras.layers.Dropout(dropout, name="dropout2"))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities"))
    return keras.Sequential(layers, name="mnist_cnn")


@dataclass(frozen=True)
class Architecture:
    """A registry entry: the builder and what training needs to know about it before TensorFlow
    loads. ``epochs`` and ``learning_rate`` are the defaults of ``--epochs`` and
    ``--learning-rate`` for this model; ``weights``, if given, counts the weights from the
    options (an oversized model is then refused while the flags are checked). ``jit``: whether
    the training step is XLA-compiled (``jit_compile``) where the runtime allows it; set it
    only where it measures faster (dense nets on CPU: about 2x; convolutions on CPU: about
    6x slower, so the CNN leaves it off)."""

    build: Callable[..., keras.Model]
    epochs: int
    learning_rate: float
    weights: Callable[..., int] | None = None
    jit: bool = False

    def options(self) -> dict[str, Any]:
        """The builder's options and their defaults."""
        return {
            name: parameter.default
            for name, parameter in inspect.signature(self.build).parameters.items()
        }


MODELS: dict[str, Architecture] = {
    # 3 epochs: the cosine schedule reaches zero at the last one, where the DNN stands at
    # 98.2-98.4% (seeds 0-4; benchmarks/train_speed.py checks >= 98.0%); each epoch more
    # costs about a second on two CPU cores.
    # 5e-3: Adam's peak rate after warm-up, for one replica; 4e-3 to 7e-3 all end at
    # 98.2-98.4% after 3 epochs (seeds 0-2), 3e-3 at 98.0% (seeds 0-1): too close to call.
    "dnn": Architecture(dnn, epochs=3, learning_rate=5e-3, weights=dnn_weights, jit=True),
    "cnn": Architecture(cnn, epochs=4, learning_rate=3e-3, jit=False),
}
DEFAULT_MODEL = "dnn"


def build_model(name: str, **options: Any) -> keras.Model:
    """The model ``name`` names in ``MODELS``, built with ``options`` (its defaults otherwise)."""
    return MODELS[name].build(**options)
