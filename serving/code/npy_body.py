"""Binary request bodies: a batch of images as ``.npy`` bytes (``Content-Type: application/x-npy``).

The body is what ``numpy.save`` writes for an array of shape ``(n, pixels)`` or
``(n, rows, columns)`` (the model's own image, :class:`predictor.ImageFormat`), dtype float32
with every value in [0, 1], or uint8 0-255 (scaled by 1/255 here, as training scales its
pixels). It is read without ``numpy.load``: the header by ``numpy.lib.format``'s header reader
(a literal, never code), the pixels by ``numpy.frombuffer`` over the bytes after it. Object
arrays (pickled Python objects) are refused from their header, before any byte of their data
is looked at: nothing here can unpickle. Every other problem is a :class:`predictor.BadRequest`
that says what is wrong and how to fix it, like the JSON path's: the same batch limit (413),
a body-size limit of its own (:func:`max_npy_body_bytes`).
"""

from __future__ import annotations

import io

import numpy as np
from numpy.lib import format as npy_format

try:  # as serving.code.npy_body (tests, benchmarks), or beside score.py (the server)
    from .predictor import RANGE_HINT, BadRequest, ImageFormat, batch_too_large
except ImportError:
    from predictor import RANGE_HINT, BadRequest, ImageFormat, batch_too_large

CONTENT_TYPE = "application/x-npy"
MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 4096  # numpy.save writes 128 bytes for a batch of images
VERSIONS = ((1, 0), (2, 0))  # what numpy.save writes (3.0 only for non-ASCII field names)
DTYPES = "float32 (values in [0, 1]) or uint8 (0-255, scaled by 1/255)"


def example(form: ImageFormat) -> str:
    """How to send a batch, for messages: the Python that writes a valid body."""
    return (
        f"numpy.save(buffer, images) of an array shaped (n, {form.pixels})"
        + (f" or (n, {form.image[0]}, {form.image[1]})" if form.image else "")
        + f", dtype {DTYPES}"
    )


def max_npy_body_bytes(max_batch: int, form: ImageFormat) -> int:
    """The largest ``.npy`` body worth reading: a header and ``max_batch`` float32 images."""
    return MAX_HEADER_BYTES + max_batch * form.pixels * np.dtype(np.float32).itemsize


def _bad(message: str, form: ImageFormat, code: str = "InvalidNpy") -> BadRequest:
    return BadRequest(f"{message} Send {example(form)}.", code=code)


def _header(stream: io.BytesIO, form: ImageFormat) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from the header, or :class:`BadRequest`."""
    magic = stream.read(len(MAGIC))
    if magic != MAGIC:
        hint = " (it looks like JSON: send it with Content-Type: application/json)"
        hint = hint if magic.lstrip()[:1] in (b"{", b"[") else ""
        shown = "nothing" if not magic else repr(magic[:8])
        raise _bad(
            f"The request body is not a .npy array{hint}: it starts with {shown}, not the "
            f".npy magic string {MAGIC!r} (Content-Type: {CONTENT_TYPE}).",
            form,
            code="NotNpy",
        )
    version = tuple(stream.read(2))
    if version not in VERSIONS:
        raise _bad(
            f"The .npy header has format version {'.'.join(map(str, version)) or 'nothing'}; "
            "this endpoint reads versions 1.0 and 2.0, what numpy.save writes.",
            form,
        )
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    try:
        return readers[version](stream, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, SyntaxError, TypeError, OverflowError, MemoryError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _bad(f"The .npy header cannot be read: {text[:160]}.", form) from None


def _checked_dtype(dtype: np.dtype, form: ImageFormat) -> np.dtype:
    if dtype.hasobject:
        raise _bad(
            f"The .npy array holds Python objects (dtype {dtype.str}), which would have to be "
            "unpickled: this endpoint never unpickles a request.",
            form,
            code="InvalidDtype",
        )
    if dtype.fields is None and dtype.kind == "f" and dtype.itemsize == 4:
        return dtype
    if dtype == np.uint8:
        return dtype
    raise BadRequest(
        f"The .npy array has dtype {dtype.str!r} ({dtype}); this endpoint takes {DTYPES}. "
        "Convert it before saving, e.g. images.astype(numpy.float32).",
        code="InvalidDtype",
    )


def _checked_count(shape: tuple[int, ...], form: ImageFormat, max_batch: int) -> int:
    """The number of images of a well-shaped array, or :class:`BadRequest`."""
    if len(shape) >= 2 and shape[0] >= 0 and (shape[1:] in (form.flat, form.image)):
        count = shape[0]
    else:
        single = shape == form.flat or shape == form.image
        hint = f" (one image: reshape it to (1, {', '.join(map(str, shape))}))" if single else ""
        shown = str(shape) if len(str(shape)) <= 60 else f"{str(shape)[:56]}...)"
        raise _bad(
            f"The .npy array has shape {shown}{hint}; a batch of this model's images has shape "
            f"(n, {form.pixels})"
            + (f" or (n, {form.image[0]}, {form.image[1]})." if form.image else "."),
            form,
            code="InvalidShape",
        )
    if count == 0:
        raise BadRequest(
            f"The .npy array holds no images (shape {shape}). Send at least one image.",
            code="EmptyBatch",
        )
    if count > max_batch:
        raise batch_too_large(count, max_batch)
    return count


def _checked_range(images: np.ndarray, form: ImageFormat) -> None:
    """Float32 pixels must be finite and in [0, 1] (NaN fails both comparisons)."""
    if images.min() >= 0 and images.max() <= 1:
        return
    flat = images.reshape(len(images), -1)
    bad = np.flatnonzero(~((flat >= 0) & (flat <= 1)))[0]
    image, pixel = divmod(int(bad), flat.shape[1])
    value = flat[image, pixel]
    why = (
        "NaN and infinity are not pixel values"
        if not np.isfinite(value)
        else f"outside [0, 1]. {RANGE_HINT} Or send the 0-255 values as uint8"
    )
    raise BadRequest(
        f"Pixel {pixel} of image {image} of the .npy array is {value}: {why}.",
        code="InvalidValue",
    )


def parse_npy(body: bytes, form: ImageFormat, *, max_batch: int) -> np.ndarray:
    """The images of a ``.npy`` body as float32 ``(n, *form.input_shape)`` in [0, 1], or
    :class:`BadRequest` saying what is wrong with it."""
    stream = io.BytesIO(body)
    shape, fortran_order, dtype = _header(stream, form)
    dtype = _checked_dtype(dtype, form)
    count = _checked_count(tuple(shape), form, max_batch)
    start = stream.tell()
    expected = count * form.pixels * dtype.itemsize
    received = len(body) - start
    if received != expected:
        what = "ends after" if received < expected else "has"
        raise _bad(
            f"The .npy body {what} {received:,} bytes of data after its header, which announces "
            f"{expected:,} ({shape} of {dtype}). Send the whole array and nothing after it.",
            form,
            code="IncompleteBody" if received < expected else "InvalidNpy",
        )
    pixels = np.frombuffer(body, dtype, count * form.pixels, start)
    pixels = pixels.reshape(shape, order="F" if fortran_order else "C")
    if dtype == np.uint8:
        images = pixels.astype(np.float32)
        images /= np.float32(255)  # divided, as training does: 255 becomes exactly 1
    else:
        images = pixels.astype(np.float32)  # a copy: native byte order, C order, writable
        _checked_range(images, form)
    return images.reshape(count, *form.input_shape)
