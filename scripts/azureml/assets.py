"""The workspace's assets this repository makes: the MNIST data asset and the trained model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from scripts import UserError

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Data, Model


def register_data(
    ml_client: MLClient, *, folder: str | os.PathLike[str] | None = None, sink: TextIO
) -> Data:
    """Register the MNIST data asset from its spec (the public mirror), or upload ``folder``.

    The spec's version is left alone when it already exists; an upload becomes the next
    version. A folder is checked first (all four files, right content) so nothing broken is
    uploaded.
    """
    from azure.ai.ml import load_data
    from azure.core.exceptions import ResourceNotFoundError

    from scripts.jobspec import local_asset_specs

    spec = next(s for (kind, _), s in local_asset_specs().items() if kind == "data")
    data = load_data(spec.path)
    if folder is not None:
        from training.data import DataError, load_mnist

        folder = Path(folder).expanduser().resolve()
        try:
            load_mnist(folder)
        except DataError as exc:
            raise UserError(str(exc)) from None
        data.path, data.version = str(folder), None
        data.description = f"{data.description} (uploaded from {folder.name})"
    else:
        try:
            existing = ml_client.data.get(data.name, version=data.version)
            sink.write(f"data asset {existing.name}:{existing.version} exists ({existing.path})\n")
            return existing
        except ResourceNotFoundError:
            pass
    created = ml_client.data.create_or_update(data)
    sink.write(f"registered data asset {created.name}:{created.version} -> {created.path}\n")
    return created


# ---------------------------------------------------------------------------- models


def registered_model_name(spec: Path | None = None) -> str:
    """The name models are registered under: the one the deployment spec deploys.

    ``model: azureml:NAME@latest`` in serving/deployment.yml (``spec``), read with azure-ai-ml's
    own loader, is the single place that names the model, so ``register``, the demo's local
    registry and ``deploy`` cannot disagree.
    """
    from scripts.endpoints.specs import DEPLOYMENT_SPEC, SpecError, load_deployment
    from scripts.jobspec import parse_asset_ref

    spec = spec or DEPLOYMENT_SPEC
    try:
        model = load_deployment(spec).model
    except SpecError as exc:
        raise UserError(str(exc)) from None
    ref = parse_asset_ref("model", model if isinstance(model, str) else None)
    if ref is None:
        raise UserError(
            f"{spec}: `model` is {model!r}, not a registered model (azureml:NAME@latest or "
            "azureml:NAME:VERSION); models are registered under the name it deploys, so name one "
            "there (or pass register --name)"
        )
    return ref.name


_FRAMEWORK_PIN = re.compile(
    r"^\s*-?\s*(?:tensorflow|tensorflow-cpu|tensorflow-gpu|tensorflow\[and-cuda\])==([\w.]+)",
    re.MULTILINE,
)


def model_tags(model_dir: str | os.PathLike[str]) -> dict[str, str]:
    """What SDK v1's model_framework recorded, read from the MLflow model's own requirements."""
    model_dir = Path(model_dir)
    if not (model_dir / "MLmodel").is_file():
        raise UserError(
            f"{model_dir} is not an MLflow model (no MLmodel file): point at the model/ folder "
            "training wrote (OUTPUT_DIR/model)"
        )
    for name in ("requirements.txt", "conda.yaml"):
        path = model_dir / name
        text = path.read_text(errors="replace") if path.is_file() else ""
        match = _FRAMEWORK_PIN.search(text)
        if match:
            return {"framework": "TensorFlow", "framework_version": match.group(1)}
    raise UserError(
        f"{model_dir} does not say which TensorFlow made it (no tensorflow== in its "
        "requirements.txt or conda.yaml): was it written by training/train.py?"
    )


def model_description(model_dir: str | os.PathLike[str]) -> str:
    """What the model takes and gives, from its MLmodel signature (the model's own shapes),
    e.g. ``float32[-1,28,28,1] pixels in [0,1] -> float32[-1,10] digit probabilities``."""
    import yaml

    described = "MNIST digit classifier (training/train.py)"
    try:
        signature = yaml.safe_load((Path(model_dir) / "MLmodel").read_text())["signature"]
        images, probabilities = (
            json.loads(signature[side])[0]["tensor-spec"] for side in ("inputs", "outputs")
        )
    except (OSError, yaml.YAMLError, ValueError, LookupError, TypeError):
        return described  # no tensor signature: the name and tags still say what it is

    def tensor(spec: dict[str, object]) -> str:
        shape = spec.get("shape")
        return (
            f"{spec.get('dtype')}[{','.join(map(str, shape if isinstance(shape, list) else []))}]"
        )

    return (
        f"{described}: {tensor(images)} pixels in [0,1] -> {tensor(probabilities)} "
        "digit probabilities"
    )


def register_model(
    ml_client: MLClient,
    *,
    model_dir: str | os.PathLike[str],
    job_name: str | None = None,
    output: str = "run",
    name: str,
    sink: TextIO,
) -> Model:
    """Register an MLflow model as ``name``, tagged with its framework and version.

    With ``job_name`` the model is registered from the job's output in the workspace (its
    lineage kept, nothing uploaded; ``model_dir`` is the downloaded copy that tells the
    TensorFlow version); without it, ``model_dir`` is uploaded.
    """
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    tags = model_tags(model_dir)
    path = f"azureml://jobs/{job_name}/outputs/{output}/paths/model" if job_name else str(model_dir)
    if job_name:
        tags["job"] = job_name
    model = Model(
        name=name,
        path=path,
        type=AssetTypes.MLFLOW_MODEL,
        description=model_description(model_dir),
        tags=tags,
    )
    created = ml_client.models.create_or_update(model)
    sink.write(
        f"registered model {created.name}:{created.version} "
        f"({tags['framework']} {tags['framework_version']}) from {path}\n"
    )
    return created
