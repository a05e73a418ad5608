"""Checks to run before ``pulumi up``: is the VM size offered in the region, and is there quota?

Two management APIs answer:

- Microsoft.Compute resource SKUs (``azure-mgmt-compute``): whether the size exists in the
  region, whether this subscription may use it there (``NotAvailableForSubscription``), its
  vCPUs, VM family and low-priority capability.
- Microsoft.MachineLearningServices usages (``GET .../locations/{region}/usages``, sent through
  the same client's ARM pipeline): Azure ML compute clusters draw on Azure ML's own vCPU quota
  per VM family and region, separate from the virtual-machine quota, so that is the quota
  checked. (``azure-ai-ml``'s ``MLClient.compute.list_usage`` reads the same API, but its
  ``Usage`` entity leaves ``current_value`` empty in azure-ai-ml 1.35.)

The functions take the SDK client, so tests drive it through the SDK's real HTTP pipeline with
a fake transport; ``make_client`` builds it for real use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.core.rest import HttpRequest

from infra.catalog import CPU_VM_SIZES, GPU_VM_SIZES
from infra.config import ClusterSpec, InfraConfig

ML_USAGES_API_VERSION = "2024-04-01"
FAMILY_USAGE = "Microsoft.MachineLearningServices/vmFamily/usages"
DEDICATED_USAGE = "Microsoft.MachineLearningServices/dedicatedCores/usages"
LOW_PRIORITY_USAGE = "Microsoft.MachineLearningServices/lowPriorityCores/usages"


class PreflightError(RuntimeError):
    """The checks could not run (no login, no access to the subscription, API error)."""


@dataclass(frozen=True)
class Check:
    """One check's verdict, phrased for the person about to run ``pulumi up``."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Usage:
    """One entry of the Azure ML usages API."""

    type: str
    name: str
    used: int
    limit: int


@dataclass(frozen=True)
class SkuInfo:
    """What the resource SKU API says about a VM size in a region."""

    family: str
    vcpus: int
    low_priority_capable: bool


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _capability(sku: Any, name: str) -> str | None:
    for capability in sku.capabilities or []:
        if capability.name == name:
            return capability.value
    return None


def _blocked(sku: Any, location: str) -> list[Any]:
    """Restrictions that keep this subscription from the size in the whole region."""
    blocked = []
    for restriction in sku.restrictions or []:
        info = restriction.restriction_info
        # The SDK model names the wire field "values" values_property (dicts have .values()).
        places = [*(restriction.values_property or []), *((info and info.locations) or [])]
        if restriction.type == "Location" and location in [p.lower() for p in places]:
            blocked.append(restriction)
    return blocked


def check_sku(
    skus: Sequence[Any], location: str, cluster: ClusterSpec
) -> tuple[Check, SkuInfo | None]:
    """Is ``cluster.vm_size`` offered in ``location`` to this subscription?"""
    name = f"{cluster.name}: {cluster.vm_size} offered in {location}"
    vm_skus = [s for s in skus if (s.resource_type or "").lower() == "virtualmachines"]
    matches = [
        s
        for s in vm_skus
        if (s.name or "").lower() == cluster.vm_size.lower()
        and location in [loc.lower() for loc in s.locations or []]
    ]
    if not matches:
        catalog = GPU_VM_SIZES if cluster.gpus_per_node else CPU_VM_SIZES
        offered = sorted(
            s.name
            for s in vm_skus
            if s.name in catalog
            and location in [loc.lower() for loc in s.locations or []]
            and not _blocked(s, location)
        )
        hint = f"; supported sizes offered there: {', '.join(offered)}" if offered else ""
        return Check(name, False, f"{cluster.vm_size} is not offered in {location}{hint}"), None
    sku = matches[0]
    blocked = _blocked(sku, location)
    if blocked:
        code = blocked[0].reason_code
        reason = getattr(code, "value", code) or "restricted"  # the SDK returns an enum
        return (
            Check(
                name,
                False,
                f"{cluster.vm_size} exists in {location} but not for this subscription "
                f"({reason}): request access in a support ticket or choose another region",
            ),
            None,
        )
    info = SkuInfo(
        family=sku.family or "",
        vcpus=int(_capability(sku, "vCPUs") or cluster.vcpus_per_node),
        low_priority_capable=(_capability(sku, "LowPriorityCapable") or "True") == "True",
    )
    if cluster.priority == "LowPriority" and not info.low_priority_capable:
        return (
            Check(name, False, f"{cluster.vm_size} cannot run as LowPriority in {location}"),
            info,
        )
    zones = [r for r in sku.restrictions or [] if r.type == "Zone"]
    note = " (some availability zones restricted)" if zones else ""
    return Check(name, True, f"family {info.family}, {info.vcpus} vCPUs per node{note}"), info


def list_ml_usages(client: Any, subscription_id: str, location: str) -> list[Usage]:
    """Azure ML vCPU usages and limits in ``location`` (all pages)."""
    url: str | None = (
        f"/subscriptions/{subscription_id}/providers/Microsoft.MachineLearningServices"
        f"/locations/{location}/usages?api-version={ML_USAGES_API_VERSION}"
    )
    usages: list[Usage] = []
    while url:
        response = client.send_request(HttpRequest("GET", url))
        response.raise_for_status()
        page = response.json()
        for item in page.get("value", []):
            usages.append(
                Usage(
                    type=item.get("type", ""),
                    name=(item.get("name") or {}).get("value", ""),
                    used=int(item.get("currentValue", 0)),
                    limit=int(item.get("limit", 0)),
                )
            )
        url = page.get("nextLink")
    return usages


def _family_usage(usages: Sequence[Usage], family: str) -> Usage | None:
    wanted = _normalise(family) + "clusterdedicatedvcpus"
    return next(
        (u for u in usages if u.type == FAMILY_USAGE and _normalise(u.name) == wanted), None
    )


def _quota_check(name: str, usage: Usage, needed: int) -> Check:
    limit, used = usage.limit, usage.used
    if limit < 0:
        return Check(name, True, f"no separate limit; {used} vCPUs in use")
    free = limit - used
    verdict = "enough" if needed <= free else "NOT enough"
    detail = (
        f"{needed} vCPUs needed at max nodes, {free} free ({used} of {limit} in use): {verdict}"
    )
    if needed > free:
        detail += "; request more in the Azure portal (Azure ML studio > Quota) or lower max nodes"
    return Check(name, needed <= free, detail)


def check_quota(
    usages: Sequence[Usage], sized: Sequence[tuple[ClusterSpec, SkuInfo]], location: str
) -> list[Check]:
    """Azure ML vCPU quota in ``location`` for each cluster's family and for the region total."""
    checks: list[Check] = []
    totals: dict[str, int] = {"Dedicated": 0, "LowPriority": 0}
    for cluster, info in sized:
        needed = info.vcpus * cluster.max_nodes
        totals[cluster.priority] += needed
        if cluster.priority != "Dedicated":
            continue  # low-priority quota is one regional pool (checked below)
        usage = _family_usage(usages, info.family)
        name = f"{cluster.name}: Azure ML quota for {info.family} in {location}"
        if usage is None:
            checks.append(
                Check(name, False, f"no Azure ML quota entry for {info.family} in {location}")
            )
        else:
            checks.append(_quota_check(f"{cluster.name}: {usage.name}", usage, needed))
    for priority, usage_type in (
        ("Dedicated", DEDICATED_USAGE),
        ("LowPriority", LOW_PRIORITY_USAGE),
    ):
        if not totals[priority]:
            continue
        usage = next((u for u in usages if u.type == usage_type), None)
        name = f"Azure ML regional {priority} vCPUs in {location}"
        if usage is None:
            checks.append(Check(name, False, "the usage API returned no regional total"))
        else:
            checks.append(_quota_check(usage.name or name, usage, totals[priority]))
    return checks


def run_preflight(cfg: InfraConfig, client: Any, subscription_id: str) -> list[Check]:
    """All checks for the configured clusters; ``PreflightError`` if Azure cannot be asked."""
    try:
        skus = list(client.resource_skus.list(filter=f"location eq '{cfg.location}'"))
        checks: list[Check] = []
        sized: list[tuple[ClusterSpec, SkuInfo]] = []
        for cluster in cfg.clusters:
            check, info = check_sku(skus, cfg.location, cluster)
            checks.append(check)
            if info is not None:
                sized.append((cluster, info))
        if sized:
            usages = list_ml_usages(client, subscription_id, cfg.location)
            checks += check_quota(usages, sized, cfg.location)
    except ClientAuthenticationError as exc:
        raise PreflightError(
            "cannot sign in to Azure: run `az login` (or set AZURE_CLIENT_ID, AZURE_TENANT_ID "
            f"and a secret or federated token) and try again ({_first_line(exc)})"
        ) from exc
    except HttpResponseError as exc:
        raise PreflightError(
            f"Azure refused the request ({exc.status_code}): {_first_line(exc)}. Check the "
            "subscription ID and that you have Reader on it."
        ) from exc
    return checks


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def make_client(credential: Any, subscription_id: str, **client_kwargs: Any) -> Any:
    """The management client ``run_preflight`` needs (``client_kwargs``: e.g. ``transport``)."""
    from azure.mgmt.compute import ComputeManagementClient

    return ComputeManagementClient(credential, subscription_id, **client_kwargs)


def format_report(checks: Iterable[Check]) -> str:
    return "\n".join(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in checks)
