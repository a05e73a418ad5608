"""Submitting a job spec to Azure ML: its compute, the assets it needs, its code, following
it to the end, and downloading its outputs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from scripts import UserError
from scripts.azureml.errors import explain, first_line, is_about_workspace, user_error

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Job

    from scripts.azureml.workspace import Target
    from scripts.jobspec import Spec


def prepare_job(spec: Spec, target: Target | None) -> Job:
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


def check_compute(ml_client: MLClient, target: Target) -> None:
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
        if is_about_workspace(exc, target):
            raise user_error(exc, target) from None
        raise UserError(
            f"compute cluster {target.compute!r} does not exist in workspace "
            f"{target.workspace_name}: `pulumi up` creates the stack's clusters, or pass "
            "--compute with an existing cluster (`az ml compute list`)"
        ) from None


def ensure_assets(ml_client: MLClient, spec: Spec, sink: TextIO) -> list[str]:
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
def staged_code(spec: Spec) -> Iterator[None]:
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
    ml_client: MLClient,
    spec: Spec,
    target: Target,
    *,
    wait: bool = True,
    sink: TextIO,
    poll: float = 15.0,
) -> Job:
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
        reason = explain(exc, target) or first_line(str(exc))
        raise UserError(
            f"job {created.name} failed: {reason} (studio: {created.studio_url})"
        ) from None
    return ml_client.jobs.get(created.name)


def follow(ml_client: MLClient, job: Job, *, sink: TextIO, poll: float = 15.0) -> None:
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


def download_output(
    ml_client: MLClient,
    job_name: str,
    destination: str | os.PathLike[str],
    *,
    output: str = "run",
    sink: TextIO,
) -> Path:
    """Download a finished job's output folder; returns the local folder."""
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
        raise UserError(f"cannot download job {job_name}: {first_line(str(exc))}") from None
    folder = destination / "named-outputs" / output
    if not folder.is_dir():
        raise UserError(f"job {job_name} has no output {output!r} to download")
    sink.write(f"downloaded output {output} of {job_name} to {folder}\n")
    return folder
