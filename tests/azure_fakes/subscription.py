"""What subscription-level ARM APIs return, for ``preflight``: Resource SKUs and Azure ML usages
(answered by ``FakeWorkspace.answer``)."""

from __future__ import annotations

from typing import Any

from tests.azure_fakes.base import SUBSCRIPTION


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
