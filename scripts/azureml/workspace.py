"""Which Azure ML workspace a command talks to, and an ``MLClient`` for it.

The workspace and the GPU cluster come from the Pulumi stack's outputs (``pulumi up`` created
them; ``scripts.infra.read_stack_outputs`` reads them), or from explicit flags/environment
variables for a workspace made some other way.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scripts import UserError

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential

    from infra.outputs import StackOutputs


@dataclass(frozen=True)
class Target:
    """Where jobs go: the workspace, and the cluster that runs them."""

    subscription_id: str
    resource_group: str
    workspace_name: str
    compute: str | None
    max_nodes: int | None  # nodes the compute can scale to, when known
    source: str  # how it was found, for messages
    # the stack outputs it was read from (None when the flags named the workspace): commands
    # that need more of them (Log Analytics, the CPU cluster) read them here, not again
    outputs: StackOutputs | None = None


_WORKSPACE_FLAGS = {  # flag: (environment variable that is its default, help)
    "--subscription": ("AZURE_SUBSCRIPTION_ID", "Azure subscription ID"),
    "--resource-group": ("AZURE_RESOURCE_GROUP", "resource group of the workspace"),
    "--workspace": ("AZUREML_WORKSPACE_NAME", "Azure ML workspace name"),
}


def add_workspace_arguments(parser: argparse.ArgumentParser, *, compute: bool = True) -> None:
    """The flags that name the workspace (and with ``compute``, the cluster jobs run on)."""
    what = "workspace and GPU cluster" if compute else "workspace"
    group = parser.add_argument_group(
        "workspace",
        f"By default the Pulumi stack's outputs name the {what}; all three of --subscription, "
        "--resource-group and --workspace name another workspace.",
    )
    group.add_argument("--stack", help="Pulumi stack to read (default: the selected stack)")
    for flag, (variable, meaning) in _WORKSPACE_FLAGS.items():
        group.add_argument(
            flag, default=os.environ.get(variable), help=f"{meaning} (default: ${variable})"
        )
    if compute:
        group.add_argument(
            "--compute", help="compute cluster for the job (default: the stack's GPU cluster)"
        )


def resolve_target(args: argparse.Namespace) -> Target:
    """The workspace from the flags when all three are given, else from the stack outputs.

    ``args`` comes from a parser with ``add_workspace_arguments``; without ``--compute`` there
    (``compute=False``) the target names no cluster.
    """
    flags = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in _WORKSPACE_FLAGS}
    given = [flag for flag, value in flags.items() if value]
    wants_compute = hasattr(args, "compute")
    compute = getattr(args, "compute", None)
    if len(given) == len(flags):
        return Target(
            args.subscription, args.resource_group, args.workspace, compute, None, "the flags"
        )
    if given:
        absent = [flag for flag, value in flags.items() if not value]
        raise UserError(
            f"Which workspace? {', '.join(given)} alone names only part of one: also pass "
            f"{' and '.join(absent)} (or set "
            f"{' and '.join(_WORKSPACE_FLAGS[flag][0] for flag in absent)}), or none of the "
            "three to use the Pulumi stack's workspace."
        )
    from scripts.infra import read_stack_outputs

    try:
        outputs = read_stack_outputs(args.stack)
    except UserError as exc:
        raise UserError(
            f"{exc}\n(or name a workspace made another way: --subscription, --resource-group, "
            "--workspace" + (" and --compute)" if wants_compute else ")")
        ) from None
    stack = f"stack {args.stack}" if args.stack else "the selected stack"
    on_gpu = wants_compute and compute in (None, outputs.gpu_cluster)
    return Target(
        outputs.subscription_id,
        outputs.resource_group,
        outputs.workspace_name,
        (compute or outputs.gpu_cluster) if wants_compute else None,
        outputs.gpu_max_nodes if on_gpu else None,
        stack,
        outputs,
    )


def make_client(
    target: Target, *, credential: TokenCredential | None = None, **client_kwargs: Any
) -> MLClient:
    """An ``MLClient`` for ``target``, signed in like the Azure CLI (``az login``) by default.

    ``credential`` and ``client_kwargs`` (e.g. ``transport=``) reach azure-ai-ml unchanged.
    """
    from scripts.jobspec import quiet_sdk

    quiet_sdk()
    from azure.ai.ml import MLClient

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    client_kwargs.setdefault("show_progress", False)
    return MLClient(
        credential,
        target.subscription_id,
        target.resource_group,
        target.workspace_name,
        **client_kwargs,
    )


def connect(
    args: argparse.Namespace, *, credential: TokenCredential | None = None, **client_kwargs: Any
) -> tuple[Target, MLClient]:
    """The workspace the command's arguments name (``resolve_target``) and an ``MLClient`` for
    it (``make_client``; ``credential`` and ``client_kwargs`` are for tests)."""
    target = resolve_target(args)
    return target, make_client(target, credential=credential, **client_kwargs)
