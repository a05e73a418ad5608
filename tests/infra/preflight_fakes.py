"""Offline Azure for the SDK clients: a static credential and a fake HTTP layer.

``FakeArm`` is a ``requests`` adapter mounted on the session of azure-core's real
``RequestsTransport``, so each SDK call goes through its whole pipeline (URL building,
bearer-token policy, retries, paging, deserialisation) and only the socket is replaced by
routes that answer with constructed ARM responses.
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter

SUBSCRIPTION = "3f2a6c1e-9b7d-4c2e-8a51-0d6e4b9f7a10"
TOKEN = "offline-test-token"


class StaticCredential:
    """A TokenCredential that hands out a fixed token (no sign-in, no secrets)."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes += scopes
        return AccessToken(TOKEN, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.scopes += scopes
        return AccessTokenInfo(TOKEN, int(time.time()) + 3600)


@dataclass
class Recorded:
    method: str
    url: str
    headers: dict[str, str]


class FakeArm(BaseAdapter):
    """Answers requests whose URL path matches a route with (status, JSON body)."""

    def __init__(self, routes: dict[str, tuple[int, Any]]) -> None:
        super().__init__()
        self.routes = {re.compile(pattern): answer for pattern, answer in routes.items()}
        self.requests: list[Recorded] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        recorded = Recorded(request.method or "", request.url or "", dict(request.headers))
        self.requests.append(recorded)
        path = requests.utils.urlparse(request.url).path
        for pattern, (status, body) in self.routes.items():
            if pattern.search(path):
                return self._response(request, status, body)
        return self._response(
            request, 404, {"error": {"code": "NotFound", "message": f"no route for {path}"}}
        )

    @staticmethod
    def _response(request: requests.PreparedRequest, status: int, body: Any) -> requests.Response:
        data = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            "x-ms-request-id": "00000000-0000-0000-0000-000000000000",
        }
        response = requests.Response()
        response.status_code = status
        response.headers.update(headers)
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(data), headers=headers, status=status, preload_content=False
        )
        response.request = request
        response.url = request.url or ""
        response.reason = "OK" if status < 400 else "Error"
        return response

    def close(self) -> None:
        pass


def transport_for(fake: FakeArm) -> RequestsTransport:
    session = requests.Session()
    session.mount("https://", fake)
    return RequestsTransport(session=session, session_owner=False)


def vm_sku(
    name: str,
    family: str,
    vcpus: int,
    location: str,
    *,
    gpus: int = 0,
    low_priority: bool = True,
    restricted_for_subscription: bool = False,
) -> dict[str, Any]:
    """A ``virtualMachines`` entry as the Resource SKUs API returns it."""
    restrictions = []
    if restricted_for_subscription:
        restrictions.append(
            {
                "type": "Location",
                "values": [location],
                "restrictionInfo": {"locations": [location]},
                "reasonCode": "NotAvailableForSubscription",
            }
        )
    return {
        "resourceType": "virtualMachines",
        "name": name,
        "tier": "Standard",
        "size": name.removeprefix("Standard_"),
        "family": family,
        "locations": [location],
        "locationInfo": [{"location": location, "zones": ["1", "2", "3"], "zoneDetails": []}],
        "capabilities": [
            {"name": "vCPUs", "value": str(vcpus)},
            {"name": "GPUs", "value": str(gpus)},
            {"name": "LowPriorityCapable", "value": str(low_priority)},
        ],
        "restrictions": restrictions,
    }


def ml_usage(kind: str, name: str, used: int, limit: int) -> dict[str, Any]:
    """An entry of the Azure ML usages API (``kind``: vmFamily, dedicatedCores, ...)."""
    return {
        "id": f"/subscriptions/{SUBSCRIPTION}/usages/{name.replace(' ', '_')}",
        "type": f"Microsoft.MachineLearningServices/{kind}/usages",
        "currentValue": used,
        "limit": limit,
        "name": {"value": name, "localizedValue": name},
        "unit": "Count",
    }
