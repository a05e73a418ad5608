"""Entry script for Azure ML managed online endpoints and ``azmlinfsrv``: ``init()`` and ``run()``.

A thin adapter over :class:`predictor.DigitClassifier`:

- ``init()`` loads the model from ``AZUREML_MODEL_DIR`` (the model folder or the folder above
  it, where Azure ML mounts registered models), warms it up, and publishes the API schema.
- ``run()`` takes the raw HTTP request (``@rawhttp``) so that every bad request gets a 4xx JSON
  body that says what is wrong and how to fix it, rather than the server's generic 500; it
  returns an ``AMLResponse`` with the status code. It reads the body itself, whatever its
  framing (``Content-Length`` or chunked): at most the size limit is kept (413 past it), a body
  that has not arrived within half of ``SCORING_TIMEOUT_MS`` gets a 408, and a truncated or
  malformed one a 400.

Request ``{"data": [image, ...]}`` with each image flat or as rows, scaled to [0, 1] (for the
MNIST models: 784 numbers or 28 lists of 28), sent with any Content-Type but the one below; or,
with ``Content-Type: application/x-npy``, the same batch as the bytes ``numpy.save`` writes:
shape ``(n, pixels)`` or ``(n, rows, columns)``, float32 in [0, 1] or uint8 0-255 (npy_body.py;
a .npy body sent as JSON gets a 415 saying which Content-Type to use). Response
``{"predictions": [class, ...], "probabilities": [[one float per class], ...]}``. The shapes
are the model's own, read from the model folder's signature (predictor.ModelContract): the
same script serves the DNN and the CNN.
``SCORING_MAX_BATCH`` (set in deployment.yml) caps the images per request (413 above it).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_content_length

if TYPE_CHECKING:
    import numpy as np

# The server loads this file by path, not as part of a package: make its siblings importable
# wherever the code folder is mounted (/var/azureml-app/code on Azure, serving/code/ locally).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from contract import Shapes, complete
from npy_body import CONTENT_TYPE as NPY_TYPE
from npy_body import MAGIC as NPY_MAGIC
from npy_body import max_npy_body_bytes, parse_npy
from predictor import (
    DEFAULT_MAX_BATCH,
    BadRequest,
    DigitClassifier,
    batch_too_large,
    max_body_bytes,
)
from request_log import DataCollection, RequestLog

JSON_TYPE = "application/json"
MAX_BATCH_ENV = "SCORING_MAX_BATCH"
TIMEOUT_ENV = "SCORING_TIMEOUT_MS"  # azmlinfsrv's own setting (default one hour)
DEFAULT_TIMEOUT_MS = 3_600_000
_classifier: DigitClassifier | None = None
_max_body = 0  # JSON
_max_npy_body = 0
_read_seconds = 0.0
_DISCARD_LIMIT = 100 << 20  # what the endpoint's front end accepts (client_max_body_size 100m)
_PIECE = 1 << 16
_request_log = RequestLog()  # one JSON line per request on stdout, never the pixels
_collection = DataCollection()  # Azure ML's data collector, when the deployment has one


def _positive_int_from_env(name: str, default: int, unit: str) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={raw!r} must be a whole number of {unit}, at least 1.")
    return value


def _publish_contract(classifier: DigitClassifier) -> None:
    """Make /swagger.json state what ``run()`` accepts and returns (see contract.py).

    ``azmlinfsrv`` builds /swagger.json after ``init()`` returns, from its templates and
    inference-schema's registry, which cannot describe a ``@rawhttp`` ``run()`` (the server
    refuses one that carries ``@input_schema``). So the builder's output is completed here, with
    the shapes of the loaded model and the batch limit. A server version without this builder
    serves its generic document: said in the log, never a failed start.
    """
    contract = classifier.contract
    shapes = Shapes(contract.pixels, contract.image, contract.classes, classifier.max_batch)
    try:
        from azureml_inference_server_http.server.swagger import _SwaggerBuilder
    except ImportError as exc:
        print(f"/swagger.json stays generic: this azmlinfsrv has no swagger builder ({exc}).")
        return
    generate = getattr(_SwaggerBuilder, "_azureml_generate", _SwaggerBuilder.get_swagger)

    def get_swagger(builder: Any) -> dict[str, Any] | None:
        document = generate(builder)
        return None if document is None else complete(document, builder.__version__, shapes)

    _SwaggerBuilder._azureml_generate = generate  # init() may run again in the same process
    _SwaggerBuilder.get_swagger = get_swagger


def init() -> None:
    """Load and warm up the model; fail with a message saying what was expected where."""
    global _classifier, _max_body, _max_npy_body, _read_seconds, _collection
    max_batch = _positive_int_from_env(MAX_BATCH_ENV, DEFAULT_MAX_BATCH, "images")
    timeout_ms = _positive_int_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_MS, "milliseconds")
    _classifier = DigitClassifier.load(os.environ.get("AZUREML_MODEL_DIR"), max_batch=max_batch)
    _classifier.warm_up()
    _max_body = max_body_bytes(max_batch, _classifier.contract)
    _max_npy_body = max_npy_body_bytes(max_batch, _classifier.contract)
    _read_seconds = timeout_ms / 2000  # half the scoring timeout for the body, half for scoring
    _publish_contract(_classifier)
    _collection = DataCollection.from_environment()


def _error(exc: BadRequest, headers: dict[str, str] | None = None) -> AMLResponse:
    return AMLResponse(exc.to_body(), exc.status, headers or {}, json_str=True)


class _JsonResponse(AMLResponse):
    """A response whose body is JSON already: what ``AMLResponse(body, status, {"Content-Type":
    "application/json"})`` answers (the same status, body and headers), built directly.

    ``AMLResponse.__init__`` sets a text/html Content-Type, removes it again and parses the
    headers it was given; on a single image that was a tenth of the time ``run()`` spends
    beyond an empty scorer's. This sets the Content-Type once, and the one header of its own
    that AMLResponse adds (the server sets it to True when a run fails).
    """

    def __init__(self, body: bytes, status: int = 200) -> None:
        super(AMLResponse, self).__init__(body, status=status, mimetype="application/json")
        self.headers["x-ms-run-function-failed"] = False


# --------------------------------------------------------------------------- the request body


class _Watchdog:
    """Ends the upload of a body that is late: shuts its socket for reading at the deadline.

    A socket timeout alone bounds each ``recv``, not the whole body: a client that trickles a
    byte a second, or a chunk-size line that never ends, would hold a worker thread for as long
    as it likes. One thread per worker process checks the deadlines of the bodies being read
    every ``TICK_S`` (so a request never has to wake it); a blocked read then returns
    end-of-file and the request gets its 408.
    """

    TICK_S = 0.1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._expired: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> int:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # started in each worker
                self._thread = threading.Thread(target=self._run, name="body-watchdog")
                self._thread.daemon = True
                self._thread.start()
            token = next(self._ids)
            self._live.add(token)
            heapq.heappush(self._heap, (deadline, token, sock))
            return token

    def release(self, token: int) -> bool:
        """Stop watching; True if the deadline had already passed and the socket was shut."""
        with self._lock:
            self._live.discard(token)
            if token in self._expired:
                self._expired.discard(token)
                return True
            return False

    def _due(self) -> list[socket.socket]:
        """Pop what was released and what is late; the late sockets, to shut."""
        late = []
        now = time.monotonic()
        with self._lock:
            while self._heap and (self._heap[0][1] not in self._live or self._heap[0][0] <= now):
                _, token, sock = heapq.heappop(self._heap)
                if token in self._live:
                    self._live.discard(token)
                    self._expired.add(token)
                    late.append(sock)
        return late

    def _run(self) -> None:
        while True:
            for sock in self._due():
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RD)
            time.sleep(self.TICK_S)


_watchdog = _Watchdog()


class _Late(Exception):
    """The body did not arrive before its deadline."""


def _late(received: int) -> BadRequest:
    return BadRequest(
        f"The request body did not arrive within {_read_seconds * 1000:.0f} ms ({received:,} "
        "bytes received). Send the whole body at once, with a Content-Length that matches it.",
        status=408,
        code="RequestTimeout",
    )


def _read_into(
    stream: Any,
    limit: int,
    deadline: float,
    sock: Any,
    keep: list[bytes] | None,
    expected: int | None = None,
) -> int:
    """Read up to ``limit + 1`` bytes of the body (kept in ``keep`` unless it is None), or the
    ``expected`` bytes that its Content-Length announces."""
    received = 0
    while received <= limit and received != expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Late(received)
        if sock is not None:
            sock.settimeout(remaining)
        piece = stream.read(min(_PIECE, limit + 1 - received))
        if not piece:
            break
        if keep is not None:
            keep.append(piece)
        received += len(piece)
    return received


def _unreadable(exc: BaseException) -> BadRequest:
    return BadRequest(
        f"The request body could not be read: {type(exc).__name__} "
        f"({str(exc)[:80] or 'the connection ended'}). Send a complete body, with a "
        "Content-Length or a valid chunked encoding.",
        code="UnreadableBody",
    )


def _body_stream(request: AMLRequest) -> Any:
    """What to read the body from: under gunicorn, the reader inside its ``wsgi.input``.

    gunicorn's ``Body.read(n)`` gathers its bytes 1 KB at a time from that reader, copying what
    it holds back at every step: 8-10 ms for a 1.5 MB body (a JSON batch of 256 images) against
    0.7 ms for reading the reader itself 64 KB at a time. The reader applies the request's
    framing (Content-Length or chunked) and raises the same errors; the size limit is ours
    (:func:`_read_into`). Anywhere else (another server, a Body already read from), the
    request's own stream.
    """
    raw = request.environ.get("wsgi.input")
    reader = getattr(raw, "reader", None)
    buffered = getattr(getattr(raw, "buf", None), "tell", lambda: 1)()
    if type(raw).__module__ == "gunicorn.http.body" and reader is not None and buffered == 0:
        return reader
    return request.stream


def _read_body(request: AMLRequest, max_body: int) -> bytes:
    """The body, read within the size limit and the deadline; :class:`BadRequest` otherwise.

    The limit (``max_body`` bytes) counts the bytes actually read, so a chunked body (no
    ``Content-Length``) is held to it too. Beyond the limit, up to ``_DISCARD_LIMIT`` more bytes
    are read and dropped so that the client sees the 413 rather than a reset connection.
    """
    environ = request.environ
    declared = get_content_length(environ)  # request.content_length, without its lookups
    limit = 0 if declared is not None and declared > max_body else max_body
    sock = environ.get("gunicorn.socket")
    deadline = time.monotonic() + _read_seconds
    token = _watchdog.watch(sock, deadline) if sock is not None else None
    pieces: list[bytes] = []
    try:
        stream = _body_stream(request)
        received = _read_into(stream, limit, deadline, sock, pieces, declared)
        too_large = received > limit or (limit == 0 and bool(declared))
        if too_large:
            with contextlib.suppress(_Late, OSError, ValueError, HTTPException):
                _read_into(stream, _DISCARD_LIMIT, deadline, sock, None)  # dropped
    except _Late as exc:
        raise _late(exc.args[0]) from None
    except TimeoutError:  # the socket's timeout, or azmlinfsrv's alarm on a sync worker
        raise _late(sum(map(len, pieces))) from None
    except (OSError, ValueError, HTTPException) as exc:  # gunicorn's chunk errors, a reset
        shut = token is not None and _watchdog.release(token)
        raise (_late(sum(map(len, pieces))) if shut else _unreadable(exc)) from None
    finally:
        if sock is not None:
            sock.settimeout(None)
        shut = token is not None and _watchdog.release(token)  # on every path
    if too_large:
        raise batch_too_large(None, _classifier.max_batch)
    body = b"".join(pieces)
    if declared is not None and len(body) < declared:
        if shut:
            raise _late(len(body))
        raise BadRequest(
            f"The request body ended after {len(body):,} of the {declared:,} bytes its "
            "Content-Length announces. Send the whole body, with a Content-Length that matches.",
            code="IncompleteBody",
        )
    return body


@rawhttp
def run(request: AMLRequest) -> AMLResponse:
    """Score one request and log it (request id, status, images, latency: request_log.py)."""
    started = _request_log.started()
    status, images = 500, None  # what an exception out of _respond() becomes
    try:
        response, images = _respond(request)
        status = response.status_code
        return response
    finally:
        _request_log.record(request.headers, status, images, started)


def _respond(request: AMLRequest) -> tuple[AMLResponse, int | None]:
    """The response, and how many images it scored; every client mistake becomes a 4xx with
    an explanation."""
    assert _classifier is not None, "init() has not run"
    if request.method != "POST":
        allow = {"Allow": "POST"}
        if request.method == "OPTIONS":
            return AMLResponse("", 200, allow), None
        return _error(
            BadRequest(
                f"{request.method[:20]} is not supported on /score: POST a JSON body such as "
                f'{{"data": [[...{_classifier.contract.pixels} numbers...]]}}.',
                status=405,
                code="MethodNotAllowed",
            ),
            allow,
        ), None
    try:
        images = _parse(request)
        prediction = _classifier.predict(images)
    except BadRequest as exc:
        return _error(exc), None
    _collection.collect(images, prediction.probabilities)
    return _JsonResponse(prediction.to_json()), len(images)


def _parse(request: AMLRequest) -> np.ndarray:
    """The images of the request, by its Content-Type: a .npy array for application/x-npy,
    JSON for anything else (a missing or other Content-Type was always read as JSON)."""
    contract = _classifier.contract
    # The Content-Type as sent, compared first: parsing it (request.mimetype) is for the rest.
    if request.environ.get("CONTENT_TYPE") != JSON_TYPE and request.mimetype == NPY_TYPE:
        body = _read_body(request, _max_npy_body)
        return parse_npy(body, contract, max_batch=_classifier.max_batch)
    body = _read_body(request, _max_body)
    if body.startswith(NPY_MAGIC):
        sent = request.mimetype or "none"
        raise BadRequest(
            f"The request body is a .npy array but its Content-Type is {sent[:60]!r}: send it "
            f"with Content-Type: {NPY_TYPE}, or send JSON such as "
            f'{{"data": [[...{contract.pixels} numbers...]]}}.',
            status=415,
            code="UnsupportedMediaType",
        )
    return _classifier.parse(body)
