"""``serve``, ``deploy`` and ``invoke``: the scoring code locally, on Azure ML, and calling it.

- ``serve``: run serving/code/score.py under the real ``azmlinfsrv`` on this machine with the
  environment variables of serving/deployment.yml (the same ones the endpoint gets).
- ``deploy``: safe blue/green rollout of a registered model to the managed online endpoint
  (scripts/endpoints/rollout.py): new colour at 0%, smoke test through the deployment header,
  traffic in steps, automatic rollback. ``--no-code`` deploys the MLflow model without a scoring
  script.
  With the Pulumi stack's outputs it also sends the new deployment's metrics and the endpoint's
  logs to the stack's Log Analytics workspace and moves the endpoint's autoscale setting
  (endpointMinInstances to endpointMaxInstances) to it; ``--monitor`` re-points the drift monitor.
- ``monitor``: create or update the endpoint's prediction-drift monitor on its serving colour
  (serving/monitoring/prediction-drift.yml), registering the training labels as its reference.
- ``invoke``: score a ``.npy`` or ``.json`` file of images against ``serve`` or the endpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from scripts import UserError
from scripts.azureml import workspace
from scripts.azureml.errors import azure_errors

DEFAULT_PORT = 5001
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MODEL_DIR = "outputs"


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run serving/code/score.py locally under azmlinfsrv, configured as the endpoint",
        description="Run serving/code/score.py under azmlinfsrv with the environment variables of "
        "serving/deployment.yml. Ctrl-C stops it.",
    )
    serve.add_argument(
        "--model-dir",
        default=DEFAULT_MODEL_DIR,
        help="the model folder training wrote, or the folder above it (default %(default)s)",
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default %(default)s, this machine only; 0.0.0.0 opens the "
        "unauthenticated server to the network)",
    )
    serve.set_defaults(func=cmd_serve)

    deploy = subparsers.add_parser(
        "deploy",
        help="blue/green rollout of a registered model to the managed online endpoint",
        description="Create the idle colour (blue or green) from serving/deployment.yml with the "
        "model, smoke-test it alone, shift traffic to it in steps, and roll back on failure.",
    )
    deploy.add_argument(
        "--model",
        help="registered model, azureml:NAME:VERSION or azureml:NAME@latest "
        "(default: the spec's model)",
    )
    deploy.add_argument("--endpoint", help="endpoint name (default: the spec's endpoint_name)")
    deploy.add_argument(
        "--no-code",
        action="store_true",
        help="deploy the MLflow model without a scoring script (serving/mlflow-deployment.yml)",
    )
    deploy.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[10, 50, 100],
        metavar="PERCENT",
        help="traffic shares for the new colour, ending at 100 (default: 10 50 100)",
    )
    deploy.add_argument(
        "--step-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="time to watch each traffic step before the next (default %(default)s)",
    )
    deploy.add_argument(
        "--delete-old",
        action="store_true",
        help="delete the previous colour after a successful rollout (default: keep it at 0%%)",
    )
    deploy.add_argument(
        "--sampling-rate",
        type=_sampling_rate,
        metavar="RATE",
        help="share of requests (0 < RATE <= 1) whose inputs and outputs the data collector "
        "keeps (default: data_collector.sampling_rate in serving/deployment.yml)",
    )
    deploy.add_argument(
        "--monitor",
        action="store_true",
        help="then point the prediction-drift monitor at the new colour (as `monitor` does)",
    )
    _add_data_folder(deploy)
    deploy.add_argument(
        "--dry-run", action="store_true", help="print the deployment it would create and stop"
    )
    workspace.add_workspace_arguments(deploy, compute=False)
    deploy.set_defaults(func=cmd_deploy)

    monitor = subparsers.add_parser(
        "monitor",
        help="create or update the endpoint's prediction-drift monitor",
        description="Create or update the daily prediction-drift monitor of the endpoint "
        "(serving/monitoring/prediction-drift.yml) on the deployment that serves it, comparing "
        "the digits it predicts with the MNIST training labels (registered as the data asset "
        "mnist-training-labels when missing). Alerts go to the stack's alertEmails. Rerun it "
        "after each deploy, or deploy with --monitor.",
    )
    monitor.add_argument("--endpoint", help="endpoint name (default: the spec's endpoint_name)")
    monitor.add_argument(
        "--email",
        action="append",
        metavar="ADDRESS",
        help="alert this address (repeatable; default: the stack's alertEmails)",
    )
    _add_data_folder(monitor)
    workspace.add_workspace_arguments(monitor, compute=False)
    monitor.set_defaults(func=cmd_monitor)

    invoke = subparsers.add_parser(
        "invoke",
        help="score a .npy or .json file of images against `serve` or the endpoint",
        description="Score images from a file. Without --endpoint it posts to a local server "
        "(python -m scripts serve); with --endpoint it calls the Azure ML endpoint.",
    )
    invoke.add_argument("file", help="images: .npy (uint8 or [0, 1] floats) or .json")
    invoke.add_argument(
        "--url",
        default=f"http://127.0.0.1:{DEFAULT_PORT}/score",
        help="local scoring URL (default %(default)s)",
    )
    invoke.add_argument("--endpoint", help="score on this Azure ML endpoint instead")
    invoke.add_argument("--deployment", help="with --endpoint: only this deployment (header)")
    invoke.add_argument(
        "--no-code", action="store_true", help="MLflow request format (the no-code deployment)"
    )
    invoke.add_argument(
        "--format",
        choices=("json", "npy"),
        default="json",
        help='request body: JSON {"data": [...]} (default), or npy: the float32 array as '
        "numpy.save writes it, Content-Type: application/x-npy (local server only)",
    )
    workspace.add_workspace_arguments(invoke, compute=False)
    invoke.set_defaults(func=cmd_invoke)


# --------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from scripts.endpoints import specs
    from scripts.endpoints.local_server import (
        SCORE_SCRIPT,
        client_host,
        server_command,
        server_environment,
    )
    from serving.code.predictor import ModelLoadError, find_model_dir

    try:
        model_dir = find_model_dir(args.model_dir)
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    settings = specs.server_settings()
    env = server_environment(model_dir, settings, os.environ, host=args.host)
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    url = f"http://{client_host(args.host)}:{args.port}/score"
    print(f"Serving {model_dir} on {url}, listening on {args.host} ({shown}).")
    print(
        f"Try: python -m scripts invoke serving/sample-digits.json --url {url}"
        "   (Ctrl-C stops the server)"
    )
    return _run_in_foreground(server_command(SCORE_SCRIPT, args.port), env)


def _run_in_foreground(command: list[str], env: dict[str, str]) -> int:
    """Run the server until it exits; Ctrl-C or SIGTERM here stop it too (no orphan)."""
    process = subprocess.Popen(command, env=env)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


# --------------------------------------------------------------------------- deploy


def _sampling_rate(text: str) -> float:
    """argparse type: a share of requests, 0 < rate <= 1."""
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not 0 < rate <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a share of requests: give a number above 0 and at most 1, e.g. 0.1"
        )
    return rate


def _add_data_folder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-folder",
        help="MNIST folder whose training labels become the monitor's reference data, when the "
        "workspace lacks it (default: $MNIST_DATA_DIR, else downloaded)",
    )


def _monitor_client(ml_client: Any, subscription_id: str) -> Any:
    """An Azure Monitor client signed in as the MLClient is."""
    from azure.mgmt.monitor import MonitorManagementClient

    return MonitorManagementClient(ml_client._credential, subscription_id)


def _operations(ml_client: Any, outputs: Any) -> Any:
    """What the stack gives each deployment: Log Analytics and the autoscale range."""
    from scripts.endpoints import azure_monitor

    if outputs is None:
        print(
            "The workspace is named by flags, not the Pulumi stack: no diagnostic settings or "
            "autoscale (deploy with the stack's workspace to get them)."
        )
        return None
    try:
        scale = azure_monitor.Scale(outputs.endpoint_min_instances, outputs.endpoint_max_instances)
    except azure_monitor.MonitorError as exc:
        raise UserError(str(exc)) from None
    return azure_monitor.Operations(
        monitor=_monitor_client(ml_client, outputs.subscription_id),
        resource_group=outputs.resource_group,
        log_analytics_workspace_id=outputs.log_analytics_workspace_id,
        scale=scale,
    )


def _training_labels(data_folder: str | None) -> Any:
    from training.data import DataError, load_mnist

    try:
        return load_mnist(data_folder).y_train
    except DataError as exc:
        raise UserError(str(exc)) from None


def _apply_monitor(
    ml_client: Any, endpoint: str, data_folder: str | None, emails: Any, target: Any
) -> None:
    from scripts.endpoints import drift_schedule as schedule

    try:
        with azure_errors(target):
            schedule.apply_monitor(
                ml_client,
                endpoint=endpoint,
                labels=lambda: _training_labels(data_folder),
                emails=list(emails or ()),
            )
    except schedule.MonitorError as exc:
        raise UserError(str(exc)) from None


def cmd_deploy(args: argparse.Namespace) -> int:
    from scripts.endpoints import rollout, specs

    spec = specs.MLFLOW_DEPLOYMENT_SPEC if args.no_code else specs.DEPLOYMENT_SPEC
    if args.dry_run:
        try:
            deployment = rollout.deployment_for(spec, endpoint_name=args.endpoint, model=args.model)
        except specs.SpecError as exc:
            raise UserError(str(exc)) from None
        if args.sampling_rate is not None and deployment.data_collector is not None:
            deployment.data_collector.sampling_rate = args.sampling_rate
        problems = specs.check_deployment(deployment)
        deployment.dump(sys.stdout)
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        return 1 if problems else 0
    if args.no_code and (args.monitor or args.sampling_rate is not None):
        raise UserError(
            "--monitor and --sampling-rate need the data collector of serving/deployment.yml; "
            "the no-code deployment (--no-code) has none."
        )
    target, ml_client = workspace.connect(args)
    outputs = target.outputs  # None for a workspace named by the flags
    operations = _operations(ml_client, outputs)
    try:
        with azure_errors(target):
            report = rollout.rollout(
                ml_client,
                endpoint_name=args.endpoint,
                model=args.model,
                no_code=args.no_code,
                steps=args.steps,
                step_wait_s=args.step_wait,
                delete_old=args.delete_old,
                sampling_rate=args.sampling_rate,
                operations=operations,
            )
    except (rollout.RolloutError, specs.SpecError) as exc:
        raise UserError(str(exc)) from None
    if args.monitor:
        emails = outputs.alert_emails if outputs is not None else ()
        _apply_monitor(ml_client, report.endpoint, args.data_folder, emails, target)
    previous = f"; {report.previous} kept at 0%" if report.previous else ""
    if report.previous and args.delete_old:
        previous = f"; {report.previous} deleted"
    print(f"{report.endpoint}: all traffic on {report.deployment}{previous}.")
    if report.scoring_uri:
        print(f"Scoring URI: {report.scoring_uri}")
    return 0


# --------------------------------------------------------------------------- monitor


def cmd_monitor(args: argparse.Namespace) -> int:
    from scripts.endpoints import rollout, specs

    try:
        endpoint = args.endpoint or rollout.deployment_for(specs.DEPLOYMENT_SPEC).endpoint_name
    except specs.SpecError as exc:
        raise UserError(str(exc)) from None
    target, ml_client = workspace.connect(args)
    emails = args.email
    if emails is None:
        emails = target.outputs.alert_emails if target.outputs is not None else ()
    _apply_monitor(ml_client, str(endpoint), args.data_folder, emails, target)
    return 0


# --------------------------------------------------------------------------- invoke


def cmd_invoke(args: argparse.Namespace) -> int:
    from scripts.endpoints import client, specs
    from serving.code.predictor import DEFAULT_MAX_BATCH

    if args.format == "npy" and (args.endpoint or args.no_code):
        what = "--endpoint (the SDK's invoke sends JSON)" if args.endpoint else "--no-code"
        raise UserError(
            f"--format npy cannot be used with {what}: score .npy bodies on a local server "
            "(--url), or drop --format npy to send JSON."
        )
    try:
        images = client.read_images(Path(args.file))
    except client.ClientError as exc:
        raise UserError(str(exc)) from None
    max_batch = int(specs.server_settings().get("SCORING_MAX_BATCH", DEFAULT_MAX_BATCH))
    target = None
    if args.endpoint:
        target, ml_client = workspace.connect(args)
        post = client.remote_poster(ml_client, args.endpoint, args.deployment)
    else:
        url = args.url

        def post(body: dict[str, Any] | bytes) -> Any:
            return client.post_local(url, body)

    try:
        with azure_errors(target):
            probabilities = client.score(
                images, post, max_batch=max_batch, no_code=args.no_code, fmt=args.format
            )
    except client.ClientError as exc:
        raise UserError(str(exc)) from None
    print(client.summary(probabilities, images.labels))
    return 0
