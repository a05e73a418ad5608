"""Job commands: run a job spec locally, submit it to Azure ML, register and download models.

- ``run JOB.yml [--set inputs.NAME=VALUE ...]``: run the spec on this machine as Azure ML would
  (one process per TensorFlow worker and parameter server, Azure ML's TF_CONFIG), outputs under
  ./outputs/<job name>/.
- ``submit JOB.yml [--dry-run] [--no-wait]``: submit it to the stack's workspace and GPU cluster,
  stream the logs and wait.
- ``register --job NAME | --model-dir DIR``: register a run's model as an MLflow model.
- ``download --job NAME``: download a finished job's output (model, metrics, pictures).
- ``register-data [--from-folder DIR]``: register the MNIST data asset the jobs read.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

from scripts import UserError

DEFAULT_OUTPUTS = Path("outputs")
_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # a job's input/output name


def register(subparsers: Any) -> None:
    from scripts.azureml.workspace import add_workspace_arguments

    run = subparsers.add_parser(
        "run",
        help="run a job spec (training/jobs/*.yml) on this machine, as Azure ML would",
        description="Run the spec's step locally: inputs and outputs filled in, Azure ML's "
        "environment variables, one process per TensorFlow worker/parameter server with its "
        "TF_CONFIG. Exit status: the first failing process's, else 0.",
    )
    _spec_arguments(run)
    run.add_argument(
        "--outputs",
        type=Path,
        default=DEFAULT_OUTPUTS,
        help="where each run's outputs go, in a folder named after the job (default %(default)s)",
    )
    run.add_argument(
        "--name",
        type=_job_name,
        help="job name: letters, digits, '-', '_' (default: <spec>-<date>-<time>)",
    )
    run.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="stop every process after this many seconds",
    )
    run.set_defaults(func=cmd_run)

    submit = subparsers.add_parser(
        "submit",
        help="submit a job spec to Azure ML (the stack's workspace and GPU cluster) and follow it",
        description="Register the environment and data the job needs if the workspace lacks "
        "them, submit the job to the stack's GPU cluster, stream its logs and wait for it.",
    )
    _spec_arguments(submit)
    submit.add_argument(
        "--dry-run", action="store_true", help="print the job as it would be submitted, and stop"
    )
    submit.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    add_workspace_arguments(submit)
    submit.set_defaults(func=cmd_submit)

    model = subparsers.add_parser(
        "register",
        help="register a run's model as an MLflow model, tagged with framework and version",
        description="Register OUTPUT/model of a finished Azure ML job (--job), or a local model "
        "folder (--model-dir, uploaded), as an MLflow model tagged framework=TensorFlow and "
        "framework_version (what SDK v1's model_framework recorded).",
    )
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--job", type=_job_name, help="name of a finished Azure ML job")
    source.add_argument("--model-dir", type=Path, help="a local model folder (OUTPUT_DIR/model)")
    model.add_argument(
        "--name",
        default=None,
        help="model name (default: the model serving/deployment.yml deploys)",
    )
    model.add_argument(
        "--output", type=_output_name, default="run", help="the job's output (default %(default)s)"
    )
    model.add_argument(
        "--to",
        type=Path,
        default=DEFAULT_OUTPUTS,
        help="where --job's output is downloaded first (default %(default)s/<job>)",
    )
    add_workspace_arguments(model, compute=False)
    model.set_defaults(func=cmd_register)

    download = subparsers.add_parser(
        "download",
        help="download a finished job's output (model, metrics, pictures)",
        description="Download OUTPUT of a finished Azure ML job to TO/<job>/named-outputs/OUTPUT.",
    )
    download.add_argument(
        "--job", required=True, type=_job_name, help="name of a finished Azure ML job"
    )
    download.add_argument("--output", type=_output_name, default="run", help="default %(default)s")
    download.add_argument("--to", type=Path, default=DEFAULT_OUTPUTS, help="default %(default)s")
    add_workspace_arguments(download, compute=False)
    download.set_defaults(func=cmd_download)

    data = subparsers.add_parser(
        "register-data",
        help="register the MNIST data asset (public mirror, or upload a local folder)",
        description="Register training/jobs/data/mnist.yml (a uri_folder over the public "
        "Azure Open Datasets copy, as the article's Dataset.File.from_files), or with "
        "--from-folder upload a verified local copy as the next version.",
    )
    data.add_argument("--from-folder", type=Path, help="a folder with the four MNIST .gz files")
    add_workspace_arguments(data, compute=False)
    data.set_defaults(func=cmd_register_data)


def _spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec", type=Path, metavar="JOB.yml", help="a job spec, e.g. training/jobs/single.yml"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the spec, e.g. inputs.epochs=2 or inputs.mnist=DIR (repeatable)",
    )


def _job_name(text: str) -> str:
    from scripts.localjob import check_job_name

    try:
        return check_job_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _output_name(text: str) -> str:
    if not _OUTPUT_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an output name: letters, digits and '_', not starting with a digit "
            "(the spec's outputs, e.g. run)"
        )
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


# ---------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from scripts.jobspec import load_spec, parse_sets
    from scripts.localjob import local_plan, run_plan

    plan = local_plan(load_spec(args.spec, parse_sets(args.sets)))
    result = run_plan(plan, outputs_root=args.outputs, job_name=args.name, timeout=args.timeout)
    where = ", ".join(f"{name}: {path}" for name, path in result.outputs.items())
    if result.status != 0:
        print(
            f"job {result.job_name} failed (exit status {result.status}); {where}", file=sys.stderr
        )
        return result.status
    summary = ""
    if result.metrics and "test_accuracy" in result.metrics:
        summary = f"test_accuracy {result.metrics['test_accuracy']:.4f}; "
    print(f"job {result.job_name} completed: {summary}{where}")
    return 0


# ---------------------------------------------------------------------------- Azure


def _check_destination(folder: Path) -> None:
    """``--to``: refuse a file in the way before any sign-in or download."""
    from scripts.localjob import file_in_the_way

    blocker = file_in_the_way(folder.resolve())
    if blocker is not None:
        raise UserError(f"--to: {blocker} is a file, not a folder; point --to at a folder")


def cmd_submit(args: argparse.Namespace, *, credential: Any = None, **client_kwargs: Any) -> int:
    """``credential`` and ``client_kwargs`` (``transport=``) are for tests."""
    from scripts.azureml.errors import azure_errors
    from scripts.azureml.jobs import prepare_job, submit_job
    from scripts.azureml.workspace import connect, resolve_target
    from scripts.jobspec import dump_job, load_spec, parse_sets

    spec = load_spec(args.spec, parse_sets(args.sets))
    if args.dry_run:
        try:
            target = resolve_target(args)
        except UserError as exc:
            print(f"# compute not set: {exc}", file=sys.stderr)
            target = None
        print(dump_job(prepare_job(spec, target)), end="")
        return 0
    target, ml_client = connect(args, credential=credential, **client_kwargs)
    with azure_errors(target):
        job = submit_job(ml_client, spec, target, wait=not args.no_wait, sink=sys.stdout)
    if args.no_wait:
        return 0
    status = str(getattr(job.status, "value", job.status))
    print(f"job {job.name}: {status}")
    return 0 if status == "Completed" else 1


def cmd_register(args: argparse.Namespace, *, credential: Any = None, **client_kwargs: Any) -> int:
    from scripts.azureml.assets import model_tags, register_model, registered_model_name
    from scripts.azureml.errors import azure_errors
    from scripts.azureml.jobs import download_output
    from scripts.azureml.workspace import connect

    if args.model_dir is not None:
        model_tags(args.model_dir)  # a folder that is no model fails before any sign-in
    else:
        _check_destination(args.to / args.job)
    name = args.name or registered_model_name()
    target, ml_client = connect(args, credential=credential, **client_kwargs)
    with azure_errors(target):
        model_dir = args.model_dir
        if args.job:
            folder = download_output(
                ml_client, args.job, args.to / args.job, output=args.output, sink=sys.stdout
            )
            model_dir = folder / "model"
        register_model(
            ml_client,
            model_dir=model_dir,
            job_name=args.job,
            output=args.output,
            name=name,
            sink=sys.stdout,
        )
    return 0


def cmd_download(args: argparse.Namespace, *, credential: Any = None, **client_kwargs: Any) -> int:
    from scripts.azureml.errors import azure_errors
    from scripts.azureml.jobs import download_output
    from scripts.azureml.workspace import connect

    _check_destination(args.to / args.job)
    target, ml_client = connect(args, credential=credential, **client_kwargs)
    with azure_errors(target):
        download_output(
            ml_client, args.job, args.to / args.job, output=args.output, sink=sys.stdout
        )
    return 0


def cmd_register_data(
    args: argparse.Namespace, *, credential: Any = None, **client_kwargs: Any
) -> int:
    from scripts.azureml.assets import register_data
    from scripts.azureml.errors import azure_errors
    from scripts.azureml.workspace import connect

    target, ml_client = connect(args, credential=credential, **client_kwargs)
    with azure_errors(target):
        register_data(ml_client, folder=args.from_folder, sink=sys.stdout)
    return 0
