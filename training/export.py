"""Write the trained model as a self-contained MLflow model folder; replace the old one atomically.

The folder (``OUTPUT_DIR/model``) is the contract between training and serving. It holds:

- ``MLmodel`` with the ``tensorflow`` and ``python_function`` flavors and a tensor signature
  read from the model itself (``model.inputs[0]``, ``model.outputs[0]``: for the MNIST DNN
  ``float32[-1, 784] -> float32[-1, 10]``, for the CNN ``float32[-1, 28, 28, 1] ->
  float32[-1, 10]``), unnamed, so Azure ML's no-code deployment takes
  ``{"input_data": [input, ...]}``, each input in the model's own shape;
- an input example (a few real images in the model's input shape, ``input_example.json`` and
  ``serving_input_example.json``);
- ``requirements.txt``, ``conda.yaml`` and ``python_env.yaml`` pinned to what loads it;
- ``data/model.keras``, and no pickled Python objects: it loads with MLflow and TensorFlow
  alone, in a process that cannot import this repository (an Azure ML no-code deployment);
- ``data/model.onnx``, the same model converted to ONNX (tf2onnx), which the scoring worker
  runs with ONNX Runtime instead of importing TensorFlow, and ``data/onnx_probe.npz``: probe
  images, Keras's probabilities for them and the SHA-256 of the ``model.keras`` they came
  from, so that serving checks at load, without TensorFlow, that the two halves agree. MLflow
  ignores both files. Written only where tf2onnx and onnxruntime are installed and ONNX
  Runtime's probabilities match Keras's within ``ONNX_TOLERANCE``; otherwise one line says why
  and the folder has no ONNX file (serving then falls back to TensorFlow). Never a failed run.

Two writers produce the same layout. Where MLflow is installed, ``mlflow.tensorflow.save_model``
writes it. The Horovod environment (TensorFlow 2.13 with tf.keras 2, no MLflow: see its
``requirements.txt``) writes the same files itself; its Keras file
gets Keras 3's weight layout (``training/keras_compat.py``), so that folder is loaded by the
Keras 3 serving stack (``KERAS3_REQUIREMENTS``), the same way as every other model.

The new folder is written beside the old one (``model.partial``) and swapped in with one
atomic ``renameat2(RENAME_EXCHANGE)`` on Linux, so a reader always finds a complete model;
a failure while writing removes the partial folder and leaves the previous model untouched.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import platform
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

DATA = "data"
KERAS_FILE = "model.keras"
STAGING_SUFFIX = ".partial"
INPUT_EXAMPLE_ROWS = 2  # small: two MNIST images are 12 kB of JSON (21 kB indented, for serving)
ONNX_FILE = "model.onnx"  # beside the Keras file: what the scoring worker runs
ONNX_PROBE_FILE = "onnx_probe.npz"  # probe inputs, Keras's probabilities, the Keras file's hash
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-5  # largest difference from Keras's probabilities, here and at serving
ONNX_PROBE_ROWS = 8  # real images from the example, and as many seeded random ones

# What loads a model written by tf.keras 2 (Horovod) once its weights have Keras 3's layout:
# the serving stack (serving/environment/conda.yml) and the MLflow of requirements.txt.
# tests/training/test_model_export.py holds these equal to those files.
MLFLOW_REQUIREMENT = "mlflow==3.17.2"
KERAS3_REQUIREMENTS = ("tensorflow==2.21.0", "keras==3.15.1")


class ModelExportError(OSError):
    """The model folder could not be written; the previous one (if any) is unchanged.

    An OSError (with the cause's errno where it had one), so callers that report failed
    writes of their outputs report this one too.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(code, message)

    def __str__(self) -> str:
        return self.strerror


def save_model(model: Any, destination: Path, example: np.ndarray) -> Path:
    """Write ``model`` as an MLflow model at ``destination``, replacing any old one atomically.

    ``example``: real inputs (e.g. test images); the first ``INPUT_EXAMPLE_ROWS`` become the
    model's input example. Raises ModelExportError naming the folder and the cause.
    """
    destination = Path(destination)
    staging = destination.with_name(destination.name + STAGING_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while writing
    try:
        write_model_folder(model, staging, example)
        _refuse_pickles(staging)
        replace_atomically(staging, destination)
    except Exception as exc:
        kept = "the previous model there is unchanged" if destination.exists() else "none is there"
        raise ModelExportError(
            f"cannot write the model folder {destination} ({type(exc).__name__}: {exc}); {kept}",
            exc.errno if isinstance(exc, OSError) else None,
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def write_model_folder(model: Any, path: Path, example: np.ndarray) -> None:
    """The MLflow model folder at ``path`` (which must not exist), with or without MLflow."""
    try:
        import mlflow.tensorflow  # noqa: F401
    except ImportError:
        write_without_mlflow(model, path, example)
    else:
        write_with_mlflow(model, path, example)
    write_onnx(path, example)


# ---------------------------------------------------------------------------- what both share


def signature(model: Any) -> dict[str, Any]:
    """The MLmodel ``signature`` entry: one unnamed tensor in, one out, shapes from the model."""

    def spec(tensor: Any) -> str:
        shape = [-1 if size is None else int(size) for size in tensor.shape]
        dtype = np.dtype(getattr(tensor.dtype, "as_numpy_dtype", tensor.dtype)).name
        return json.dumps([{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}}])

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"expected a model with one input and one output, got {len(model.inputs)} "
            f"and {len(model.outputs)}"
        )
    return {"inputs": spec(model.inputs[0]), "outputs": spec(model.outputs[0]), "params": None}


def input_example(model: Any, example: np.ndarray) -> np.ndarray:
    """The first rows of ``example`` as the model's input dtype, checked against its shape."""
    tensor = model.inputs[0]
    rows = np.asarray(example[:INPUT_EXAMPLE_ROWS]).astype(
        np.dtype(getattr(tensor.dtype, "as_numpy_dtype", tensor.dtype))
    )
    expected = tuple(int(size) for size in tensor.shape[1:])
    if rows.ndim != len(tensor.shape) or rows.shape[1:] != expected or len(rows) == 0:
        raise ValueError(
            f"the input example has shape {rows.shape}; the model takes (-1, *{expected})"
        )
    return rows


def _refuse_pickles(path: Path) -> None:
    """MLflow pickles Keras' globally registered custom objects beside the model; loading them
    needs the code that defined them, which a deployment does not have."""
    pickles = sorted(str(p.relative_to(path)) for p in path.rglob("*.cloudpickle"))
    if pickles:
        raise ValueError(
            f"MLflow wrote pickled Python objects ({', '.join(pickles)}): loading them needs "
            "this repository's code. Do not register custom objects with "
            "keras.utils.register_keras_serializable; the saved model must be built from "
            "Keras' own layers"
        )


# ---------------------------------------------------------------------------- ONNX


def write_onnx(path: Path, example: np.ndarray) -> bool:
    """Add ``data/model.onnx`` and its probe to the model folder at ``path``, converted from the
    ``data/model.keras`` written there; True if written. Where the converter is missing (the
    Horovod environment) or the conversion fails or disagrees with Keras, one line says why and
    the folder is left as it was: serving falls back to TensorFlow, training does not fail."""
    data = path / DATA
    try:
        difference, probes = _convert_to_onnx(data, example)
    except Exception as exc:  # the converter may raise anything; the model itself is saved
        for name in (ONNX_FILE, ONNX_PROBE_FILE):
            (data / name).unlink(missing_ok=True)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        print(
            f"No ONNX export ({reason}): the model folder has {DATA}/{KERAS_FILE} only, which "
            "serving runs with TensorFlow (slower start, more memory per worker).",
            flush=True,
        )
        return False
    print(
        f"ONNX export: {DATA}/{ONNX_FILE} agrees with Keras within {difference:.1e} on "
        f"{probes} probe images.",
        flush=True,
    )
    return True


def _convert_to_onnx(data: Path, example: np.ndarray) -> tuple[float, int]:
    """Convert ``data/model.keras`` (as saved, outside any distribution strategy's variables),
    check ONNX Runtime against Keras on probe images, then write the ONNX file and the probe.
    Returns the largest difference and the number of probe images."""
    try:
        import onnxruntime
        import tf2onnx
    except ImportError as exc:
        raise ImportError(
            f"{exc.name} is not installed (pip install tf2onnx==1.17.0 onnxruntime==1.32.0)"
        ) from None
    import keras
    import tensorflow as tf

    keras_file = data / KERAS_FILE
    model = keras.models.load_model(keras_file, compile=False)
    spec = model.inputs[0]
    input_shape = [None, *(int(size) for size in spec.shape[1:])]

    def forward(images: Any) -> Any:
        return model(images, training=False)

    proto, _ = tf2onnx.convert.from_function(
        tf.function(forward),
        input_signature=(tf.TensorSpec(input_shape, tf.float32, name="images"),),
        opset=ONNX_OPSET,
    )
    onnx_bytes = proto.SerializeToString()
    probe = onnx_probe(model, example)
    expected = np.asarray(model(probe, training=False), dtype=np.float32)
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: probe})
    difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else np.inf
    if not difference <= ONNX_TOLERANCE:
        raise ValueError(
            f"ONNX Runtime's probabilities {got.shape} differ from Keras's {expected.shape} by "
            f"{difference:.1e}, more than {ONNX_TOLERANCE}"
        )
    (data / ONNX_FILE).write_bytes(onnx_bytes)
    with (data / ONNX_PROBE_FILE).open("wb") as file:
        np.savez(
            file,
            inputs=probe,
            probabilities=expected,
            keras_sha256=np.asarray(sha256_of(keras_file)),
        )
    return difference, len(probe)


def onnx_probe(model: Any, example: np.ndarray) -> np.ndarray:
    """Probe images in the model's input shape: the first real ones of ``example``, then as many
    seeded random ones (less certain answers, so a wrong weight shows in the probabilities)."""
    shape = tuple(int(size) for size in model.inputs[0].shape[1:])
    real = np.asarray(example[:ONNX_PROBE_ROWS], dtype=np.float32).reshape(-1, *shape)
    noise = np.random.default_rng(0).random((ONNX_PROBE_ROWS, *shape), dtype=np.float32)
    return np.concatenate([real, noise])


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex (serving/code/predictor.py computes the same)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- with MLflow


def write_with_mlflow(model: Any, path: Path, example: np.ndarray) -> None:
    import keras
    import mlflow.tensorflow
    import tensorflow as tf
    from mlflow.models import ModelSignature

    mlflow.tensorflow.save_model(
        model,
        str(path),
        signature=ModelSignature.from_dict(signature(model)),
        input_example=input_example(model, example),
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
    )


# ---------------------------------------------------------------------------- without MLflow


def write_without_mlflow(model: Any, path: Path, example: np.ndarray) -> None:
    """The files ``mlflow.tensorflow.save_model`` (MLflow 3.17) writes for a Keras model, for an
    environment without MLflow; MLflow's loaders read them (tests/training/test_model_export.py)."""
    import keras
    import tensorflow as tf
    import yaml

    data = path / DATA
    data.mkdir(parents=True)
    keras_file = data / KERAS_FILE
    model.save(keras_file)
    if keras.__version__.startswith("2."):  # tf.keras 2 (Horovod); it loads with Keras 3
        from training.keras_compat import rewrite_weights_for_keras3

        rewrite_weights_for_keras3(model, keras_file)
        requirements = [MLFLOW_REQUIREMENT, *KERAS3_REQUIREMENTS]
    else:
        requirements = [
            MLFLOW_REQUIREMENT,
            f"tensorflow=={tf.__version__}",
            f"keras=={keras.__version__}",
        ]
    (data / "keras_module.txt").write_text("tensorflow.keras")
    (data / "save_format.txt").write_text("tf")

    rows = input_example(model, example).tolist()
    (path / "input_example.json").write_text(json.dumps(rows))
    (path / "serving_input_example.json").write_text(json.dumps({"inputs": rows}, indent=2))

    python = platform.python_version()
    pinned = _pinned_versions(["pip", "setuptools", "wheel"])
    (path / "requirements.txt").write_text("\n".join(requirements))
    conda = {
        "channels": ["conda-forge"],
        "dependencies": [
            f"python={python}",
            f"pip<={pinned['pip']}" if "pip" in pinned else "pip",
            {"pip": requirements},
        ],
        "name": "mlflow-env",
    }
    (path / "conda.yaml").write_text(yaml.safe_dump(conda, default_flow_style=False))
    python_env = {
        "python": python,
        "build_dependencies": [f"{name}=={version}" for name, version in pinned.items()],
        "dependencies": ["-r requirements.txt"],
    }
    (path / "python_env.yaml").write_text(yaml.safe_dump(python_env, sort_keys=False))

    versions = dict(requirement.split("==") for requirement in requirements)
    mlmodel = {
        "flavors": {
            "python_function": {
                "data": DATA,
                "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
                "loader_module": "mlflow.tensorflow",
                "python_version": python,
            },
            "tensorflow": {
                "code": None,
                "data": DATA,
                "keras_version": versions["tensorflow"],  # MLflow records TensorFlow's version
                "model_type": "keras",
                "save_format": "tf",
            },
        },
        "mlflow_version": versions["mlflow"],
        "model_size_bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
        "model_uuid": uuid.uuid4().hex,
        "saved_input_example_info": {
            "artifact_path": "input_example.json",
            "serving_input_path": "serving_input_example.json",
            "type": "ndarray",
        },
        "signature": signature(model),
        "utc_time_created": str(datetime.now(timezone.utc).replace(tzinfo=None)),  # noqa: UP017 (Python < 3.11)
    }
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel, default_flow_style=False))


def _pinned_versions(names: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


# ---------------------------------------------------------------------------- atomic swap

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where unsupported."""
    function: Callable[..., int] | None = getattr(
        ctypes.CDLL(None, use_errno=True), "renameat2", None
    )
    if function is None:
        return False
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    if (
        function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
        == 0
    ):
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not on this file system
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def replace_atomically(new: Path, destination: Path) -> None:
    """Put the folder ``new`` at ``destination``; the old folder there is removed after.

    Where the kernel or file system cannot exchange two folders, the old one is renamed
    aside first: two renames in a row, the only moment ``destination`` is missing.
    """
    if not destination.exists():
        new.rename(destination)
        return
    if _exchange(new, destination):
        shutil.rmtree(new, ignore_errors=True)  # now the old model
        return
    aside = destination.with_name(destination.name + ".old")
    shutil.rmtree(aside, ignore_errors=True)
    destination.rename(aside)
    try:
        new.rename(destination)
    except BaseException:
        aside.rename(destination)
        raise
    shutil.rmtree(aside, ignore_errors=True)
