"""What every offline Azure test needs: credentials that never sign in, and HTTP answers.

The fakes of each area build on these (import as ``tests.azure_fakes``):

- ``StaticCredential``: a ``TokenCredential`` with a fixed token that records the scopes it
  was asked for; ``EntraIdCredential``: one whose tokens look like Entra ID's (an unsigned
  JWT), for SDK code that reads the caller's identity from the token (azure-ai-ml's jobs).
- ``json_response``, ``error_response`` and ``error_body``: a ``requests`` response as a
  service sends it, and the ``{"error": {"code", "message"}}`` body of ARM and Azure ML errors.
- ``Call``: one request a fake ``requests`` adapter received; ``requests_transport``: azure-core's
  real ``RequestsTransport`` over such an adapter, so every SDK call runs the SDK's whole
  pipeline (serialisation, bearer-token policy, retries, paging) and only the socket is fake.
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter, HTTPAdapter

TOKEN = "offline-test-token"


class StaticCredential:
    """A TokenCredential that hands out a fixed token: no sign-in, no secrets."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.scopes: list[str] = []

    def token_for(self, scopes: tuple[str, ...]) -> tuple[str, int]:
        """The token for ``scopes`` and when it expires (seconds since the epoch)."""
        return self.token, int(time.time()) + 3600

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes += scopes
        return AccessToken(*self.token_for(scopes))

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.scopes += scopes
        return AccessTokenInfo(*self.token_for(scopes))


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class EntraIdCredential(StaticCredential):
    """A TokenCredential whose tokens look like Entra ID's (an unsigned JWT for the scope)."""

    tenant = "00000000-0000-0000-0000-0000000000aa"
    expires_on = 4_102_444_800

    def token_for(self, scopes: tuple[str, ...]) -> tuple[str, int]:
        claims = {
            "aud": scopes[0].removesuffix("/.default") if scopes else "",
            "tid": self.tenant,
            "oid": "00000000-0000-0000-0000-0000000000bb",
            "upn": "data.scientist@example.com",
            "exp": self.expires_on,
        }
        return f"{_b64({'alg': 'none'})}.{_b64(claims)}.sig", self.expires_on


def error_body(code: str, message: str) -> dict[str, Any]:
    """The body of an ARM / Azure ML error response."""
    return {"error": {"code": code, "message": message}}


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


def error_response(
    request: requests.PreparedRequest, status: int, code: str, message: str
) -> requests.Response:
    """An ARM / Azure ML error answer to ``request``."""
    return json_response(request, status, error_body(code, message))


@dataclass
class Call:
    """A request as the fake received it."""

    method: str
    url: str
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


def fake_pulumi(tmp_path: Path, monkeypatch: Any, outputs: dict[str, Any]) -> dict[str, Any]:
    """A stand-in ``pulumi`` on PATH whose ``pulumi stack output --json`` prints ``outputs``
    (what a deployed stack would); the workspace variables are cleared so that the commands
    take the workspace from the stack. Returns ``outputs``."""
    script = tmp_path / "bin" / "pulumi"
    script.parent.mkdir()
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"assert sys.argv[1:4] == ['stack', 'output', '--json'], sys.argv\n"
        f"print(json.dumps({outputs!r}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"):
        monkeypatch.delenv(name, raising=False)
    return outputs
