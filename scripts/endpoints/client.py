"""Score a file of images against a local server or an Azure ML endpoint (client side).

``python -m scripts invoke`` uses this. Files: ``.npy`` (uint8 0-255 pixels, scaled here, or
floats already in [0, 1]; MNIST images flat or as rows, ``(n, 784)`` or ``(n, 28, 28)``, or one
image) or ``.json`` (``{"data": [...]}``, optionally with ``"labels"``, like
``serving/sample-digits.json``, or a bare list of images). Images are sent flat; their size is
the data's (``training.data``), checked here the way the server checks it. Batches larger than
the endpoint's limit are sent in pieces, as JSON ``{"data": [...]}`` or, with ``fmt="npy"``
(``invoke --format npy``), as the float32 ``.npy`` bytes of each piece with
``Content-Type: application/x-npy`` (a local server only: the SDK's invoke sends JSON files).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.code.npy_body import CONTENT_TYPE as NPY_TYPE
from serving.code.predictor import RANGE_HINT, BadRequest, ImageFormat, as_batch
from training.data import COLS, ROWS


class ClientError(Exception):
    """The file or the endpoint's answer is unusable; the message says why and what to do."""


@dataclass(frozen=True)
class Images:
    pixels: np.ndarray  # float32 (n, pixels) in [0, 1], each image flat
    labels: np.ndarray | None  # int (n,) when the file has them


def _image_format() -> ImageFormat:
    """The images this client sends: MNIST's, as training's data code reads them."""
    return ImageFormat((ROWS, COLS))


def _from_array(array: np.ndarray, source: Path) -> np.ndarray:
    form = _image_format()
    if array.shape in (form.flat, form.image):
        array = array[np.newaxis]
    if array.ndim == 3 and array.shape[1:] == form.image:
        array = array.reshape(len(array), form.pixels)
    if array.ndim != 2 or array.shape[1] != form.pixels or len(array) == 0:
        raise ClientError(
            f"{source} holds an array of shape {array.shape}; expected images of shape "
            f"(n, {form.pixels}) or (n, {ROWS}, {COLS})."
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype.kind not in "fiu":
        raise ClientError(f"{source} holds {array.dtype} values, not pixel numbers.")
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ClientError(
            f"{source} has values from {array.min()} to {array.max()}, outside [0, 1]. "
            f"{RANGE_HINT} (or save them as uint8)."
        )
    return array


def read_images(path: str | os.PathLike[str]) -> Images:
    """Load the images (and labels, when present) of a ``.npy`` or ``.json`` file."""
    source = Path(path)
    if not source.is_file():
        raise ClientError(f"{source} does not exist or is not a file.")
    if source.suffix == ".npy":
        try:
            array = np.load(source, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ClientError(f"{source} is not a readable .npy array: {exc}") from exc
        return Images(_from_array(array, source), None)
    if source.suffix != ".json":
        raise ClientError(f"{source}: use a .npy array or a .json file of images.")
    try:
        raw = json.loads(source.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClientError(f"{source} is not valid JSON: {exc}") from exc
    labels = None
    if isinstance(raw, dict):
        if "data" not in raw:
            raise ClientError(f'{source} has no "data" key holding the images.')
        labels = raw.get("labels")
        raw = raw["data"]
    if not isinstance(raw, list) or not raw:
        raise ClientError(f"{source} holds no list of images.")
    try:
        images = as_batch(raw, _image_format())
    except BadRequest as exc:
        raise ClientError(f"{source}: {exc.message}") from None
    pixels = images.reshape(len(images), -1)
    label_array = None
    if labels is not None:
        label_array = np.asarray(labels, dtype=np.int64)
        if label_array.shape != (len(pixels),):
            raise ClientError(f"{source} has {label_array.size} labels for {len(pixels)} images.")
    return Images(pixels, label_array)


def batches(pixels: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(pixels), size):
        yield pixels[start : start + size]


FORMATS = ("json", "npy")  # the request bodies the scoring script reads


def request_body(pixels: np.ndarray, *, no_code: bool = False) -> dict[str, Any]:
    key = "input_data" if no_code else "data"
    return {key: pixels.tolist()}


def npy_body(pixels: np.ndarray) -> bytes:
    """The images as a ``.npy`` request body: what ``numpy.save`` writes, float32, no pickle."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(pixels, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def post_local(url: str, body: dict[str, Any] | bytes, timeout: float = 30.0) -> Any:
    """POST a request to a local server (``serve``): a dict as JSON, bytes as a ``.npy`` body
    (:func:`npy_body`). ClientError with the server's message on 4xx/5xx."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ClientError(f"{url} is not an http://host:port/score URL.")
    if isinstance(body, bytes):
        data, content_type = body, NPY_TYPE
    else:
        data, content_type = json.dumps(body).encode(), "application/json"
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("POST", parts.path or "/score", data, {"Content-Type": content_type})
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
    except OSError as exc:
        raise ClientError(
            f"Cannot reach {url} ({exc}). Is the server running (python -m scripts serve)?"
        ) from exc
    finally:
        conn.close()
    if response.status != 200:
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text[:500]
        raise ClientError(f"{url} answered {response.status}: {message}")
    return json.loads(text)


def remote_poster(ml_client: Any, endpoint: str, deployment: str | None) -> Callable[[dict], Any]:
    """A poster that scores through the SDK (Entra ID token, optional deployment header)."""

    def post(body: dict[str, Any]) -> Any:
        with tempfile.TemporaryDirectory() as folder:
            request = Path(folder) / "request.json"
            request.write_text(json.dumps(body))
            text = ml_client.online_endpoints.invoke(
                endpoint_name=endpoint, deployment_name=deployment, request_file=str(request)
            )
        body = json.loads(text)
        return json.loads(body) if isinstance(body, str) else body

    return post


def score(
    images: Images,
    post: Callable[[Any], Any],
    *,
    max_batch: int,
    no_code: bool = False,
    fmt: str = "json",
) -> np.ndarray:
    """Probabilities ``(n, classes)`` for all images, in requests of at most ``max_batch``,
    each a JSON body (a dict) or, for ``fmt="npy"``, ``.npy`` bytes."""
    from scripts.endpoints.rollout import probabilities_from_response

    if fmt not in FORMATS:
        raise ClientError(f"Unknown request format {fmt!r}: use one of {', '.join(FORMATS)}.")
    parts = []
    for batch in batches(images.pixels, max_batch):
        body = npy_body(batch) if fmt == "npy" else request_body(batch, no_code=no_code)
        answer = post(body)
        try:
            parts.append(probabilities_from_response(answer))
        except (ValueError, TypeError) as exc:
            raise ClientError(f"Unexpected answer ({exc}): {str(answer)[:300]}") from exc
    return np.concatenate(parts)


def summary(probabilities: np.ndarray, labels: np.ndarray | None, limit: int = 20) -> str:
    """Human-readable lines: each image's digit and confidence, and accuracy when known."""
    digits = probabilities.argmax(axis=1)
    lines = []
    for i, (digit, p) in enumerate(zip(digits, probabilities.max(axis=1), strict=True)):
        if i == limit:
            lines.append(f"... {len(digits) - limit} more")
            break
        truth = "" if labels is None else f"  (label {labels[i]})"
        lines.append(f"image {i}: {digit}  {p:.1%}{truth}")
    if labels is not None:
        accuracy = float((digits == labels).mean())
        lines.append(f"{len(digits)} images, accuracy {accuracy:.2%}")
    return "\n".join(lines)
