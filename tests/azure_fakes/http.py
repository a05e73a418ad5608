"""The one transport of the fakes: azure-core's real ``RequestsTransport`` whose ``requests``
session is answered by an adapter instead of a socket, and the pieces an answer is made of.

- ``requests_transport(adapter)``: the transport to hand to a client (``transport=``), so every
  SDK call runs the SDK's whole pipeline (serialisation, bearer-token policy, retries, polling,
  paging, streaming downloads) and only the socket is fake.
- ``Call``: one request as the adapter received it (method, URL, host, path, query, headers,
  body).
- ``Answer``: what a route answers (status, JSON or raw bytes, headers); ``error``: the
  ``{"error": {"code", "message"}}`` answer of ARM and Azure ML; ``json_response``: the
  ``requests`` response an answer becomes.
"""

from __future__ import annotations

import io
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter, HTTPAdapter


def error_body(code: str, message: str) -> dict[str, Any]:
    """The body of an ARM / Azure ML error response."""
    return {"error": {"code": code, "message": message}}


@dataclass
class Answer:
    """A reply: ``body`` is sent as JSON, or as is when it is bytes (None: no body)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, code: str, message: str) -> Answer:
    """An ARM / Azure ML error reply, its code also in ``x-ms-error-code`` as the services do."""
    return Answer(status, error_body(code, message), {"x-ms-error-code": code})


def json_response(
    request: requests.PreparedRequest,
    status: int,
    body: Any = None,
    *,
    raw_body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """The ``requests`` response to ``request``: ``body`` as JSON, or ``raw_body`` as is."""
    if raw_body is None:
        raw_body = b"" if body is None else json.dumps(body).encode()
    all_headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(raw_body)),
        "x-ms-request-id": "00000000-0000-0000-0000-000000000001",
        **(headers or {}),
    }
    raw = urllib3.HTTPResponse(
        body=io.BytesIO(raw_body),
        headers=all_headers,
        status=status,
        reason="OK" if status < 400 else "Error",
        preload_content=False,
        decode_content=False,
        request_method=request.method,
        request_url=request.url,
        enforce_content_length=True,
    )
    return HTTPAdapter().build_response(request, raw)


def respond(request: requests.PreparedRequest, answer: Answer) -> requests.Response:
    """The ``requests`` response that carries ``answer``."""
    if isinstance(answer.body, bytes):
        return json_response(request, answer.status, raw_body=answer.body, headers=answer.headers)
    return json_response(request, answer.status, answer.body, headers=answer.headers)


@dataclass
class Call:
    """A request as the fake received it."""

    method: str
    url: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, request: requests.PreparedRequest) -> Call:
        parts = urllib.parse.urlsplit(request.url or "")
        body = request.body or b""
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode()
        return cls(
            request.method or "",
            request.url or "",
            parts.hostname or "",
            parts.path,
            dict(urllib.parse.parse_qsl(parts.query)),
            dict(request.headers),
            bytes(body),
        )

    def json(self) -> Any:
        return json.loads(self.body)


def requests_transport(adapter: BaseAdapter) -> RequestsTransport:
    """azure-core's real transport, its session's every request answered by ``adapter``.

    The session stays the test's (``session_owner=False``): a client that closes its transport
    can never swap in a fresh session that would reach the network.
    """
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=False)
