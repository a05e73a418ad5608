"""Make a ``.keras`` file written by tf.keras 2 loadable by Keras 3 (serving).

Horovod's last release builds only against TensorFlow <= 2.13, so Horovod jobs save the
model with tf.keras 2.13 while serving loads it with Keras 3. Keras 3 reads a Keras 2
``.keras`` file's ``config.json`` but not its weights: Keras 2 names the layers in
``model.weights.h5`` with one counter across all of a model's dependencies
(``dense``, ``dense_2``, ``dense_4``), where Keras 3 counts per layer type (``dense``,
``dense_1``, ``dense_2``), so ``keras.models.load_model`` fails with "Layer 'hidden2'
expected 2 variables, but received 0".

``rewrite_weights_for_keras3`` replaces the weights file inside the archive with the layout
Keras 3 writes for a Sequential or functional model of built-in layers:
``layers/<snake_case class name>[_<n>]/vars/<i>``, each layer's weights in order.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "model.weights.h5"


def _snake_case(name: str) -> str:
    """Keras 3's ``to_snake_case`` (keras/src/utils/naming.py): ``Dense`` -> ``dense``,
    ``Conv2D`` -> ``conv2d``, ``MaxPooling2D`` -> ``max_pooling2d``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def keras3_weights(model: Any) -> bytes:
    """The ``model.weights.h5`` Keras 3 would write for ``model`` (an HDF5 file's bytes)."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as store:
        store.create_group("vars")  # the model's own variables: none
        used: dict[str, int] = {}
        for layer in model.layers:
            base = _snake_case(type(layer).__name__)
            used[base] = used.get(base, -1) + 1
            name = base if used[base] == 0 else f"{base}_{used[base]}"
            group = store.create_group(f"layers/{name}/vars")
            for index, weight in enumerate(layer.weights):
                group.create_dataset(str(index), data=weight.numpy())
    return buffer.getvalue()


def rewrite_weights_for_keras3(model: Any, keras_file: Path) -> None:
    """Replace the weights in the ``.keras`` archive ``keras_file`` with Keras 3's layout."""
    with zipfile.ZipFile(keras_file) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    if WEIGHTS_FILE not in entries:
        raise ValueError(f"{keras_file} is not a .keras archive (no {WEIGHTS_FILE} inside)")
    entries[WEIGHTS_FILE] = keras3_weights(model)
    staging = keras_file.with_name(keras_file.name + ".tmp")
    with zipfile.ZipFile(staging, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    staging.replace(keras_file)
