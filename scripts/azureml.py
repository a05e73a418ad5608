"""Azure ML from the command line: which workspace, an MLClient for it, and errors in plain words.

The workspace and the GPU cluster come from the Pulumi stack's outputs (``pulumi up`` created
them; ``scripts.infra.read_stack_outputs`` reads them), or from explicit flags/environment
variables for a workspace made some other way. Azure's errors that users actually hit (not
signed in, no permission, quota, a failed image build, a missing cluster) become one sentence
that says what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripts import UserError

if TYPE_CHECKING:
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


def make_client(target: Target, *, credential: Any = None, **client_kwargs: Any) -> Any:
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
    args: argparse.Namespace, *, credential: Any = None, **client_kwargs: Any
) -> tuple[Target, Any]:
    """The workspace the command's arguments name (``resolve_target``) and an ``MLClient`` for
    it (``make_client``; ``credential`` and ``client_kwargs`` are for tests)."""
    target = resolve_target(args)
    return target, make_client(target, credential=credential, **client_kwargs)


@contextlib.contextmanager
def azure_errors(target: Target | None = None) -> Iterator[None]:
    """Azure and azure-ai-ml errors raised inside become the one-sentence ``UserError``."""
    from azure.ai.ml.exceptions import MlException
    from azure.core.exceptions import AzureError

    try:
        yield
    except (AzureError, MlException) as exc:
        raise user_error(exc, target) from None


# ---------------------------------------------------------------------------- errors

_SIGN_IN = (
    "you are not signed in to Azure, or the sign-in expired: run `az login` "
    "(and `az account set --subscription <id>`), then retry"
)


def explain(exc: BaseException, target: Target | None = None) -> str | None:
    """One sentence and the fix for an Azure error users hit, or None when it is none of those."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
    )

    workspace = f"workspace {target.workspace_name}" if target else "the workspace"
    if isinstance(exc, ClientAuthenticationError):
        return _SIGN_IN
    text = _error_text(exc)
    lowered = text.lower()
    if "imagebuild" in lowered.replace(" ", "") or "image build" in lowered:
        return (
            f"Azure ML could not build the job's environment image ({_first_line(text)}): read "
            "the image build log in studio (the job's Outputs + logs), fix the pins in "
            "training/environments/<environment>/, bump its version and submit again"
        )
    if "quota" in lowered:
        return (
            "the subscription's Azure ML vCPU quota for this VM family in the region is used up "
            f"({_first_line(text)}): request more quota in the Azure portal (Quotas, Machine "
            "learning) or check with `python -m scripts preflight`; or lower gpuMaxNodes, or set "
            "gpuPriority to LowPriority, which draws on a separate quota"
        )
    if "does not exist in workspace" in lowered:
        return (
            f"{_first_line(text).rstrip('.')}: fix the name in the spec, or register it first "
            "(`python -m scripts register-data` for MNIST; `submit` registers the environments "
            "of training/environments/ by itself)"
        )
    status = getattr(exc, "status_code", None)
    refused = isinstance(exc, HttpResponseError) and status in (401, 403)
    if refused or "authorizationfailed" in lowered:
        return (
            f"{_refused(exc) + ': ' if refused else ''}the signed-in identity may not use "
            f"{workspace} ({_first_line(text)}): ask an owner "
            "for the AzureML Data Scientist role (Pulumi config dataScientistUsers or "
            "dataScientistGroups) or sign in as someone who has it (`az login`)"
        )
    missing = isinstance(exc, HttpResponseError) and status == 404
    if missing and target and _is_workspace(exc, target):
        return (
            f"{workspace} was not found in resource group {target.resource_group} of "
            f"subscription {target.subscription_id}: check the names, or deploy it with `pulumi up`"
        )
    if isinstance(exc, ServiceRequestError):
        return f"cannot reach Azure ({_first_line(text)}): check the network connection or proxy"
    return None


def _is_workspace(exc: Any, target: Target) -> bool:
    """Whether a 404 is about the workspace itself rather than something in it.

    ARM says so for any path below a missing workspace: "The Resource
    'Microsoft.MachineLearningServices/workspaces/NAME' under resource group ... was not found".
    """
    request = getattr(getattr(exc, "response", None), "request", None)
    path = str(getattr(request, "url", "")).split("?")[0].rstrip("/")
    if path.lower().endswith(f"/workspaces/{target.workspace_name}".lower()):
        return True
    pattern = rf"workspaces/{re.escape(target.workspace_name)}'\s+under resource group"
    return re.search(pattern, _error_text(exc), re.IGNORECASE) is not None


def user_error(exc: BaseException, target: Target | None = None) -> UserError:
    """An Azure or azure-ai-ml error as the ``UserError`` a user reads: explained when it is
    one users hit, else the service's own message in one line."""
    return translate(exc, target) or UserError(f"{_refused(exc)}: {_first_line(_error_text(exc))}")


def _refused(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    return f"Azure ML refused the request{f' (HTTP {status})' if status else ''}"


def _error_text(exc: BaseException) -> str:
    parts = [str(exc)]
    error = getattr(exc, "error", None)
    if error is not None:
        parts += [str(getattr(error, "code", "")), str(getattr(error, "message", ""))]
    return " ".join(part for part in parts if part)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(text: str) -> str:
    """The message in an error's text: a JSON body's, azure-ai-ml's "(x) ..." details, or
    the first meaningful line."""
    text = _ANSI.sub("", text)
    details = re.findall(r"^\(x\) (.+)$", text, re.MULTILINE)
    if details:
        return "; ".join(line.strip() for line in details)[:300]
    try:  # a JSON error body (what a failed job's stream raises)
        data = json.loads(text[text.index("{") :])
        found = _find_message(data)
        if found:
            return found
    except ValueError:
        pass
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith(("Code:", "Message:"))
    ]
    return (lines[0] if lines else text)[:300]


def _find_message(data: Any) -> str | None:
    if isinstance(data, dict):
        if isinstance(data.get("message"), str) and data["message"]:
            return data["message"][:300]
        for value in data.values():
            found = _find_message(value)
            if found:
                return found
    return None


def translate(exc: BaseException, target: Target | None = None) -> UserError | None:
    """``explain`` as a ``UserError`` (None when the error is not one to explain)."""
    message = explain(exc, target)
    return UserError(message) if message else None


# ---------------------------------------------------------------------------- jobs


def prepare_job(spec: Any, target: Target | None) -> Any:
    """The spec's job set up for ``target``: its compute, and no more parallelism than nodes.

    The compute comes from the stack (or ``--compute``), never from the YAML, so a fork renames
    its cluster in one place. Raises ``UserError`` when the job needs more nodes than the
    cluster can have, which would otherwise queue forever.
    """
    job = spec.job
    if target is not None and target.compute:
        if job.type == "pipeline":
            job.settings.default_compute = target.compute
        else:
            job.compute = target.compute
    max_nodes = target.max_nodes if target else None
    if max_nodes:
        resources = getattr(spec.step, "resources", None)
        nodes = int(getattr(resources, "instance_count", None) or 1)
        if nodes > max_nodes:
            raise UserError(
                f"{spec.path.name} asks for {nodes} nodes but cluster {target.compute} scales to "
                f"{max_nodes}: raise gpuMaxNodes in the stack config and `pulumi up`, or "
                f"--set jobs.{spec.step_name}.resources.instance_count={max_nodes}"
            )
        limits = getattr(spec.step, "limits", None)
        if spec.kind == "sweep" and limits is not None:
            concurrent = limits.max_concurrent_trials or max_nodes
            limits.max_concurrent_trials = min(concurrent, max_nodes)
    return job


def check_compute(ml_client: Any, target: Target) -> None:
    """Fail early, in plain words, when the cluster does not exist."""
    from azure.core.exceptions import ResourceNotFoundError

    if not target.compute:
        raise UserError(
            "no compute for the job: pass --compute NAME, or deploy the stack (`pulumi up`), "
            "whose gpuClusterName output names the GPU cluster"
        )
    try:
        ml_client.compute.get(target.compute)
    except ResourceNotFoundError as exc:
        if _is_workspace(exc, target):
            raise user_error(exc, target) from None
        raise UserError(
            f"compute cluster {target.compute!r} does not exist in workspace "
            f"{target.workspace_name}: `pulumi up` creates the stack's clusters, or pass "
            "--compute with an existing cluster (`az ml compute list`)"
        ) from None


def ensure_assets(ml_client: Any, spec: Any, sink: Any) -> list[str]:
    """Register the environments and data assets the job names that this repository defines.

    Only what the workspace lacks is created (one GET each otherwise): a registered
    environment's image is built once, on its first job, and reused by every later one.
    Returns ``kind name:version`` for each asset created.
    """
    from azure.ai.ml import load_data, load_environment
    from azure.core.exceptions import ResourceNotFoundError

    from scripts.jobspec import asset_refs, local_asset_specs

    specs = local_asset_specs()
    created = []
    for ref in asset_refs(spec):
        local = specs.get((ref.kind, ref.name))
        if local is None or (ref.version and ref.version != local.version):
            continue  # not ours to create: the service says if it is missing
        operations = ml_client.environments if ref.kind == "environment" else ml_client.data
        try:
            operations.get(ref.name, version=local.version)
            continue
        except ResourceNotFoundError:
            pass
        loader = load_environment if ref.kind == "environment" else load_data
        operations.create_or_update(loader(local.path))
        created.append(f"{ref.kind} {ref.name}:{local.version}")
        detail = (
            "Azure ML builds its image on the first job that uses it (10-20 min); later jobs "
            "reuse it"
            if ref.kind == "environment"
            else "jobs read it from there"
        )
        sink.write(
            f"registered {ref.kind} {ref.name}:{local.version} from {local.path.name}: {detail}\n"
        )
    return created


@contextlib.contextmanager
def staged_code(spec: Any) -> Iterator[None]:
    """Point the step at a copy of just the files Azure ML would upload as its code.

    azure-ai-ml walks the whole code folder and filters file by file; for the repository
    root that means walking .venv and .git (seconds, on every submit). This copies what the
    folder's .amlignore lets through, pruning ignored folders instead of walking them, into a
    temporary folder of the same name, and points the component there while it is uploaded.
    """
    from azure.ai.ml._utils._asset_utils import get_ignore_file

    component = spec.component
    code = getattr(component, "code", None)
    if (
        not isinstance(code, str | os.PathLike)
        or "://" in str(code)
        or str(code).startswith("azureml:")
    ):
        yield
        return
    base = Path(getattr(component, "base_path", None) or spec.path.parent)
    source = (base / code).resolve()
    ignore = get_ignore_file(source)
    if not source.is_dir() or not ignore.exists():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="code-") as tmp:
        target = Path(tmp) / source.name
        for folder, subfolders, files in os.walk(source):
            here = Path(folder)
            subfolders[:] = [d for d in subfolders if not ignore.is_file_excluded(here / d)]
            for name in files:
                if not ignore.is_file_excluded(here / name):
                    destination = target / (here / name).relative_to(source)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(here / name, destination)
        component.code = str(target)
        try:
            yield
        finally:
            component.code = code


def submit_job(
    ml_client: Any, spec: Any, target: Target, *, wait: bool = True, sink: Any, poll: float = 15.0
) -> Any:
    """Submit the prepared spec; with ``wait``, stream its logs and return once it finished.

    Raises ``UserError`` (translated) when the service refuses the job or the job fails.
    """
    from azure.ai.ml.exceptions import JobException

    job = prepare_job(spec, target)
    check_compute(ml_client, target)
    ensure_assets(ml_client, spec, sink)
    with staged_code(spec):
        created = ml_client.jobs.create_or_update(job)
    sink.write(f"submitted {created.name} to {target.compute} ({target.source})\n")
    if created.studio_url:
        sink.write(f"studio: {created.studio_url}\n")
    sink.flush()
    if not wait:
        return created
    try:
        follow(ml_client, created, sink=sink, poll=poll)
    except JobException as exc:
        if "streaming for the run interrupted" in str(exc):  # Ctrl-C while following
            raise UserError(
                f"stopped following job {created.name}; it keeps running on Azure ML "
                f"(studio: {created.studio_url}); stop it with `az ml job cancel -n "
                f"{created.name}` or in studio"
            ) from None
        reason = explain(exc, target) or _first_line(str(exc))
        raise UserError(
            f"job {created.name} failed: {reason} (studio: {created.studio_url})"
        ) from None
    return ml_client.jobs.get(created.name)


def follow(ml_client: Any, job: Any, *, sink: Any, poll: float = 15.0) -> None:
    """Stream the logs of the job's step (a pipeline's child), then wait for the job itself."""
    import time

    terminal = {"Completed", "Failed", "Canceled", "NotResponding"}
    if job.type == "pipeline":
        last = None
        while True:
            children = list(ml_client.jobs.list(parent_job_name=job.name))
            if children:
                sink.write(f"step {children[0].display_name or children[0].name}:\n")
                sink.flush()
                ml_client.jobs.stream(children[0].name)
                break
            status = str(getattr(ml_client.jobs.get(job.name).status, "value", ""))
            if status in terminal:
                break
            if status != last:  # queued behind an image build or a cluster scaling up
                sink.write(f"{job.name}: {status}, waiting for its step to start\n")
                sink.flush()
                last = status
            time.sleep(poll)
    ml_client.jobs.stream(job.name)


# ---------------------------------------------------------------------------- data


def register_data(ml_client: Any, *, folder: Any = None, sink: Any) -> Any:
    """Register the MNIST data asset from its spec (the public mirror), or upload ``folder``.

    The spec's version is left alone when it already exists; an upload becomes the next
    version. A folder is checked first (all four files, right content) so nothing broken is
    uploaded.
    """
    from pathlib import Path

    from azure.ai.ml import load_data
    from azure.core.exceptions import ResourceNotFoundError

    from scripts.jobspec import local_asset_specs

    spec = next(s for (kind, _), s in local_asset_specs().items() if kind == "data")
    data = load_data(spec.path)
    if folder is not None:
        from training.data import DataError, load_mnist

        folder = Path(folder).expanduser().resolve()
        try:
            load_mnist(folder)
        except DataError as exc:
            raise UserError(str(exc)) from None
        data.path, data.version = str(folder), None
        data.description = f"{data.description} (uploaded from {folder.name})"
    else:
        try:
            existing = ml_client.data.get(data.name, version=data.version)
            sink.write(f"data asset {existing.name}:{existing.version} exists ({existing.path})\n")
            return existing
        except ResourceNotFoundError:
            pass
    created = ml_client.data.create_or_update(data)
    sink.write(f"registered data asset {created.name}:{created.version} -> {created.path}\n")
    return created


# ---------------------------------------------------------------------------- models

MODEL_NAME = "tf-mnist"  # serving/deployment.yml deploys azureml:tf-mnist@latest
_FRAMEWORK_PIN = re.compile(
    r"^\s*-?\s*(?:tensorflow|tensorflow-cpu|tensorflow-gpu|tensorflow\[and-cuda\])==([\w.]+)",
    re.MULTILINE,
)


def model_tags(model_dir: Any) -> dict[str, str]:
    """What SDK v1's model_framework recorded, read from the MLflow model's own requirements."""
    from pathlib import Path

    model_dir = Path(model_dir)
    if not (model_dir / "MLmodel").is_file():
        raise UserError(
            f"{model_dir} is not an MLflow model (no MLmodel file): point at the model/ folder "
            "training wrote (OUTPUT_DIR/model)"
        )
    for name in ("requirements.txt", "conda.yaml"):
        path = model_dir / name
        text = path.read_text(errors="replace") if path.is_file() else ""
        match = _FRAMEWORK_PIN.search(text)
        if match:
            return {"framework": "TensorFlow", "framework_version": match.group(1)}
    raise UserError(
        f"{model_dir} does not say which TensorFlow made it (no tensorflow== in its "
        "requirements.txt or conda.yaml): was it written by training/train.py?"
    )


def register_model(
    ml_client: Any,
    *,
    model_dir: Any,
    job_name: str | None = None,
    output: str = "run",
    name: str = MODEL_NAME,
    sink: Any,
) -> Any:
    """Register an MLflow model, tagged with its framework and version.

    With ``job_name`` the model is registered from the job's output in the workspace (its
    lineage kept, nothing uploaded; ``model_dir`` is the downloaded copy that tells the
    TensorFlow version); without it, ``model_dir`` is uploaded.
    """
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    tags = model_tags(model_dir)
    path = f"azureml://jobs/{job_name}/outputs/{output}/paths/model" if job_name else str(model_dir)
    if job_name:
        tags["job"] = job_name
    model = Model(
        name=name,
        path=path,
        type=AssetTypes.MLFLOW_MODEL,
        description="MNIST DNN 784-300-100-10 (training/train.py): float32[-1,784] pixels in "
        "[0,1] -> float32[-1,10] digit probabilities",
        tags=tags,
    )
    created = ml_client.models.create_or_update(model)
    sink.write(
        f"registered model {created.name}:{created.version} "
        f"({tags['framework']} {tags['framework_version']}) from {path}\n"
    )
    return created


def download_output(
    ml_client: Any, job_name: str, destination: Any, *, output: str = "run", sink: Any
) -> Any:
    """Download a finished job's output folder; returns the local folder."""
    from pathlib import Path

    from azure.ai.ml.exceptions import JobException

    destination = Path(destination)
    status = str(getattr(ml_client.jobs.get(job_name).status, "value", ""))
    if status not in ("Completed", "Failed", "Canceled"):
        raise UserError(
            f"job {job_name} is {status or 'not finished'}: its outputs can be downloaded once it "
            "has finished (follow it in studio, or submit without --no-wait to wait for it)"
        )
    try:
        ml_client.jobs.download(job_name, output_name=output, download_path=destination)
    except JobException as exc:
        raise UserError(f"cannot download job {job_name}: {_first_line(str(exc))}") from None
    folder = destination / "named-outputs" / output
    if not folder.is_dir():
        raise UserError(f"job {job_name} has no output {output!r} to download")
    sink.write(f"downloaded output {output} of {job_name} to {folder}\n")
    return folder
