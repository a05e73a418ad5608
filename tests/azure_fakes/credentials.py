"""Credentials that never sign in: ``StaticCredential`` hands out a fixed token and records the
scopes it was asked for; ``EntraIdCredential``'s tokens look like Entra ID's (an unsigned JWT),
for SDK code that reads the caller's identity from the token (azure-ai-ml's jobs)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo

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
