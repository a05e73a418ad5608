"""The registered model describes itself from its own MLmodel signature, whatever its shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scripts.azureml.assets import model_description

PLAIN = "MNIST digit classifier (training/train.py)"


def write_mlmodel(folder: Path, signature: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mlmodel = {"flavors": {"tensorflow": {"model_type": "keras"}}}
    if signature is not None:
        mlmodel["signature"] = {side: json.dumps(columns) for side, columns in signature.items()}
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return folder


def tensor(*shape: int) -> list[dict]:
    return [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": list(shape)}}]


@pytest.mark.parametrize(
    ("images", "text"),
    [((-1, 784), "float32[-1,784]"), ((-1, 28, 28, 1), "float32[-1,28,28,1]")],
    ids=["dnn", "cnn"],
)
def test_the_description_gives_the_models_own_shapes(tmp_path: Path, images, text) -> None:
    model = write_mlmodel(
        tmp_path / "model", {"inputs": tensor(*images), "outputs": tensor(-1, 10)}
    )
    assert model_description(model) == (
        f"{PLAIN}: {text} pixels in [0,1] -> float32[-1,10] digit probabilities"
    )


@pytest.mark.parametrize(
    "signature",
    [None, {"inputs": [{"type": "double", "name": "x"}], "outputs": tensor(-1, 10)}],
    ids=["no-signature", "column-signature"],
)
def test_a_model_without_a_tensor_signature_is_still_described(tmp_path: Path, signature) -> None:
    assert model_description(write_mlmodel(tmp_path / "model", signature)) == PLAIN
