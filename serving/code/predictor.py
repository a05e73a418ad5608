"""The MNIST digit classifier behind the endpoint: find and load the model, check requests, score.

Plain Python over numpy and ONNX Runtime (or TensorFlow), with no web server in sight:
``score.py`` adapts it to ``azmlinfsrv``; the tests and the benchmark use it directly.

The model is the folder that training writes (the training contract): an MLflow model
directory whose Keras model is ``data/model.keras`` and whose ``MLmodel`` signature publishes
its shapes: float32 images scaled to [0, 1] in (``[-1, 784]`` for the DNN, ``[-1, 28, 28, 1]``
for the CNN), float32 ``[-1, classes]`` softmax probabilities out. Nothing here knows those
numbers: :class:`ModelContract` reads them from the signature and checks that the Keras model
agrees. Requests send each image flat (all its pixels) or as rows of pixels, whatever the
model's own input shape; the images are reshaped to it.

Speed: where the folder has ``data/model.onnx`` (training converts the Keras model with
tf2onnx), ONNX Runtime runs it and the worker never imports TensorFlow: it starts in a
fraction of the time and memory, and one image costs about 20 us. Its answers are checked at
load against the probe that Keras answered at export (:class:`OnnxModel`). A folder without
one (a Horovod run, say) is served by TensorFlow, said in the log: the Keras model is called
through concrete functions traced once, for a ``[None, *input shape]`` float32 input and
(XLA-compiled) for a single image, with no Keras ``predict`` machinery per call. JSON is
read and written with orjson when it is installed; a batch of flat images, the commonest
request, is read by simdjson straight into doubles when that is installed (a third of orjson's
time for one image, a quarter for 256). A well-formed request is checked with a few vectorised
numpy operations; the slow, element-by-element walk only runs to explain what is wrong with a
bad request.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import struct
import threading
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

try:  # optional: the standard library reads and writes the same JSON, several times slower
    import orjson
except ImportError:
    orjson = None
try:  # optional: reads a batch of flat images straight into doubles (see _flat_batch)
    import simdjson
except ImportError:
    simdjson = None

MODEL_FILE = Path("data") / "model.keras"  # inside the model folder, per the training contract
SIGNATURE_FILE = "MLmodel"  # beside data/: its signature publishes the model's shapes
DEFAULT_MAX_BATCH = 512
# Upper bound on the JSON text of one pixel (a number written with full float precision and
# generous whitespace); bodies above max_batch images of these are refused before they are read.
MAX_BYTES_PER_PIXEL = 32
REQUEST_EXAMPLE = '{"data": [[0.0, 0.0, ..., 0.0]]}'  # used in messages


class ModelLoadError(Exception):
    """The model folder is missing or unusable; the message says what was expected where."""


class BadRequest(Exception):
    """A request the client must fix. ``status`` is the HTTP status (400 or 413)."""

    def __init__(self, message: str, *, status: int = 400, code: str = "BadRequest") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def to_body(self) -> dict[str, Any]:
        """The JSON error body: a stable machine-readable code and a sentence for people."""
        return {"error": {"code": self.code, "message": self.message}}


# --------------------------------------------------------------------------- model folder


def _is_model_dir(path: Path) -> bool:
    return (path / MODEL_FILE).is_file()


def find_model_dir(path: str | os.PathLike[str] | None) -> Path:
    """The model folder, given the folder itself or the folder above it.

    Azure ML mounts a registered model one level down: ``AZUREML_MODEL_DIR`` is
    ``.../azureml-models/<name>/<version>`` and the model folder is inside it (``model/``).
    Locally users point at ``outputs/model`` or at ``outputs``. Both are accepted; anything
    else is a :class:`ModelLoadError` that lists what was found.
    """
    expected = (
        f"an MLflow model folder with {MODEL_FILE.as_posix()} (what training writes as model/)"
    )
    if not path:
        raise ModelLoadError(
            f"AZUREML_MODEL_DIR is not set. Set it to {expected}, or to the folder that holds it."
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelLoadError(
            f"Model folder {root} (AZUREML_MODEL_DIR) does not exist. Point AZUREML_MODEL_DIR at "
            f"{expected}, or at the folder that holds it."
        )
    if _is_model_dir(root):
        return root
    candidates = sorted(
        child for child in root.iterdir() if child.is_dir() and _is_model_dir(child)
    )
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise ModelLoadError(
            f"{root} holds several model folders ({names}); point AZUREML_MODEL_DIR at the one "
            "to serve."
        )
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:20]
    listing = ", ".join(found) if found else "nothing"
    raise ModelLoadError(
        f"No model in {root}: expected {expected} there or in a folder directly below it, "
        f"found {listing}. Train with `python -m training.train` and point AZUREML_MODEL_DIR at "
        "its outputs/model folder."
    )


# --------------------------------------------------------------------------- the contract

Shape = tuple[int, ...]
TRAIN_HINT = "Serve a model folder written by `python -m training.train`."


@dataclass(frozen=True)
class ImageFormat:
    """The images a request may send: ``input_shape`` is one image as the model's input tensor
    holds it, batch axis left out (``(784,)`` for the DNN, ``(28, 28, 1)`` for the CNN).

    A request sends each image as ``pixels`` numbers or, where the image has rows, as
    ``image[0]`` lists of ``image[1]`` numbers (a flat square input is taken as a square image);
    either form is reshaped to ``input_shape``.
    """

    input_shape: Shape

    @cached_property
    def pixels(self) -> int:
        return math.prod(self.input_shape)

    @cached_property
    def flat(self) -> Shape:
        """One image sent flat: ``(pixels,)``."""
        return (self.pixels,)

    @cached_property
    def image(self) -> tuple[int, int] | None:
        """One image sent as rows: ``(rows, columns)``; None for a flat input that is not square."""
        if len(self.input_shape) > 1:
            return self.input_shape[0], self.input_shape[1]
        side = math.isqrt(self.pixels)
        return (side, side) if side * side == self.pixels else None


@dataclass(frozen=True)
class ModelContract(ImageFormat):
    """What the model takes and returns: its images (:class:`ImageFormat`) and ``classes``, the
    length of its probability vector. :meth:`DigitClassifier.load` reads them from the model
    folder's MLmodel signature, the contract that training publishes with the model."""

    classes: int

    @classmethod
    def from_shapes(
        cls, inputs: tuple[Any, ...], outputs: tuple[Any, ...], where: str
    ) -> ModelContract:
        """The contract of a model mapping ``inputs`` to ``outputs`` (batch axis first, as
        ``-1`` or None), or :class:`ModelLoadError` for shapes that are not images to classes."""
        shown = f"{_shown(inputs)} to {_shown(outputs)}"
        dims = tuple(inputs[1:])
        image = len(dims) in (1, 2) or (len(dims) == 3 and dims[2] == 1)
        if not (inputs and inputs[0] in (-1, None) and image and _positive(dims)):
            raise ModelLoadError(
                f"The model in {where} maps {shown}; the server takes grayscale images: input "
                f"(-1, pixels), (-1, rows, columns) or (-1, rows, columns, 1). {TRAIN_HINT}"
            )
        if not (len(outputs) == 2 and outputs[0] in (-1, None) and _positive(outputs[1:])):
            raise ModelLoadError(
                f"The model in {where} maps {shown}; the server answers class probabilities: "
                f"output (-1, classes). {TRAIN_HINT}"
            )
        return cls(tuple(int(d) for d in dims), int(outputs[1]))


def _positive(dims: tuple[Any, ...]) -> bool:
    return all(type(d) is int and d > 0 for d in dims)


def _shown(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("-1" if d is None else str(d) for d in shape) + ")"


def _signature_tensor(entry: Any, side: str, path: Path) -> tuple[Any, ...]:
    """The shape of the one float32 tensor that a signature's ``inputs`` or ``outputs`` holds."""
    try:
        (spec,) = json.loads(entry)
        shape, dtype = tuple(spec["tensor-spec"]["shape"]), spec["tensor-spec"]["dtype"]
    except (TypeError, ValueError, KeyError):
        shape, dtype = (), None
    if shape and all(type(d) is int for d in shape) and dtype == "float32":
        return shape
    what = f"a {dtype} tensor" if shape else _shorten(str(entry), 120)
    raise ModelLoadError(
        f"The signature in {path} gives the model's {side} as {what}; the server needs one "
        'float32 tensor, e.g. [{"type": "tensor", "tensor-spec": {"dtype": "float32", '
        f'"shape": [-1, ...]}}}}]. {TRAIN_HINT}'
    )


def read_signature(folder: Path) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The input and output shapes published by the model folder's ``MLmodel`` signature."""
    import yaml

    path = folder / SIGNATURE_FILE
    try:
        mlmodel = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{folder} has no {SIGNATURE_FILE} file: the model folder must be an MLflow model, "
            f"whose signature publishes the shapes the model takes and returns. {TRAIN_HINT}"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(
            f"Cannot read {path} ({type(exc).__name__}: {_shorten(str(exc), 200)}). {TRAIN_HINT}"
        ) from None
    signature = mlmodel.get("signature") if isinstance(mlmodel, dict) else None
    if not isinstance(signature, dict):
        raise ModelLoadError(
            f"{path} has no signature: the shapes the model takes and returns are the server's "
            "contract. Save the model with one (mlflow.tensorflow.save_model(..., signature=...)"
            f"). {TRAIN_HINT}"
        )
    return (
        _signature_tensor(signature.get("inputs"), "inputs", path),
        _signature_tensor(signature.get("outputs"), "outputs", path),
    )


# --------------------------------------------------------------------------- requests


RANGE_HINT = "Pixels must be scaled to [0, 1] as in training: divide 0-255 pixel values by 255."


def _is_number(value: object) -> bool:
    return type(value) in (int, float)  # bool is an int subclass but not a pixel value


def _shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: requests are not echoed."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _names(keys: list[str], limit: int = 5) -> str:
    """Up to ``limit`` key names, JSON-quoted and shortened, for a message."""
    shown = ", ".join(_shorten(json.dumps(key)) for key in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _describe_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return f"the string {json.dumps(value[:20])}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return repr(value)


def _pixel_problem(value: object, where: str) -> str | None:
    """Why one pixel value is unacceptable, or None if it is fine."""
    if not _is_number(value):
        return (
            f"{where} is {_describe_value(value)}, not a number. Send every pixel as a JSON number "
            "between 0 and 1."
        )
    if isinstance(value, float) and not math.isfinite(value):
        return (
            f"{where} is {value}: NaN and infinity are not pixel values. Send finite numbers "
            "between 0 and 1."
        )
    if not 0 <= value <= 1:  # type: ignore[operator]  # compared exactly, even for huge ints
        shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:20] + "..."
        return f"{where} is {shown}, outside [0, 1]. {RANGE_HINT}"
    return None


def _forms(form: ImageFormat) -> str:
    """The forms an image may take in a request, e.g. "784 numbers or 28 lists of 28 numbers"."""
    rows = form.image
    also = f" or {rows[0]} lists of {rows[1]} numbers" if rows else ""
    return f"{form.pixels} numbers{also}"


def _shape_hint(form: ImageFormat) -> str:
    return f"Each image is a list of {_forms(form)}."


def _rows_problem(image: list[Any], i: int, form: ImageFormat) -> str | None:
    """Why image ``i``, sent as rows, is unacceptable, or None if it is fine."""
    hint = _shape_hint(form)
    if form.image is None:
        return f"Image {i} is a list of lists; this model takes flat images. {hint}"
    rows, columns = form.image
    if len(image) != rows:
        return f"Image {i} has {len(image)} rows; a 2-D image has {rows}. {hint}"
    for r, row in enumerate(image):
        if len(row) != columns:
            return f"Row {r} of image {i} has {len(row)} values, expected {columns}. {hint}"
        for c, value in enumerate(row):
            problem = _pixel_problem(value, f"Pixel [{r}][{c}] of image {i}")
            if problem:
                return problem
    return None


def _image_problem(image: object, i: int, form: ImageFormat) -> str | None:
    """Why image ``i`` of the batch is unacceptable, or None if it is fine."""
    if not isinstance(image, list):
        return f"Image {i} is {_describe_value(image)}, not a list. {_shape_hint(form)}"
    if image and all(isinstance(row, list) for row in image):
        return _rows_problem(image, i, form)
    if any(isinstance(value, list) for value in image):
        return f"Image {i} mixes numbers and lists. {_shape_hint(form)}"
    if len(image) != form.pixels:
        rows = form.image
        size = f" ({rows[0]}x{rows[1]})" if rows else ""
        return (
            f"Image {i} has {len(image)} values, expected {form.pixels}{size}. {_shape_hint(form)}"
        )
    for p, value in enumerate(image):
        problem = _pixel_problem(value, f"Pixel {p} of image {i}")
        if problem:
            return problem
    return None


def _shape_name(image: list[Any], form: ImageFormat) -> str:
    if isinstance(image[0], list) and form.image:
        rows, columns = form.image
        return f"{rows}x{columns} ({rows} lists of {columns} numbers)"
    return f"flat ({form.pixels} numbers)"


def _mixed_shapes(data: list[Any], form: ImageFormat) -> str | None:
    """Which image first differs in shape from image 0, for a batch of valid images."""
    first = _shape_name(data[0], form)
    for i, image in enumerate(data[1:], start=1):
        if _shape_name(image, form) != first:
            rows, columns = form.image or (0, 0)  # two shapes: the model takes rows
            return (
                f"Image 0 is {first} but image {i} is {_shape_name(image, form)}: all the "
                f"images of one request must have the same shape. Send every image as "
                f"{form.pixels} numbers, or every image as {rows} lists of {columns} numbers."
            )
    return None


def _explain_bad_data(data: list[Any], form: ImageFormat) -> BadRequest:
    """Walk the batch to say precisely what is wrong (only runs for bad requests)."""
    if all(_is_number(v) for v in data):
        if len(data) == form.pixels:
            return BadRequest(
                f'"data" is a single image, but it must be a batch: wrap it in a list, '
                f'{{"data": [[...{form.pixels} numbers...]]}}.',
                code="InvalidShape",
            )
        return BadRequest(
            f'"data" is a list of {len(data)} numbers; it must be a list of images, each '
            f"{_forms(form)}, e.g. {REQUEST_EXAMPLE}.",
            code="InvalidShape",
        )
    for i, image in enumerate(data):
        problem = _image_problem(image, i, form)
        if problem:
            code = "InvalidValue" if problem.startswith("Pixel") else "InvalidShape"
            return BadRequest(problem, code=code)
    mixed = _mixed_shapes(data, form)
    if mixed:
        return BadRequest(mixed, code="InvalidShape")
    return BadRequest(  # the fast path refused something the walk accepts: say what we can
        f'"data" could not be read as a batch of images. Send {REQUEST_EXAMPLE}.',
        code="InvalidShape",
    )


def as_batch(data: list[Any], form: ImageFormat) -> np.ndarray:
    """The batch as float32 ``(n, *form.input_shape)``, or :class:`BadRequest` explaining
    what is wrong. Each image may be sent flat or as rows (``form.image``)."""
    try:
        array = np.asarray(data)  # dtype inferred: any non-number shows up as a non-numeric dtype
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged, too deep, huge ints
        raise _explain_bad_data(data, form) from None
    if array.dtype.kind not in "fiu":
        raise _explain_bad_data(data, form)
    shape = array.shape[1:]
    if shape != form.flat and shape != form.image:  # the two forms a request may use
        raise _explain_bad_data(data, form)
    if shape != form.input_shape:
        array = array.reshape(len(array), *form.input_shape)
    # One pass each; NaN fails both comparisons, so this also refuses NaN and infinities.
    if not (array.min() >= 0 and array.max() <= 1):
        raise _explain_bad_data(data, form)
    return array.astype(np.float32, copy=False)


def _decode(body: bytes) -> Any:
    """The JSON value of a body. orjson (10x faster) takes well-formed bodies; anything it
    refuses goes to the standard library, which accepts NaN and Infinity (refused later with a
    precise message) or says exactly what is wrong."""
    if orjson is not None:
        try:
            return orjson.loads(body)
        except ValueError:  # orjson.JSONDecodeError
            pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"The request body is not UTF-8 text (byte 0x{body[exc.start]:02x} at offset "
            f"{exc.start}). Send JSON encoded as UTF-8, e.g. {REQUEST_EXAMPLE}, with "
            "Content-Type: application/json.",
            code="NotUtf8",
        ) from None
    if not text.strip():
        raise BadRequest(
            f"The request body is empty. Send a JSON object such as {REQUEST_EXAMPLE}.",
            code="EmptyBody",
        )
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"The request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}). Send a JSON object such as {REQUEST_EXAMPLE}.",
            code="NotJson",
        ) from None
    except RecursionError:
        raise BadRequest(
            "The request body nests JSON arrays or objects too deeply. Send a batch of images: "
            f"{REQUEST_EXAMPLE}.",
            code="InvalidShape",
        ) from None
    except ValueError as exc:  # valid syntax the parser will not read: a number too long
        reason = "an integer of more than 4,300 digits" if "digits" in str(exc) else str(exc)
        raise BadRequest(
            f"The request body is JSON that cannot be read: it holds {reason[:80]}. Pixels are "
            f"numbers between 0 and 1: {REQUEST_EXAMPLE}.",
            code="NotJson",
        ) from None
    return payload


def parse_request(
    body: bytes, form: ImageFormat, *, max_batch: int = DEFAULT_MAX_BATCH
) -> np.ndarray:
    """Decode and check a request body; return the images as float32 in [0, 1], shaped as the
    model takes them: ``(n, *form.input_shape)``.

    Raises :class:`BadRequest` with a message that says what is wrong and how to fix it.
    """
    images = _flat_batch(body, form, max_batch)
    if images is not None:
        return images
    payload = _decode(body)
    if not isinstance(payload, dict):
        raise BadRequest(
            f"The request body is a JSON {type(payload).__name__}, not an object. Send "
            f'{{"data": [...]}}, a batch of images: {REQUEST_EXAMPLE}.',
            code="WrongKeys",
        )
    if set(payload) != {"data"}:
        unknown = sorted(set(payload) - {"data"})
        hint = ""
        if "input_data" in payload or "inputs" in payload or "instances" in payload:
            hint = ' (that is the MLflow/no-code request format; this endpoint takes "data")'
        what = f"unknown key(s) {_names(unknown)}{hint}" if unknown else ""
        missing = 'no "data" key' if "data" not in payload else ""
        problems = " and ".join(p for p in (missing, what) if p)
        raise BadRequest(
            f'The request has {problems}. Send exactly one key, "data", holding the batch of '
            f"images: {REQUEST_EXAMPLE}.",
            code="WrongKeys",
        )
    data = payload["data"]
    if not isinstance(data, list):
        raise BadRequest(
            f'"data" is {_describe_value(data)}; it must be a list of images: {REQUEST_EXAMPLE}.',
            code="InvalidShape",
        )
    if not data:
        raise BadRequest(
            f'"data" is empty. Send at least one image: {REQUEST_EXAMPLE}.', code="EmptyBatch"
        )
    if not isinstance(data[0], list):  # e.g. one image sent without the batch around it
        raise _explain_bad_data(data, form)
    if len(data) > max_batch:
        raise batch_too_large(len(data), max_batch)
    if _numbers_only(body):  # the common case, in one C loop over the pixels
        images = _plain_batch(data, form)
        if images is not None:
            return images
    # JSON true/false/null inside "data" would be coerced to numbers by numpy: refuse them here.
    elif b"true" in body or b"false" in body or b"null" in body:
        raise _explain_bad_data(data, form)
    return as_batch(data, form)


_parsers = threading.local()  # one simdjson parser per worker thread: a parser is not shared


def _flat_batch(body: bytes, form: ImageFormat, max_batch: int) -> np.ndarray | None:
    """The commonest request, read without a Python number per pixel: ``{"data": [image, ...]}``
    of 1 to ``max_batch`` flat images, ``form.pixels`` numbers each, all in [0, 1]. simdjson
    copies the numbers straight into doubles, then the images are float32
    ``(n, *form.input_shape)``, as :func:`parse_request`'s other paths give them.

    None for anything else, and whenever simdjson is not installed: :func:`parse_request` then
    reads the body the careful way, which also explains what is wrong. Exactly this form, no
    near miss: the body starts with its object (simdjson would skip a UTF-8 byte order mark,
    which the careful path refuses) and holds numbers and brackets only (:func:`_numbers_only`:
    one quoted string, the key; no true, false or null), so its ``[`` are all arrays; there are
    the batch's and one per image, and each of the ``n`` items of ``data`` is an array of
    ``form.pixels`` items, so no image holds another array, only numbers.
    """
    if simdjson is None or body[:1] != b"{" or not _numbers_only(body):
        return None  # a body that starts otherwise (whitespace, or a BOM simdjson would skip)
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    document = data = None
    try:
        document = parser.parse(body)
        data = document["data"]
        count = len(data)
        if not 0 < count <= max_batch or body.count(b"[") != count + 1:
            return None
        for index in range(count):
            if len(data[index]) != form.pixels:  # TypeError for a number in place of an image
                return None
        doubles = data.as_buffer(of_type="d")
    except (ValueError, TypeError, KeyError, RuntimeError):  # not JSON, or not this form
        _parsers.parser = None  # a fresh parser next time, whatever state this one is in
        return None
    finally:
        del document, data  # a parser parses again only once nothing refers to its last document
    return _checked_images(doubles, count, form)


def _checked_images(doubles: Any, count: int, form: ImageFormat) -> np.ndarray | None:
    """``count`` images of ``form.pixels`` C doubles each (a buffer) as float32
    ``(count, *form.input_shape)``, or None if a value is outside [0, 1].

    In as few numpy calls as it takes (each costs microseconds in a worker whose caches the
    rest of the request has evicted): the range check is one reduction over the doubles' bits
    (see ``_ONE_BITS``), the conversion one ``astype`` of the buffer already in its shape.
    """
    if np.maximum.reduce(np.frombuffer(doubles, np.uint64)) > _ONE_BITS:
        return None
    return np.ndarray((count, *form.input_shape), np.float64, doubles).astype(np.float32)


def _numbers_only(body: bytes) -> bool:
    """True when a body whose one key is "data" can hold nothing but numbers and lists there:
    no quote beyond the key's two, and none of the letters of true, false and null (each
    holds u, l or s; a number holds none). Single-byte searches (memchr), much faster than
    counting or searching for the words; a False only sends the body down the careful path."""
    key_ends = body.find(b'"', body.find(b'"') + 1)
    if key_ends < 0 or body.find(b'"', key_ends + 1) >= 0:
        return False
    return not (b"u" in body or b"l" in body or b"s" in body)


def _plain_batch(data: list[Any], form: ImageFormat) -> np.ndarray | None:
    """The batch as float32 ``(n, *form.input_shape)`` when every image is ``form.pixels``
    numbers, or every image ``form.image`` rows of numbers, all in [0, 1]; else None (and
    :func:`as_batch` explains). Each image is packed as C doubles in one ``struct`` call (about
    twice as fast as ``numpy.asarray`` over the lists). Only for values known to be numbers
    (:func:`_numbers_only`): ``struct`` would also take booleans as numbers."""
    pixels = form.pixels
    image = _doubles(pixels)
    try:
        if all(type(values) is list and len(values) == pixels for values in data):
            packed = b"".join([image.pack(*values) for values in data])
        elif form.image and _all_rows(data, *form.image):
            chain = itertools.chain.from_iterable
            packed = b"".join([image.pack(*chain(rows)) for rows in data])
        else:
            return None
    except (struct.error, TypeError, OverflowError):  # a list in place of a pixel, a huge int
        return None
    return _checked_images(packed, len(data), form)  # float64 first: the range check is exact


# The bits of the double 1.0. Read as unsigned integers, the doubles in [0, 1] (+0.0 to 1.0)
# are exactly the bit patterns from 0 to this one, in order; everything else lies above it:
# negative numbers and -0.0 (sign bit set), numbers over 1, infinities and NaN. So a single
# maximum checks the range where min() and max() took two passes. (-0.0, a valid pixel, takes
# the careful path, which accepts it.)
_ONE_BITS = 0x3FF0_0000_0000_0000


@lru_cache(maxsize=4)
def _doubles(count: int) -> struct.Struct:
    """Packs ``count`` numbers as C doubles."""
    return struct.Struct(f"{count}d")


def _all_rows(data: list[Any], rows: int, columns: int) -> bool:
    """Every image is ``rows`` lists of ``columns`` values."""
    return all(
        type(image) is list
        and len(image) == rows
        and all(type(row) is list and len(row) == columns for row in image)
        for image in data
    )


def batch_too_large(count: int | None, max_batch: int) -> BadRequest:
    """The 413 for a batch (or body) over the endpoint's limit."""
    what = f"A batch of {count} images is" if count is not None else "The request body is"
    return BadRequest(
        f"{what} over this endpoint's limit of {max_batch} images per request "
        f"(SCORING_MAX_BATCH). Split it into requests of at most {max_batch} images.",
        status=413,
        code="BatchTooLarge",
    )


def max_body_bytes(max_batch: int, form: ImageFormat) -> int:
    """The largest request body worth reading for a batch limit (larger ones get a 413)."""
    return max_batch * form.pixels * MAX_BYTES_PER_PIXEL + 4096


# --------------------------------------------------------------------------- the classifier


@dataclass(frozen=True)
class Prediction:
    """Scores for a batch: the most likely class of each image and all its probabilities."""

    labels: np.ndarray  # (n,) int
    probabilities: np.ndarray  # (n, classes) float32

    def to_body(self) -> dict[str, Any]:
        return {"predictions": self.labels.tolist(), "probabilities": self.probabilities.tolist()}

    def to_json(self) -> bytes:
        """The response body as JSON (float32 probabilities in their shortest exact form)."""
        if orjson is None:
            return json.dumps(self.to_body()).encode()
        body = {"predictions": self.labels, "probabilities": self.probabilities}
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


# What training writes beside the Keras model where it can (training/export.py): the model as
# ONNX, and probe images with the Keras model's probabilities and the Keras file's SHA-256.
ONNX_FILE = Path("data") / "model.onnx"
ONNX_PROBE_FILE = Path("data") / "onnx_probe.npz"
ONNX_TOLERANCE = 1e-5  # largest difference from Keras's probabilities on the probe images
# Threads per worker (deployment.yml), read by TensorFlow itself and here for ONNX Runtime.
INTRA_OP_THREADS_ENV = "TF_NUM_INTRAOP_THREADS"
INTER_OP_THREADS_ENV = "TF_NUM_INTEROP_THREADS"


class ScoringModel(Protocol):
    """The loaded model, whatever runs it: float32 images ``(n, *input_shape)`` in,
    probabilities ``(n, classes)`` out. ``runtime`` names what runs it, for the log."""

    runtime: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def _onnx_hint(folder: Path) -> str:
    return (
        "Re-run training to write a fresh model folder, or delete "
        f"{folder / ONNX_FILE} to serve {MODEL_FILE.as_posix()} with TensorFlow."
    )


def _threads(name: str) -> int:
    """A thread count from the environment; 0 (the default) lets the runtime choose."""
    raw = os.environ.get(name, "0")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ModelLoadError(
            f"{name}={raw!r} must be a whole number of threads per worker (0 lets the runtime "
            "choose). Fix it in the deployment's environment_variables."
        )
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxModel:
    """``data/model.onnx`` run by ONNX Runtime on the CPU, in a worker without TensorFlow.

    :meth:`load` refuses (:class:`ModelLoadError`) a file ONNX Runtime cannot read, one whose
    shapes are not the signature's, and one that does not compute what ``data/model.keras``
    does: it must have been converted from that very file (its SHA-256, recorded in the probe)
    and give the probabilities Keras gave for the probe images, within ``ONNX_TOLERANCE``.
    Threads: ``TF_NUM_INTRAOP_THREADS`` per worker, the setting TensorFlow reads.
    """

    runtime = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self.session = session
        self._input = session.get_inputs()[0].name
        self._outputs = [session.get_outputs()[0].name]
        self.agreement = math.nan  # the largest difference from Keras on the probe, once checked

    @classmethod
    def load(cls, folder: Path, inputs: Shape, outputs: Shape) -> OnnxModel:
        import onnxruntime

        path = folder / ONNX_FILE
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = _threads(INTRA_OP_THREADS_ENV)
        options.inter_op_num_threads = _threads(INTER_OP_THREADS_ENV)
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores
        try:
            session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises its own types for a corrupt file
            raise ModelLoadError(
                f"Cannot load the ONNX model {path} ({type(exc).__name__}: "
                f"{_shorten(str(exc), 300)}). {_onnx_hint(folder)}"
            ) from None
        model = cls(session)
        model._check_shapes(folder, inputs, outputs)
        model._check_probe(folder)
        return model

    def _check_shapes(self, folder: Path, inputs: Shape, outputs: Shape) -> None:
        def shape(tensors: list[Any]) -> tuple[Any, ...] | None:
            if len(tensors) != 1 or tensors[0].type != "tensor(float)":
                return None
            return tuple(d if type(d) is int else -1 for d in tensors[0].shape)

        own = shape(self.session.get_inputs()), shape(self.session.get_outputs())
        if own != (tuple(inputs), tuple(outputs)):
            found = " to ".join(_shown(s) if s else "not one float32 tensor" for s in own)
            raise ModelLoadError(
                f"The signature in {folder / SIGNATURE_FILE} says the model maps "
                f"{_shown(inputs)} to {_shown(outputs)}, but {folder / ONNX_FILE} maps "
                f"{found}: the folder's parts do not belong together. {_onnx_hint(folder)}"
            )

    def _check_probe(self, folder: Path) -> None:
        path = folder / ONNX_PROBE_FILE
        try:
            with np.load(path, allow_pickle=False) as probe:
                images = probe["inputs"].astype(np.float32)
                expected, source = probe["probabilities"], str(probe["keras_sha256"])
        except FileNotFoundError:
            raise ModelLoadError(
                f"{folder / ONNX_FILE} has no {ONNX_PROBE_FILE.name} beside it: without the "
                "probe that Keras answered at export, nothing shows that it computes what "
                f"{MODEL_FILE.as_posix()} does. {_onnx_hint(folder)}"
            ) from None
        except Exception as exc:  # not a zip, a missing array, a pickled object
            raise ModelLoadError(
                f"Cannot read the ONNX probe {path} ({type(exc).__name__}: "
                f"{_shorten(str(exc), 200)}). {_onnx_hint(folder)}"
            ) from None
        if source != _sha256(folder / MODEL_FILE):
            raise ModelLoadError(
                f"{folder / ONNX_FILE} was converted from another {MODEL_FILE.name} than the "
                f"one beside it (SHA-256 {source[:12]}...): it would serve a different model. "
                f"{_onnx_hint(folder)}"
            )
        try:
            got = self(images)
        except Exception as exc:  # a probe of the wrong shape
            raise ModelLoadError(
                f"{folder / ONNX_FILE} cannot score its probe images {images.shape} "
                f"({type(exc).__name__}: {_shorten(str(exc), 200)}). {_onnx_hint(folder)}"
            ) from None
        difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else 1.0
        if not difference <= ONNX_TOLERANCE:
            raise ModelLoadError(
                f"ONNX Runtime's probabilities for the {len(images)} probe images of {path} "
                f"differ from the Keras model's by {difference:.1e} (at most {ONNX_TOLERANCE} "
                f"allowed): {folder / ONNX_FILE} does not compute what "
                f"{MODEL_FILE.as_posix()} does. {_onnx_hint(folder)}"
            )
        self.agreement = difference

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(self._outputs, {self._input: images})[0]


class KerasModel:
    """The Keras model behind concrete TensorFlow functions: for folders without ONNX.

    Traced once here: calling them skips tf.function's per-call argument matching. Any batch
    size goes through the first; single images, the commonest request, through an
    XLA-compiled one for that one shape (a third less per-call overhead; XLA would recompile
    for every new batch size, so only this one).
    """

    runtime = "tensorflow"

    def __init__(self, keras_model: Any, input_shape: Shape) -> None:
        import tensorflow as tf

        self.keras_model = keras_model

        def forward(images: Any) -> Any:
            return keras_model(images, training=False)

        shape = list(input_shape)
        self._forward = tf.function(forward).get_concrete_function(
            tf.TensorSpec([None, *shape], tf.float32, name="images")
        )
        self._forward_one = tf.function(forward, jit_compile=True).get_concrete_function(
            tf.TensorSpec([1, *shape], tf.float32, name="image")
        )

    @classmethod
    def load(cls, folder: Path, inputs: Shape, outputs: Shape) -> KerasModel:
        """``data/model.keras``, which must map the signature's shapes."""
        path = folder / MODEL_FILE
        import keras

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for a corrupt or foreign file
            raise ModelLoadError(
                f"Cannot load the Keras model {path}: {exc}. Re-run training to write a fresh "
                "model folder, or point AZUREML_MODEL_DIR at one."
            ) from exc
        own = tuple(model.input_shape), tuple(model.output_shape)
        if (_shown(own[0]), _shown(own[1])) != (_shown(inputs), _shown(outputs)):
            raise ModelLoadError(
                f"The signature in {folder / SIGNATURE_FILE} says the model maps "
                f"{_shown(inputs)} to {_shown(outputs)}, but {path} maps {_shown(own[0])} to "
                f"{_shown(own[1])}: the folder's two halves do not belong together. {TRAIN_HINT}"
            )
        return cls(model, tuple(int(d) for d in inputs[1:]))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        forward = self._forward_one if len(images) == 1 else self._forward
        return forward(images).numpy()


def load_model(folder: Path, inputs: Shape, outputs: Shape) -> ScoringModel:
    """ONNX Runtime where the folder has ``data/model.onnx`` and onnxruntime is installed,
    otherwise TensorFlow; one line in the log says which, and why."""
    onnx = folder / ONNX_FILE
    if not onnx.is_file():
        reason = f"{folder} has no {ONNX_FILE.as_posix()} (trained where tf2onnx is missing?)"
    else:
        try:
            model = OnnxModel.load(folder, inputs, outputs)
        except ImportError as exc:  # an environment without onnxruntime
            reason = f"onnxruntime cannot be imported ({exc})"
        else:
            print(
                f"Scoring with ONNX Runtime: {onnx} agrees with {MODEL_FILE.name} within "
                f"{model.agreement:.1e} on its probe images.",
                flush=True,
            )
            return model
    print(
        f"Scoring with TensorFlow: {reason}. A model folder with ONNX starts faster and needs "
        "far less memory per worker: train where tf2onnx and onnxruntime are installed.",
        flush=True,
    )
    return KerasModel.load(folder, inputs, outputs)


class DigitClassifier:
    """The loaded model (:class:`OnnxModel` or :class:`KerasModel`) and its contract: what it
    takes and returns, which :meth:`load` reads from the folder's MLmodel signature."""

    def __init__(
        self,
        model: ScoringModel,
        contract: ModelContract,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self.model = model
        self.contract = contract  # the published API is built from these shapes

    @property
    def runtime(self) -> str:
        """What runs the model: "onnxruntime" or "tensorflow"."""
        return self.model.runtime

    @classmethod
    def from_keras(cls, keras_model: Any, *, max_batch: int = DEFAULT_MAX_BATCH) -> DigitClassifier:
        """A Keras model in memory, run by TensorFlow, its contract read from its own shapes."""
        contract = ModelContract.from_shapes(
            tuple(keras_model.input_shape), tuple(keras_model.output_shape), "the Keras model"
        )
        return cls(KerasModel(keras_model, contract.input_shape), contract, max_batch=max_batch)

    @classmethod
    def load(
        cls, model_dir: str | os.PathLike[str] | None, *, max_batch: int = DEFAULT_MAX_BATCH
    ) -> DigitClassifier:
        """Load from the model folder or the folder above it. The shapes are those its MLmodel
        signature publishes; the model must have the same (:class:`ModelLoadError`)."""
        folder = find_model_dir(model_dir)
        inputs, outputs = read_signature(folder)
        contract = ModelContract.from_shapes(inputs, outputs, str(folder))
        return cls(load_model(folder, inputs, outputs), contract, max_batch=max_batch)

    def warm_up(self) -> None:
        """Run the model once on a single image and on a full batch, before any request."""
        for n in (1, self.max_batch):
            self.predict_proba(np.zeros((n, *self.contract.input_shape), np.float32))

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, classes)`` for float32 images ``(n, *input_shape)`` in [0, 1]."""
        return self.model(images)

    def predict(self, images: np.ndarray) -> Prediction:
        probabilities = self.model(images)  # predict_proba's, one call less per request
        return Prediction(probabilities.argmax(axis=1), probabilities)

    def parse(self, body: bytes) -> np.ndarray:
        """A request body's images, shaped for the model; :class:`BadRequest` for bad input."""
        return parse_request(body, self.contract, max_batch=self.max_batch)

    def score(self, body: bytes) -> bytes:
        """A request body in, the JSON response body out; :class:`BadRequest` for bad input."""
        return self.predict(self.parse(body)).to_json()
