"""The published API of ``/score``: the JSON schemas that ``/swagger.json`` serves.

Uploaded with ``score.py`` (no web server or TensorFlow here): :func:`complete` fills
azmlinfsrv's generated OpenAPI document (Swagger 2.0 or OpenAPI 3.x) with what ``run()``
really accepts and returns, from the shapes of the loaded model and the batch limit:

- request ``{"data": [image, ...]}``: ``data`` required and the only key, 1 to ``max_batch``
  images, each ``pixels`` numbers or ``rows`` lists of ``columns`` numbers (all images of one
  request in one of the two forms), every number in [0, 1];
- or the same batch as a ``.npy`` body (``Content-Type: application/x-npy``, the bytes
  ``numpy.save`` writes): shape ``(n, pixels)`` or ``(n, rows, columns)``, float32 in [0, 1] or
  uint8 0-255; OpenAPI 3 lists it as a second request content type, Swagger 2 (one schema per
  body) in the operation's description;
- response 200 ``{"predictions": [int], "probabilities": [[classes numbers in [0, 1]]]}``;
- 400, 408, 413 and 415 (and 405 for other methods): ``{"error": {"code": str, "message": str}}``.

Swagger 2.0 has no ``oneOf``: its document states the flat form, which every model takes
whatever its input shape, and names the other in its description; OpenAPI 3 states both exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ERROR_STATUSES = {
    "400": "The request is not a batch of images in the documented form; the message says "
    "what is wrong and how to fix it.",
    "408": "The request body did not arrive in time (a slow or stalled upload).",
    "413": "The batch or the body is over this endpoint's limit; split the batch.",
    "415": "A .npy body sent with another Content-Type than application/x-npy.",
}
NPY_TYPE = "application/x-npy"


@dataclass(frozen=True)
class Shapes:
    """What one request may hold: from the model (pixels, image, classes) and the deployment."""

    pixels: int
    image: tuple[int, int] | None  # images may also be sent as `rows` lists of `columns` numbers
    classes: int
    max_batch: int


def _pixel() -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": 1}


def _list(items: dict[str, Any], low: int, high: int) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": low, "maxItems": high}


def _batches(shapes: Shapes) -> list[dict[str, Any]]:
    """One batch schema per image form: flat first, then rows when the image has them."""
    flat = _list(_pixel(), shapes.pixels, shapes.pixels)
    forms = [flat]
    if shapes.image:
        rows, columns = shapes.image
        forms.append(_list(_list(_pixel(), columns, columns), rows, rows))
    return [_list(form, 1, shapes.max_batch) for form in forms]


def _description(shapes: Shapes) -> str:
    rows = f" or {shapes.image[0]} lists of {shapes.image[1]} numbers" if shapes.image else ""
    return (
        f"A batch of 1 to {shapes.max_batch} images (SCORING_MAX_BATCH), each {shapes.pixels} "
        f"numbers{rows}, all in one form; pixels scaled to [0, 1]."
    )


def _npy_description(shapes: Shapes) -> str:
    rows = f" or (n, {shapes.image[0]}, {shapes.image[1]})" if shapes.image else ""
    return (
        f"Or the batch as a .npy body (Content-Type: {NPY_TYPE}): the bytes numpy.save writes "
        f"for an array of shape (n, {shapes.pixels}){rows}, n from 1 to {shapes.max_batch}, "
        "dtype float32 with values in [0, 1] or uint8 0-255 (divided by 255 here); no object "
        "arrays (nothing is unpickled)."
    )


def npy_schema(shapes: Shapes) -> dict[str, Any]:
    """The ``.npy`` request body's schema: bytes, described (JSON Schema cannot say more)."""
    return {"type": "string", "format": "binary", "description": _npy_description(shapes)}


def request_schema(shapes: Shapes, version: str) -> dict[str, Any]:
    """The request body's schema (``ServiceInput``)."""
    batches = _batches(shapes)
    data = batches[0] if version.startswith("2") or len(batches) == 1 else {"oneOf": batches}
    return {
        "type": "object",
        "required": ["data"],
        "additionalProperties": False,
        "properties": {"data": {**data, "description": _description(shapes)}},
        "example": {"data": [[0.0] * shapes.pixels]},
    }


def response_schema(shapes: Shapes) -> dict[str, Any]:
    """The 200 answer's schema (``ServiceOutput``)."""
    label = {"type": "integer", "minimum": 0, "maximum": shapes.classes - 1}
    row = _list(_pixel(), shapes.classes, shapes.classes)
    return {
        "type": "object",
        "required": ["predictions", "probabilities"],
        "additionalProperties": False,
        "properties": {
            "predictions": {
                **_list(label, 1, shapes.max_batch),
                "description": "The most likely class of each image, in request order.",
            },
            "probabilities": {
                **_list(row, 1, shapes.max_batch),
                "description": f"The {shapes.classes} class probabilities of each image.",
            },
        },
        "example": {"predictions": [7], "probabilities": [[0.1] * shapes.classes]},
    }


def error_schema() -> dict[str, Any]:
    """The body of every 4xx that ``run()`` answers (``ScoringError``)."""
    return {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "description": "Stable, e.g. InvalidShape."},
                    "message": {"type": "string", "description": "What is wrong, how to fix."},
                },
            }
        },
        "example": {"error": {"code": "EmptyBatch", "message": '"data" is empty. ...'}},
    }


def _score_operation(document: dict[str, Any]) -> dict[str, Any]:
    paths = [path for path in document["paths"] if path.rstrip("/").endswith("/score")]
    if len(paths) != 1:
        raise ValueError(f"expected one /score path in the server's document, found {paths}")
    return document["paths"][paths[0]]["post"]


def complete(document: dict[str, Any], version: str, shapes: Shapes) -> dict[str, Any]:
    """azmlinfsrv's document for ``version`` ("2", "3", "3.1"), completed in place."""
    operation = _score_operation(document)
    operation["description"] = (
        f"Classify a batch of images. {_description(shapes)} {_npy_description(shapes)} Other "
        "methods than POST get a 405 with the same error body as a 400."
    )
    schemas = {
        "ServiceInput": request_schema(shapes, version),
        "ServiceOutput": response_schema(shapes),
        "ScoringError": error_schema(),
    }
    if version.startswith("2"):
        document["definitions"].update(schemas)
        operation["parameters"][0]["required"] = True
        ref = {"$ref": "#/definitions/ScoringError"}
        errors = {
            code: {"description": text, "schema": ref} for code, text in ERROR_STATUSES.items()
        }
    else:
        document["components"]["schemas"].update(schemas)
        operation["requestBody"]["required"] = True
        operation["requestBody"]["content"][NPY_TYPE] = {"schema": npy_schema(shapes)}
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/ScoringError"}}}
        errors = {
            code: {"description": text, "content": content} for code, text in ERROR_STATUSES.items()
        }
    operation["responses"].update(errors)
    return document
