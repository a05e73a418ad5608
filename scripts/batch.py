"""``batch-deploy`` and ``batch-score``: score folders of digit images, locally or on Azure ML.

- ``batch-score --local DIR --output FILE.csv``: run serving/batch/code/batch_score.py over every
  file in DIR as Azure ML's batch driver would (scripts/endpoints/batch_local.py), with the
  settings of serving/batch/deployment.yml; flags override mini-batch size, error threshold
  and retries.
- ``batch-deploy``: create or update the batch endpoint (serving/batch/endpoint.yml) and its
  deployment (serving/batch/deployment.yml) on the stack's CPU cluster, registering the batch
  environment if the workspace lacks it, and make the deployment the endpoint's default.
- ``batch-score --input FOLDER|URI``: start a scoring job on the endpoint (a local folder is
  uploaded first); with ``--wait``, follow it and download its predictions.csv.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scripts import UserError
from scripts.azureml.errors import azure_errors, user_error
from scripts.azureml.jobs import check_compute
from scripts.azureml.workspace import Target, add_workspace_arguments, connect

BATCH_DIR = Path(__file__).resolve().parents[1] / "serving" / "batch"
ENDPOINT_SPEC = BATCH_DIR / "endpoint.yml"
DEPLOYMENT_SPEC = BATCH_DIR / "deployment.yml"
ENVIRONMENT_SPEC = BATCH_DIR / "environment" / "environment.yml"
DEFAULT_MODEL_DIR = Path("outputs") / "model"
SCORE_OUTPUT = "score"  # the output a batch model deployment's job writes predictions.csv to


def register(subparsers: Any) -> None:
    deploy = subparsers.add_parser(
        "batch-deploy",
        help="create/update the batch endpoint and its deployment on the stack's CPU cluster",
        description="Create or update the batch endpoint (serving/batch/endpoint.yml) and the "
        "deployment (serving/batch/deployment.yml) with a registered model on the CPU cluster, "
        "which scales to zero between jobs, and make it the endpoint's default.",
    )
    deploy.add_argument(
        "--model",
        help="registered model, azureml:NAME:VERSION or azureml:NAME@latest (default: the "
        "spec's, the latest tf-mnist)",
    )
    deploy.add_argument("--endpoint", help="endpoint name (default: the spec's)")
    deploy.add_argument(
        "--compute",
        dest="batch_compute",
        metavar="NAME",
        help="cluster to score on (default: the stack's CPU cluster, cpuClusterName)",
    )
    deploy.add_argument(
        "--dry-run", action="store_true", help="print the endpoint and deployment and stop"
    )
    add_workspace_arguments(deploy, compute=False)
    deploy.set_defaults(func=cmd_batch_deploy)

    score = subparsers.add_parser(
        "batch-score",
        help="score a folder of digit images: locally (--local) or as a batch endpoint job",
        description="Score every file of a folder of 28x28 digit images (PNG) and write one CSV "
        "row per file: file,digit,probability,error (no header, as Azure ML writes it). A file "
        "that is no usable image gets a row that says why. Exit status: 0 done, 1 the job "
        "failed, 2 a usage error.",
    )
    where = score.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--local",
        type=Path,
        metavar="INPUT_DIR",
        help="score this folder on this machine, as the batch deployment would",
    )
    where.add_argument(
        "--input",
        metavar="FOLDER_OR_URI",
        help="score on the batch endpoint: a local folder (uploaded), an azureml:// or "
        "https:// folder URI, or a data asset azureml:NAME:VERSION",
    )
    score.add_argument(
        "--output",
        type=Path,
        help="CSV file to write (with --local: required; with --input: where --wait "
        "downloads predictions.csv, default ./predictions.csv)",
    )
    local = score.add_argument_group("with --local (defaults: serving/batch/deployment.yml)")
    local.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="the model folder training wrote, or the folder above it (default %(default)s)",
    )
    local.add_argument("--mini-batch-size", type=_count(1), metavar="N")
    local.add_argument(
        "--error-threshold",
        type=_count(-1),
        metavar="N",
        help="failed files allowed before the job stops (-1: any number)",
    )
    local.add_argument("--max-retries", type=_count(0), metavar="N")
    remote = score.add_argument_group("with --input")
    remote.add_argument("--endpoint", help="batch endpoint (default: the spec's)")
    remote.add_argument("--deployment", help="a deployment other than the endpoint's default")
    remote.add_argument(
        "--wait", action="store_true", help="follow the job and download its predictions"
    )
    add_workspace_arguments(score, compute=False)
    score.set_defaults(func=cmd_batch_score)


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum, {minimum}")
        return value

    return parse


# --------------------------------------------------------------------------- local


def cmd_batch_score(args: argparse.Namespace, *, credential: Any = None, **kwargs: Any) -> int:
    """``credential`` and ``kwargs`` (``transport=``) are for tests."""
    if args.local is not None:
        return score_locally(args)
    return score_on_azure(args, credential=credential, **kwargs)


def score_locally(args: argparse.Namespace) -> int:
    from scripts.endpoints import batch_local as driver

    if args.output is None:
        raise UserError("--local needs --output FILE.csv: where to write the predictions")
    check_model_dir(args.model_dir)
    try:
        settings = driver.settings_from_spec(
            DEPLOYMENT_SPEC,
            mini_batch_size=args.mini_batch_size,
            error_threshold=args.error_threshold,
            max_retries=args.max_retries,
        )
        report = driver.run_local(args.local, args.output, args.model_dir, settings, log=_stderr)
    except driver.BatchInputError as exc:
        raise UserError(str(exc)) from None
    except driver.BatchJobFailed as exc:
        print(f"batch job failed: {exc}", file=sys.stderr)
        return 1
    failed = f", {report.failed_files} failed" if report.failed_files else ""
    print(
        f"scored {report.files} files in {report.mini_batches} mini-batches of "
        f"{settings.mini_batch_size}{failed} ({report.seconds:.1f} s): {report.rows} rows in "
        f"{report.output}"
    )
    unusable = rows_with_errors(report.output) if report.output else 0
    if unusable:
        print(f"{unusable} file(s) are not usable images: their rows' error column says why")
    return 0


def rows_with_errors(path: Path) -> int:
    """Rows of a predictions file (file,digit,probability,error) whose error is filled in."""
    import csv

    with path.open(newline="") as f:
        return sum(1 for row in csv.reader(f) if len(row) >= 4 and row[3])


def check_model_dir(path: Path) -> None:
    """An MLflow model folder (MLmodel), or a folder holding exactly one, before anything runs."""
    if not path.is_dir():
        raise UserError(
            f"--model-dir {path} is not a folder: train a model (`python -m training.train`) "
            "and pass its outputs/model folder, or the folder above it"
        )
    if (path / "MLmodel").is_file() or any((c / "MLmodel").is_file() for c in path.iterdir()):
        return
    raise UserError(
        f"--model-dir {path} holds no MLflow model (no MLmodel file in it or in a folder "
        "directly below it): pass the model/ folder that training writes"
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


# --------------------------------------------------------------------------- Azure: deploy


@dataclass(frozen=True)
class BatchSpecs:
    endpoint: Any  # azure.ai.ml.entities.BatchEndpoint
    deployment: Any  # azure.ai.ml.entities.BatchDeployment


def load_specs(*, endpoint: str | None = None, model: str | None = None) -> BatchSpecs:
    """The endpoint and deployment specs, loaded with azure-ai-ml, with the overrides."""
    from azure.ai.ml import load_batch_endpoint
    from azure.ai.ml.exceptions import ValidationException
    from marshmallow.exceptions import ValidationError

    from scripts.endpoints.batch_local import load_deployment

    try:
        endpoint_spec = load_batch_endpoint(ENDPOINT_SPEC)
        deployment = load_deployment(DEPLOYMENT_SPEC)
    except (ValidationError, ValidationException) as exc:
        raise UserError(f"serving/batch specs do not load: {exc}") from None
    if endpoint:
        endpoint_spec.name = endpoint
    deployment.endpoint_name = endpoint_spec.name
    if model:
        deployment.model = model if model.startswith("azureml:") else f"azureml:{model}"
    return BatchSpecs(endpoint_spec, deployment)


def cpu_cluster(args: argparse.Namespace, target: Target) -> str:
    """--compute, else the stack's CPU cluster (from its outputs), else the spec's."""
    if args.batch_compute:
        return args.batch_compute
    outputs = target.outputs
    if outputs is None:  # a workspace named by the flags
        return _spec_compute()
    if not outputs.cpu_cluster:
        raise UserError(
            f"{target.source} has no CPU cluster (Pulumi config cpuCluster is false): set "
            "cpuCluster to true and `pulumi up`, or pass --compute NAME"
        )
    return outputs.cpu_cluster


def _spec_compute() -> str:
    from scripts.endpoints.batch_local import load_deployment

    return str(load_deployment(DEPLOYMENT_SPEC).compute).removeprefix("azureml:")


def cmd_batch_deploy(args: argparse.Namespace, *, credential: Any = None, **kwargs: Any) -> int:
    specs = load_specs(endpoint=args.endpoint, model=args.model)
    if args.dry_run:
        specs.endpoint.dump(sys.stdout)
        print("---")
        specs.deployment.dump(sys.stdout)
        return 0
    target, ml_client = connect(args, credential=credential, **kwargs)
    compute = cpu_cluster(args, target)
    with azure_errors(target):
        check_compute(ml_client, replace(target, compute=compute))
        deployed = deploy(ml_client, specs, compute=compute, log=print)
    print(
        f"{specs.endpoint.name}: default deployment {specs.deployment.name} ({deployed}) on "
        f"{compute}. Score a folder: python -m scripts batch-score --input FOLDER --wait"
    )
    return 0


def resolve_model(ml_client: Any, reference: str) -> str:
    """``azureml:NAME:VERSION`` for a model reference, the latest version for ``@latest``."""
    name = str(reference).removeprefix("azureml:")
    if name.endswith("@latest"):
        name = name.removesuffix("@latest")
        version = ml_client.models.get(name, label="latest").version
        return f"azureml:{name}:{version}"
    return f"azureml:{name}"


def ensure_environment(ml_client: Any, log: Any) -> str:
    """The batch environment registered (once per version); returns ``azureml:NAME:VERSION``."""
    from azure.ai.ml import load_environment
    from azure.core.exceptions import ResourceNotFoundError

    environment = load_environment(ENVIRONMENT_SPEC)
    reference = f"azureml:{environment.name}:{environment.version}"
    try:
        ml_client.environments.get(environment.name, version=environment.version)
    except ResourceNotFoundError:
        log(f"Registering environment {reference} (Azure ML builds its image on the first job).")
        ml_client.environments.create_or_update(environment)
    return reference


def deploy(ml_client: Any, specs: BatchSpecs, *, compute: str, log: Any) -> str:
    """Endpoint, environment, deployment, then the endpoint's default; returns the model."""
    deployment = specs.deployment
    model = resolve_model(ml_client, deployment.model)
    deployment.model = model
    deployment.compute = compute
    environment = ensure_environment(ml_client, log)
    if str(deployment.environment).removeprefix("azureml:") != environment.removeprefix("azureml:"):
        raise UserError(
            f"serving/batch/deployment.yml runs in {deployment.environment} but "
            f"environment/environment.yml defines {environment}: make them the same version"
        )
    log(f"Creating or updating batch endpoint {specs.endpoint.name}...")
    ml_client.batch_endpoints.begin_create_or_update(specs.endpoint).result()
    log(f"Creating or updating deployment {deployment.name} with {model}...")
    ml_client.batch_deployments.begin_create_or_update(deployment).result()
    endpoint = ml_client.batch_endpoints.get(specs.endpoint.name)
    if getattr(endpoint.defaults, "deployment_name", None) != deployment.name:
        log(f"Making {deployment.name} the default deployment of {endpoint.name}...")
        endpoint.defaults = {"deployment_name": deployment.name}
        ml_client.batch_endpoints.begin_create_or_update(endpoint).result()
    return model.removeprefix("azureml:")


# --------------------------------------------------------------------------- Azure: score


def job_input(text: str) -> Any:
    """The ``Input`` for ``--input``: a local folder (azure-ai-ml uploads it), a folder URI or
    a registered data asset."""
    from azure.ai.ml import Input
    from azure.ai.ml.constants import AssetTypes

    if text.startswith(("azureml:", "https://", "http://", "wasbs://", "abfss://")):
        return Input(type=AssetTypes.URI_FOLDER, path=text)
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"--input {text} is neither a folder here nor a URI (azureml://..., https://...) "
            "nor a data asset (azureml:NAME:VERSION): pass the folder of images to score"
        )
    if not any(p.is_file() for p in folder.rglob("*")):
        raise UserError(f"--input folder {folder} has no files: copy the images into it first")
    return Input(type=AssetTypes.URI_FOLDER, path=str(folder.resolve()))


def score_on_azure(args: argparse.Namespace, *, credential: Any = None, **kwargs: Any) -> int:
    from azure.ai.ml.exceptions import JobException

    output = args.output or Path("predictions.csv")
    if args.wait and (output.is_dir() or not output.parent.is_dir()):
        raise UserError(f"--output {output}: name a CSV file in a folder that exists")
    specs = load_specs(endpoint=args.endpoint)
    data = job_input(args.input)
    target, ml_client = connect(args, credential=credential, **kwargs)
    with azure_errors(target):
        job = ml_client.batch_endpoints.invoke(
            endpoint_name=specs.endpoint.name,
            deployment_name=args.deployment,
            inputs={"images": data},
        )
        print(f"started batch job {job.name} on endpoint {specs.endpoint.name}")
        studio = getattr(ml_client.jobs.get(job.name), "studio_url", None)
        if studio:
            print(f"studio: {studio}")
        if not args.wait:
            return 0
        try:
            ml_client.jobs.stream(job.name)
        except JobException as exc:  # the job failed: its error, in one line
            print(f"batch job {job.name} failed: {user_error(exc, target)}", file=sys.stderr)
            return 1
        status = str(getattr(ml_client.jobs.get(job.name).status, "value", ""))
        if status != "Completed":
            print(f"batch job {job.name} ended {status}", file=sys.stderr)
            return 1
        download_predictions(ml_client, job.name, specs.deployment, output)
    print(f"batch job {job.name} completed: predictions in {output}")
    return 0


def download_predictions(ml_client: Any, job_name: str, deployment: Any, output: Path) -> None:
    """Download the job's ``score`` output and move its predictions file to ``output``."""
    name = deployment.output_file_name or "predictions.csv"
    with tempfile.TemporaryDirectory(prefix="batch-") as tmp:
        ml_client.jobs.download(job_name, output_name=SCORE_OUTPUT, download_path=tmp)
        found = Path(tmp) / "named-outputs" / SCORE_OUTPUT / name
        if not found.is_file():
            raise UserError(f"batch job {job_name} finished without {name} in its output")
        shutil.move(found, output)
