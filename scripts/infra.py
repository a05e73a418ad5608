"""Infrastructure commands, and how the other commands find the platform.

- ``python -m scripts preflight [--stack dev] [--subscription ID]``: before ``pulumi up``, check
  that the configured VM sizes are offered in the region and that Azure ML has the vCPU quota
  for them.
- ``read_stack_outputs(stack)``: the stack outputs of ``pulumi up`` (workspace, clusters,
  storage, identity, ...) for the job and serving commands, with clear errors when there is no
  Pulumi CLI, no login or no deployed stack.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from infra.config import (
    GUID,
    PROJECT_ROOT,
    ConfigError,
    load_project,
    read_stack_values,
    validate_config,
)
from infra.outputs import StackOutputs, parse_stack_outputs
from scripts import UserError

PULUMI_TIMEOUT_SECONDS = 120


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "preflight",
        help="check VM size availability and Azure ML quota in the region before `pulumi up`",
        description=(
            "Validate the stack config (Pulumi.yaml defaults + Pulumi.<stack>.yaml), then ask "
            "Azure whether each cluster's VM size is offered to this subscription in the region "
            "and whether the Azure ML vCPU quota covers max nodes. Signs in like the Azure CLI "
            "and SDKs do (az login, environment variables or a managed identity). Exit status: "
            "0 ready, 1 a check failed, 2 a usage or sign-in problem."
        ),
    )
    parser.add_argument(
        "--stack", default="dev", help="stack whose config to check (default: %(default)s)"
    )
    parser.add_argument(
        "--subscription",
        default=None,
        help="Azure subscription ID (default: the AZURE_SUBSCRIPTION_ID environment variable)",
    )
    parser.set_defaults(func=preflight)


def preflight(args: argparse.Namespace, *, credential: Any = None, **client_kwargs: Any) -> int:
    """Run the checks and print one line each; ``credential``/``client_kwargs`` are for tests."""
    from scripts.preflight import PreflightError, format_report, make_client, run_preflight

    project = load_project()
    try:
        cfg = validate_config(read_stack_values(args.stack, project), project)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    subscription = args.subscription or os.environ.get("AZURE_SUBSCRIPTION_ID", "")
    if not subscription:
        raise UserError(
            "no Azure subscription: pass --subscription ID or set AZURE_SUBSCRIPTION_ID "
            "(`az account show --query id -o tsv` prints yours)"
        )
    if not GUID.match(subscription):
        raise UserError(f"--subscription: {subscription!r} is not a subscription ID (a GUID)")
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    client = make_client(credential, subscription, **client_kwargs)
    try:
        checks = run_preflight(cfg, client, subscription)
    except PreflightError as exc:
        raise UserError(str(exc)) from None
    print(f"preflight for stack {args.stack} ({cfg.location}, profile {cfg.profile}):")
    print(format_report(checks))
    if all(check.ok for check in checks):
        print(f"ready: `pulumi up --stack {args.stack}`")
        return 0
    print("fix the failures above (or change the stack config) before `pulumi up`")
    return 1


def read_stack_outputs(stack: str | None = None, *, cwd: Path = PROJECT_ROOT) -> StackOutputs:
    """The outputs of the deployed stack (``pulumi stack output --json``) as ``StackOutputs``.

    ``stack=None`` means the currently selected stack. Raises ``scripts.UserError`` with the
    fix when the Pulumi CLI is missing, nobody is logged in, the stack does not exist or was
    never deployed.
    """
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise UserError(
            "the Pulumi CLI is not installed (it reads what `pulumi up` deployed): install it "
            "from https://www.pulumi.com/docs/install/ and run `pulumi up` first"
        )
    command = [pulumi, "stack", "output", "--json", "--non-interactive"]
    if stack:
        command += ["--stack", stack]
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=PULUMI_TIMEOUT_SECONDS,
            env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"`pulumi stack output` did not answer in {PULUMI_TIMEOUT_SECONDS} s: "
            "check the connection to your Pulumi backend (`pulumi whoami -v`)"
        ) from None
    name = f"stack {stack!r}" if stack else "the selected stack"
    if result.returncode != 0:
        raise UserError(_explain_pulumi_error(result.stderr or result.stdout, stack))
    try:
        data = json.loads(result.stdout or "{}")
    except json.JSONDecodeError:
        raise UserError(f"`pulumi stack output --json` printed no JSON for {name}") from None
    if not data:
        raise UserError(f"{name} has no outputs: deploy it with `pulumi up` first")
    try:
        return parse_stack_outputs(data)
    except ValueError as exc:
        raise UserError(
            f"{exc} ({name}): it was deployed by an older infra/; run `pulumi up` again"
        ) from None


def _explain_pulumi_error(stderr: str, stack: str | None) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if "error" in line.lower()), None)
    detail = detail or (lines[-1] if lines else "no message")
    text = stderr.lower()
    if "no stack named" in text or "could not find stack" in text:
        fix = f"create it with `pulumi stack init {stack}` and `pulumi up`, or pass another stack"
    elif "no stack selected" in text:
        fix = "choose one with `pulumi stack select <name>` or pass the stack name"
    elif "passphrase" in text:
        fix = "set PULUMI_CONFIG_PASSPHRASE (or _FILE) to the passphrase of this stack"
    elif any(
        marker in text
        for marker in ("pulumi login", "pulumi_access_token", "not logged in", "unauthorized")
    ):
        fix = (
            "log in to the backend that holds the stack: `pulumi login` (or `pulumi login --local`)"
        )
    else:
        fix = "run `pulumi stack output --json` yourself to see the whole message"
    return f"cannot read the stack outputs: {detail}\n{fix}"
