"""Offline ARM for ``preflight``: a routes-to-answers HTTP layer and the payloads it returns.

``FakeArm`` is a ``requests`` adapter for ``tests.azure_fakes.requests_transport``, so each SDK
call goes through azure-core's whole pipeline (URL building, bearer-token policy, retries,
paging, deserialisation) and only the socket is replaced by routes that answer with
constructed ARM responses.
"""

from __future__ import annotations

import re
from typing import Any

import requests
from requests.adapters import BaseAdapter

from tests.azure_fakes import Call, error_response, json_response

SUBSCRIPTION = "3f2a6c1e-9b7d-4c2e-8a51-0d6e4b9f7a10"


class FakeArm(BaseAdapter):
    """Answers requests whose URL path matches a route with (status, JSON body)."""

    def __init__(self, routes: dict[str, tuple[int, Any]]) -> None:
        super().__init__()
        self.routes = {re.compile(pattern): answer for pattern, answer in routes.items()}
        self.requests: list[Call] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        call = Call.of(request)
        self.requests.append(call)
        for pattern, (status, body) in self.routes.items():
            if pattern.search(call.path):
                return json_response(request, status, body)
        return error_response(request, 404, "NotFound", f"no route for {call.path}")

    def close(self) -> None:
        pass


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
