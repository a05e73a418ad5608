"""Batch scoring script of the batch deployment (serving/batch/deployment.yml): digit images in,
one CSV line per file out.

Azure ML's batch contract for model deployments: ``init()`` runs once in each worker process
and loads the model from ``AZUREML_MODEL_DIR``; ``run(mini_batch)`` gets a list of file paths
(``mini_batch_size`` of them, the last mini-batch fewer) and returns one element per file it
scored. With ``output_action: append_row`` the service appends every element of every
mini-batch to one output file (``output_file_name``, predictions.csv): a list element is
written as its text on its own line. Elements here are finished CSV lines, so the output is a
CSV file (without a header, as append_row writes none) whose columns are ``COLUMNS``:

    file,digit,probability,error
    00000.png,7,0.998712,
    notes.txt,,,"not an image: ..."

Images: PNG as people hold digits (any still image Pillow reads is accepted), of exactly the
size the model takes (28x28 for the built-in DNN and CNN: flat or 28x28x1 input, reshaped here),
white digit on black like MNIST. Grayscale (8 or 16 bit) is read as is; RGB and palette images
are converted to luminance; transparent pixels count as black background. A file that cannot be
scored (empty, not an image, another size, truncated or unreadable) gets a row with empty digit
and probability and the reason in ``error``, instead of failing its mini-batch: a failed
mini-batch counts every file in it against the deployment's ``error_threshold``, and is retried
``max_retries`` times first.

This folder is uploaded code: it needs numpy, Pillow and Keras (TensorFlow) and imports
nothing else from this repository. The model folder is the training contract: an MLflow model
whose Keras model is ``data/model.keras``; shapes come from the model, not from constants.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("file", "digit", "probability", "error")
MODEL_FILE = Path("data") / "model.keras"

logger = logging.getLogger("batch_score")
_scorer: DigitFiles | None = None


class ModelLoadError(RuntimeError):
    """The model folder is missing or unusable; the message says what was expected where."""


class ImageProblem(ValueError):
    """Why one file cannot be scored (the text of its row's ``error`` column)."""


# --------------------------------------------------------------------------- the model


def find_model_dir(path: str | os.PathLike[str] | None) -> Path:
    """The model folder: ``path`` itself, or its one subfolder holding ``data/model.keras``
    (Azure ML mounts a registered model one level down, ``<version>/model``)."""
    expected = f"an MLflow model folder with {MODEL_FILE.as_posix()} (training's model/)"
    if not path:
        raise ModelLoadError(f"AZUREML_MODEL_DIR is not set: point it at {expected}.")
    root = Path(path).expanduser()
    if (root / MODEL_FILE).is_file():
        return root
    if not root.is_dir():
        raise ModelLoadError(f"Model folder {root} does not exist: point at {expected}.")
    found = sorted(child for child in root.iterdir() if (child / MODEL_FILE).is_file())
    if len(found) == 1:
        return found[0]
    listing = ", ".join(sorted(p.name for p in root.iterdir())[:20]) or "nothing"
    what = "several model folders" if found else f"no {MODEL_FILE.as_posix()}"
    raise ModelLoadError(
        f"{root} holds {what} (found: {listing}): point AZUREML_MODEL_DIR at {expected}, or "
        "at the folder directly above it."
    )


def image_shape(input_shape: tuple[Any, ...]) -> tuple[int, int]:
    """(height, width) of the images a model with this input shape takes: a flat square
    ``(None, 784)``, or ``(None, 28, 28)`` / ``(None, 28, 28, 1)``."""
    dims = tuple(input_shape[1:])
    if len(dims) == 1 and dims[0] and math.isqrt(dims[0]) ** 2 == dims[0]:
        side = math.isqrt(dims[0])
        return side, side
    if len(dims) in (2, 3) and all(dims[:2]) and dims[2:] in ((), (1,)):
        return int(dims[0]), int(dims[1])
    raise ModelLoadError(
        f"The model takes input of shape {tuple(input_shape)}, not grayscale images "
        "(None, H*W), (None, H, W) or (None, H, W, 1): serve a model written by "
        "`python -m training.train`."
    )


class DigitFiles:
    """The Keras model and the image size it takes; scores a mini-batch of files."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.input_shape = tuple(model.input_shape)
        self.height, self.width = image_shape(self.input_shape)

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str] | None) -> DigitFiles:
        path = find_model_dir(model_dir) / MODEL_FILE
        import keras

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for a corrupt or foreign file
            raise ModelLoadError(
                f"Cannot load the Keras model {path}: {exc}. Register a model folder written "
                "by `python -m training.train`."
            ) from exc
        return cls(model)

    def read(self, path: str) -> np.ndarray:
        """The image at ``path`` as float32 (height, width) in [0, 1], or ImageProblem."""
        return read_image(path, self.height, self.width)

    def score_files(self, paths: list[str]) -> list[str]:
        """One CSV line per file, in the order given: its digit and probability, or why not."""
        images, scored, problems = [], [], {}
        for i, path in enumerate(paths):
            try:
                images.append(self.read(path))
                scored.append(i)
            except ImageProblem as exc:
                problems[i] = str(exc)
        lines = [""] * len(paths)
        for i, problem in problems.items():
            lines[i] = csv_line(os.path.basename(paths[i]), "", "", problem)
        if images:
            batch = np.stack(images).reshape((len(images), *self.input_shape[1:]))
            probabilities = np.asarray(self.model.predict_on_batch(batch), dtype=np.float64)
            digits = probabilities.argmax(axis=1)
            for row, i in enumerate(scored):
                best = probabilities[row, digits[row]]
                lines[i] = csv_line(os.path.basename(paths[i]), str(digits[row]), f"{best:.6f}", "")
        if problems:
            logger.warning("%d of %d files could not be scored", len(problems), len(paths))
        return lines


def csv_line(*fields: str) -> str:
    """One CSV record (quoted where a field needs it), without the line ending."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the files


def read_image(path: str, height: int, width: int) -> np.ndarray:
    """The image file as float32 (height, width) in [0, 1]; ImageProblem says what is wrong."""
    from PIL import Image, UnidentifiedImageError

    wanted = f"a {width}x{height} grayscale PNG, white digit on black as in MNIST"
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ImageProblem(f"cannot read the file ({exc.strerror}); expected {wanted}") from None
    if size == 0:
        raise ImageProblem(f"empty file (0 bytes); expected {wanted}")
    try:
        with Image.open(path) as image:
            kind = image.format or "image"
            if image.size != (width, height):
                w, h = image.size
                raise ImageProblem(
                    f"{kind} of {w}x{h} pixels; the model takes {width}x{height}: resize it "
                    f"(keeping the digit centred) to {wanted}"
                )
            image.load()  # decodes the pixels: truncated or corrupt data fails here
            return _pixels(image, kind)
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem(
            f"not an image Pillow can read ({size} bytes); expected {wanted}"
        ) from None
    except IsADirectoryError:
        raise ImageProblem(f"a folder, not a file; expected {wanted}") from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ImageProblem(f"unreadable image ({reason}); expected {wanted}") from None
    except Exception as exc:  # decoders raise SyntaxError, ValueError, EOFError, zlib errors...
        raise ImageProblem(
            f"unreadable image ({type(exc).__name__}: {exc}); expected {wanted}"
        ) from None


def _pixels(image: Any, kind: str) -> np.ndarray:
    """Luminance in [0, 1] from any 8- or 16-bit grayscale, palette or colour image."""
    from PIL import Image

    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.float32) / 255.0
    if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale PNG
        values = np.asarray(image, dtype=np.float32)
        if values.min() < 0 or values.max() > 65535:
            raise ImageProblem(f"{kind} in pixel mode {mode} has values outside 0-65535")
        return values / 65535.0
    if mode in ("1", "P", "PA", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
        if mode in ("PA", "LA", "RGBA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            image = Image.alpha_composite(black, rgba)
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    raise ImageProblem(
        f"{kind} in pixel mode {mode} is not supported: save it as 8-bit grayscale PNG"
    )


# --------------------------------------------------------------------------- the contract


def init() -> None:
    """Load the model once per worker process (Azure ML calls this before any run())."""
    global _scorer
    _scorer = DigitFiles.load(os.environ.get("AZUREML_MODEL_DIR"))
    logger.info(
        "model loaded: %dx%d images -> %s", _scorer.width, _scorer.height, _scorer.input_shape
    )


def run(mini_batch: list[str]) -> list[str]:
    """One CSV line (``COLUMNS``) per file of the mini-batch, in its order."""
    if _scorer is None:
        raise RuntimeError("run() was called before init(): the batch driver calls init() first")
    return _scorer.score_files([str(path) for path in mini_batch])
