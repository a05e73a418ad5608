"""``preflight``: VM size availability and Azure ML quota, asked of Azure through the SDK's real
HTTP pipeline, answered offline by constructed ARM responses (no credentials, no network)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError

import scripts.infra
from infra.config import load_project, validate_config
from scripts import UserError
from scripts.preflight import PreflightError, make_client, run_preflight
from tests.azure_fakes import (
    SUBSCRIPTION,
    TOKEN,
    FakeWorkspace,
    StaticCredential,
    ml_usage,
    vm_sku,
)

SKUS = r"/subscriptions/[^/]+/providers/Microsoft\.Compute/skus$"
USAGES = r"/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[a-z0-9]+)/usages$"
T4 = ("Standard_NC4as_T4_v3", "standardNCASv3_T4Family", 4)
DS3 = ("Standard_DS3_v2", "standardDSv2Family", 4)


def _skus(location: str, *extra: dict[str, Any], t4: dict[str, Any] | None = None) -> dict:
    return {
        "value": [
            t4 or vm_sku(*T4, location, gpus=1),
            vm_sku(*DS3, location),
            vm_sku("Standard_NC24ads_A100_v4", "StandardNCADSA100v4Family", 24, location, gpus=1),
            *extra,
        ]
    }


def _usages(t4_limit: int = 24, t4_used: int = 0, total_limit: int = 100) -> dict:
    t4_family = "Standard NCASv3_T4 Family Cluster Dedicated vCPUs"
    return {
        "value": [
            ml_usage("totalCores", "Clusters", 1, 200),
            ml_usage("dedicatedCores", "Total Cluster Dedicated Regional vCPUs", 8, total_limit),
            ml_usage("vmFamily", t4_family, t4_used, t4_limit),
            ml_usage("vmFamily", "Standard DSv2 Family Cluster Dedicated vCPUs", 8, 24),
            ml_usage("lowPriorityCores", "Total Cluster LowPriority Regional vCPUs", 0, 6),
            ml_usage("vmFamily", "Standard NCASv3_T4 Family Cluster LowPriority vCPUs", 0, -1),
        ]
    }


def _arm(routes: dict[str, tuple[int, Any]]) -> FakeWorkspace:
    """The offline Azure, answering GETs whose path matches a route with (status, body)."""
    fake = FakeWorkspace()
    for pattern, (status, body) in routes.items():
        fake.answer("GET", pattern, status, body)
    return fake


BASELINE = {
    "profile": "standard",
    "gpuPriority": "Dedicated",
    "gpuVmSize": "Standard_NC4as_T4_v3",
    "gpuMaxNodes": 2,
}


def _run(config: dict[str, Any], routes: dict[str, tuple[int, Any]]):
    fake = _arm(routes)
    credential = StaticCredential()
    client = make_client(credential, SUBSCRIPTION, transport=fake.transport())
    # The template's defaults, stated: a fork baked with other defaults runs the same checks.
    checks = run_preflight(validate_config({**BASELINE, **config}), client, SUBSCRIPTION)
    return checks, fake, credential


def test_a_ready_region_passes_every_check_and_asks_azure_the_right_questions() -> None:
    checks, fake, credential = _run(
        {"location": "westeurope"},
        {SKUS: (200, _skus("westeurope")), USAGES: (200, _usages())},
    )
    assert all(c.ok for c in checks), checks
    names = [c.name for c in checks]
    assert names == [
        "gpu-cluster: Standard_NC4as_T4_v3 offered in westeurope",
        "cpu-cluster: Standard_DS3_v2 offered in westeurope",
        "gpu-cluster: Standard NCASv3_T4 Family Cluster Dedicated vCPUs",
        "cpu-cluster: Standard DSv2 Family Cluster Dedicated vCPUs",
        "Total Cluster Dedicated Regional vCPUs",
    ]
    # 2 nodes x 4 vCPUs for each cluster; the regional total counts both clusters.
    assert "8 vCPUs needed at max nodes, 24 free" in checks[2].detail
    assert "16 vCPUs needed at max nodes, 92 free (8 of 100 in use)" in checks[4].detail
    skus_request, usages_request = fake.requests
    assert skus_request.method == "GET"
    assert f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/skus" in skus_request.url
    assert "%24filter=location+eq+%27westeurope%27" in skus_request.url or (
        "$filter=location%20eq%20%27westeurope%27" in skus_request.url
    )
    assert re.search(USAGES, usages_request.url.split("?")[0])
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in fake.requests)
    assert credential.scopes[0] == "https://management.azure.com/.default"


def test_not_enough_family_quota_fails_with_numbers_and_the_fix() -> None:
    checks, _, _ = _run(
        {"location": "westeurope", "gpuMaxNodes": 4},
        {SKUS: (200, _skus("westeurope")), USAGES: (200, _usages(t4_limit=12, t4_used=8))},
    )
    failed = [c for c in checks if not c.ok]
    assert [c.name for c in failed] == [
        "gpu-cluster: Standard NCASv3_T4 Family Cluster Dedicated vCPUs"
    ]
    assert "16 vCPUs needed at max nodes, 4 free (8 of 12 in use): NOT enough" in failed[0].detail
    assert "request more" in failed[0].detail


def test_the_regional_total_is_checked_across_clusters() -> None:
    checks, _, _ = _run(
        {"location": "westeurope"},
        {SKUS: (200, _skus("westeurope")), USAGES: (200, _usages(total_limit=20))},
    )
    (failed,) = [c for c in checks if not c.ok]
    assert failed.name == "Total Cluster Dedicated Regional vCPUs"
    assert "16 vCPUs needed at max nodes, 12 free" in failed.detail


def test_a_size_missing_from_the_region_lists_what_is_offered() -> None:
    checks, fake, _ = _run(
        {"location": "westeurope", "gpuVmSize": "Standard_NC40ads_H100_v5", "cpuCluster": False},
        {SKUS: (200, _skus("westeurope")), USAGES: (200, _usages())},
    )
    (check,) = checks
    assert not check.ok
    assert check.detail == (
        "Standard_NC40ads_H100_v5 is not offered in westeurope; supported sizes offered there: "
        "Standard_NC24ads_A100_v4, Standard_NC4as_T4_v3"
    )
    assert len(fake.requests) == 1  # no quota question for a size that does not exist


def test_a_size_restricted_for_the_subscription_fails() -> None:
    blocked = vm_sku(*T4, "eastus", gpus=1, restricted_for_subscription=True)
    checks, _, _ = _run(
        {"location": "eastus"},
        {SKUS: (200, _skus("eastus", t4=blocked)), USAGES: (200, _usages())},
    )
    gpu = checks[0]
    assert not gpu.ok
    assert "not for this subscription (NotAvailableForSubscription)" in gpu.detail


def test_low_priority_uses_the_regional_low_priority_pool() -> None:
    checks, _, _ = _run(
        {"location": "westeurope", "gpuPriority": "LowPriority", "cpuCluster": False},
        {SKUS: (200, _skus("westeurope")), USAGES: (200, _usages())},
    )
    assert [c.name for c in checks] == [
        "gpu-cluster: Standard_NC4as_T4_v3 offered in westeurope",
        "Total Cluster LowPriority Regional vCPUs",
    ]
    assert not checks[1].ok and "8 vCPUs needed at max nodes, 6 free" in checks[1].detail


def test_a_size_that_cannot_be_low_priority_fails() -> None:
    no_spot = vm_sku(*T4, "westeurope", gpus=1, low_priority=False)
    checks, _, _ = _run(
        {"location": "westeurope", "gpuPriority": "LowPriority", "cpuCluster": False},
        {SKUS: (200, _skus("westeurope", t4=no_spot)), USAGES: (200, _usages())},
    )
    assert not checks[0].ok and "cannot run as LowPriority" in checks[0].detail


def test_paged_usages_are_followed() -> None:
    first, second = _usages()["value"][:3], _usages()["value"][3:]
    next_link = (
        f"https://management.azure.com/subscriptions/{SUBSCRIPTION}/providers/"
        "Microsoft.MachineLearningServices/locations/westeurope/usagesPage2?api-version=2024-04-01"
    )
    checks, fake, _ = _run(
        {"location": "westeurope"},
        {
            SKUS: (200, _skus("westeurope")),
            USAGES: (200, {"value": first, "nextLink": next_link}),
            r"/usagesPage2$": (200, {"value": second}),
        },
    )
    assert all(c.ok for c in checks)
    assert len(fake.requests) == 3


def test_an_authorization_failure_is_explained() -> None:
    denied = {
        "error": {
            "code": "AuthorizationFailed",
            "message": "The client does not have authorization to perform action "
            "'Microsoft.Compute/skus/read' over scope '/subscriptions/x'.",
        }
    }
    with pytest.raises(PreflightError, match=r"Azure refused the request \(403\).*Reader"):
        _run({"location": "westeurope"}, {SKUS: (403, denied)})


class _NoLogin:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return self.get_token(*scopes)


# --- the command ----------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    scripts.infra.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_the_command_prints_a_report_and_exits_zero_when_ready(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _arm({SKUS: (200, _skus("westeurope")), USAGES: (200, _usages())})
    args = _parse(["preflight", "--stack", "dev", "--subscription", SUBSCRIPTION])
    # The dev example stack asks for low-priority GPU nodes: 8 vCPUs > 6 in the pool.
    code = args.func(args, credential=StaticCredential(), transport=fake.transport())
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("preflight for stack dev (westeurope, profile standard):")
    assert "FAIL  Total Cluster LowPriority Regional vCPUs: 8 vCPUs needed" in out
    assert "ok    gpu-cluster: Standard_NC4as_T4_v3 offered in westeurope" in out
    assert out.rstrip().endswith("before `pulumi up`")


def test_the_command_takes_the_subscription_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    usages = _usages(total_limit=200)
    a100 = "Standard NCADSA100v4 Family Cluster Dedicated vCPUs"
    usages["value"].append(ml_usage("vmFamily", a100, 0, 96))
    fake = _arm({SKUS: (200, _skus("westeurope")), USAGES: (200, usages)})
    args = _parse(["preflight", "--stack", "prod"])
    assert args.func(args, credential=StaticCredential(), transport=fake.transport()) == 0
    out = capsys.readouterr().out
    # prod: 4 A100 nodes x 24 vCPUs = 96 of the family's 96, plus 8 for the CPU cluster.
    assert f"ok    gpu-cluster: {a100}: 96 vCPUs needed at max nodes, 96 free" in out
    assert "ready: `pulumi up --stack prod`" in out
    assert SUBSCRIPTION in fake.requests[0].url


def test_the_command_without_a_subscription_says_how_to_find_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    args = _parse(["preflight"])
    with pytest.raises(UserError, match="az account show --query id"):
        args.func(args, credential=StaticCredential())


def test_the_command_reports_config_errors_as_user_errors(tmp_path: Path) -> None:
    args = _parse(["preflight", "--stack", "nosuchstack", "--subscription", SUBSCRIPTION])
    with pytest.raises(UserError, match="pulumi stack init nosuchstack"):
        args.func(args, credential=StaticCredential())
    args = _parse(["preflight", "--subscription", "my-subscription"])
    with pytest.raises(UserError, match="not a subscription ID"):
        args.func(args, credential=StaticCredential())


def test_the_command_turns_a_missing_login_into_a_user_error() -> None:
    fake = _arm({SKUS: (200, _skus("westeurope"))})
    args = _parse(["preflight", "--subscription", SUBSCRIPTION])
    with pytest.raises(UserError, match="run `az login`"):
        args.func(args, credential=_NoLogin(), transport=fake.transport())
    assert fake.requests == []  # nothing is sent without a token


def test_preflight_is_registered_with_the_command_line() -> None:
    main_source = (load_project.__globals__["PROJECT_ROOT"] / "scripts" / "__main__.py").read_text()
    assert '"scripts.infra"' in main_source
