"""What the scoring server records about each request: one log line, and a sampled copy of the data.

Uploaded with score.py (serving/code/) and imported the way score.py imports predictor.

- :class:`RequestLog` writes one JSON line per request to stdout: request id, status, images,
  latency in ms, never the pixels. On Azure the container's stdout is the deployment's console
  log (``az ml online-deployment get-logs``; Log Analytics table AmlOnlineEndpointConsoleLog
  through the endpoint's diagnostic setting), where a request id from the caller's
  ``x-ms-request-id`` / ``x-request-id`` header finds the line.
- :class:`DataCollection` hands model inputs and outputs to Azure ML's data collector
  (``azureml-ai-monitoring``'s ``Collector``, the documented way for a custom score.py), which
  samples them at the deployment's ``data_collector.sampling_rate`` and stores them in the
  workspace's blob store for model monitoring. Without the package, or outside a deployment with
  a data collector (no ``AZUREML_MDC_*`` settings, e.g. ``python -m scripts serve``), it does
  nothing, at the cost of one attribute check per request.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

try:  # optional: the standard library writes the same line, ten times slower
    import orjson
except ImportError:
    orjson = None

# The caller's id for the request, in the order they are trusted: Azure's front end sets
# x-ms-request-id; clients and azmlinfsrv use x-request-id.
REQUEST_ID_HEADERS = ("x-ms-request-id", "x-request-id")
# The same headers as a WSGI server hands them over (its environ's keys).
_ENVIRON_KEYS = tuple("HTTP_" + name.upper().replace("-", "_") for name in REQUEST_ID_HEADERS)
MAX_ID_CHARS = 100  # azmlinfsrv refuses longer ids; a log line never carries more
# The data collector's collections, as deployment.yml names them (Azure ML's reserved names for
# a custom score.py's inputs and outputs).
INPUTS, OUTPUTS = "model_inputs", "model_outputs"
# Column names of the collected outputs; prediction drift compares DIGIT_COLUMN with the
# training labels' column of the same name (serving/monitoring/).
DIGIT_COLUMN, PROBABILITY_COLUMN = "digit", "probability"
# Set by Azure ML in a deployment with a data collector (azureml-ai-monitoring reads them).
_COLLECTOR_SETTINGS = ("AZUREML_MDC_CONFIG_PATH", "AZUREML_MDC_ENABLED")


def request_id(headers: Mapping[str, str] | Any) -> str:
    """The caller's request id (first of ``REQUEST_ID_HEADERS`` present), else a new UUID.

    Only printable characters are kept, and at most ``MAX_ID_CHARS``, so a header cannot forge
    or break log lines. ``headers`` is any mapping of header names; werkzeug's request headers
    are read straight from their WSGI environ (the same values, without the name normalising
    that each of werkzeug's lookups does).
    """
    environ = getattr(headers, "environ", None)
    if type(environ) is dict:
        values = [environ.get(key) for key in _ENVIRON_KEYS]
    else:
        values = [headers.get(name) for name in REQUEST_ID_HEADERS]
    for value in values:
        if value:
            cleaned = "".join(ch for ch in str(value) if ch.isprintable())[:MAX_ID_CHARS]
            if cleaned.strip():
                return cleaned
    return new_request_id()


def new_request_id() -> str:
    """A random (version 4) UUID, as text: what ``str(uuid.uuid4())`` returns, at a sixth of
    its cost (no ``UUID`` object in between)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _json_line(entry: dict[str, Any]) -> str:
    """``entry`` as compact JSON, ASCII only (as ``json.dumps`` writes it), with orjson when it
    is installed and the line has nothing to escape."""
    if orjson is not None:
        line = orjson.dumps(entry).decode()
        if line.isascii():
            return line
    return json.dumps(entry, separators=(",", ":"))


def _stdout_line(line: str) -> None:
    """One line on stdout, flushed: whole (one write, under PIPE_BUF, so lines of concurrent
    workers never interleave) and at once in the container's log. Written directly rather
    than through ``logging``, which costs twice as much per request (15 us against 7 us)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class RequestLog:
    """One structured line per scoring request.

    ``write`` receives each line (default: stdout);
    ``clock`` gives seconds (default ``time.perf_counter``), for :meth:`started`.
    """

    def __init__(
        self,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._write = write or _stdout_line
        self.clock = clock

    def started(self) -> float:
        """The time a request started, to pass back to :meth:`record`."""
        return self.clock()

    def record(
        self,
        headers: Mapping[str, str] | Any,
        status: int,
        images: int | None,
        started: float,
    ) -> dict[str, Any]:
        """Log the request that began at ``started``; returns the fields it logged.

        ``images`` is the number of images scored (None when the body was refused before it
        could be counted). Never raises: a request is never failed by its log line.
        """
        entry: dict[str, Any] = {
            "event": "score",
            "request_id": "",
            "status": int(status),
            "images": images,
            "latency_ms": round((self.clock() - started) * 1000, 1),
        }
        try:
            entry["request_id"] = request_id(headers)
            self._write(_json_line(entry))
        except Exception as exc:  # a full disk or a closed stdout must not fail the request
            print(f"request log failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return entry


CollectorFactory = Callable[..., Any]


def _azure_collector() -> CollectorFactory | None:
    """``azureml.ai.monitoring.Collector`` when a data collector is configured, else None."""
    if not any(os.environ.get(name) for name in _COLLECTOR_SETTINGS):
        return None
    try:
        from azureml.ai.monitoring import Collector
    except ImportError:
        print(
            "Data collection is configured but azureml-ai-monitoring is not installed in the "
            "scoring environment: nothing is collected (add it to serving/environment/conda.yml).",
            file=sys.stderr,
        )
        return None
    return Collector


class DataCollection:
    """Model inputs and outputs for Azure ML's data collector; a no-op when none is configured.

    ``factory`` builds a collector from ``name=`` and ``on_error=`` (default: azureml-ai-
    monitoring's ``Collector`` when the deployment has a data collector, else nothing).
    """

    def __init__(self, factory: CollectorFactory | None = None) -> None:
        self.errors = 0
        self._inputs = self._outputs = None
        if factory is not None:
            self._inputs = factory(name=INPUTS, on_error=self._on_error)
            self._outputs = factory(name=OUTPUTS, on_error=self._on_error)

    @classmethod
    def from_environment(cls) -> DataCollection:
        return cls(_azure_collector())

    @property
    def enabled(self) -> bool:
        return self._inputs is not None

    def _on_error(self, exc: Exception) -> None:
        """The collector's failures are counted and reported once, never raised to a request."""
        self.errors += 1
        if self.errors == 1:
            print(f"data collection failed (reported once): {exc}", file=sys.stderr)

    def collect(self, images: np.ndarray, probabilities: np.ndarray) -> None:
        """Hand one request's images and probabilities ``(n, classes)`` over: one row per image,
        one ``pixel_<i>`` column per pixel, whatever the model's input shape (the image flat)."""
        if self._inputs is None:
            return
        try:
            import pandas as pd

            flat = np.asarray(images, np.float32).reshape(len(images), -1)
            pixels = pd.DataFrame(flat, columns=[f"pixel_{i}" for i in range(flat.shape[1])])
            outputs = pd.DataFrame(
                {
                    DIGIT_COLUMN: probabilities.argmax(axis=1).astype(int),
                    PROBABILITY_COLUMN: probabilities.max(axis=1).astype(float),
                }
            )
            context = self._inputs.collect(pixels)
            self._outputs.collect(outputs, context)  # the same correlation id joins the two
        except Exception as exc:
            self._on_error(exc)
