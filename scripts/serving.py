"""``serve``, ``deploy`` and ``invoke``: the scoring code locally, on Azure ML, and calling it.

- ``serve``: run serving/score.py under the real ``azmlinfsrv`` on this machine with the
  environment variables of serving/deployment.yml (the same ones the endpoint gets).
- ``deploy``: safe blue/green rollout of a registered model to the managed online endpoint
  (serving/rollout.py): new colour at 0%, smoke test through the deployment header, traffic in
  steps, automatic rollback. ``--no-code`` deploys the MLflow model without a scoring script.
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

from scripts import UserError, azureml

DEFAULT_PORT = 5001
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MODEL_DIR = "outputs"


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run serving/score.py locally under azmlinfsrv, configured as the endpoint",
        description="Run serving/score.py under azmlinfsrv with the environment variables of "
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
        "--dry-run", action="store_true", help="print the deployment it would create and stop"
    )
    azureml.add_workspace_arguments(deploy, compute=False)
    deploy.set_defaults(func=cmd_deploy)

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
    azureml.add_workspace_arguments(invoke, compute=False)
    invoke.set_defaults(func=cmd_invoke)


# --------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from serving import specs
    from serving.local_server import (
        SCORE_SCRIPT,
        client_host,
        server_command,
        server_environment,
    )
    from serving.predictor import ModelLoadError, find_model_dir

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


def cmd_deploy(args: argparse.Namespace) -> int:
    from serving import rollout, specs

    spec = specs.MLFLOW_DEPLOYMENT_SPEC if args.no_code else specs.DEPLOYMENT_SPEC
    if args.dry_run:
        try:
            deployment = rollout.deployment_for(spec, endpoint_name=args.endpoint, model=args.model)
        except specs.SpecError as exc:
            raise UserError(str(exc)) from None
        problems = specs.check_deployment(deployment)
        deployment.dump(sys.stdout)
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        return 1 if problems else 0
    target, ml_client = azureml.connect(args)
    try:
        with azureml.azure_errors(target):
            report = rollout.rollout(
                ml_client,
                endpoint_name=args.endpoint,
                model=args.model,
                no_code=args.no_code,
                steps=args.steps,
                step_wait_s=args.step_wait,
                delete_old=args.delete_old,
            )
    except (rollout.RolloutError, specs.SpecError) as exc:
        raise UserError(str(exc)) from None
    previous = f"; {report.previous} kept at 0%" if report.previous else ""
    if report.previous and args.delete_old:
        previous = f"; {report.previous} deleted"
    print(f"{report.endpoint}: all traffic on {report.deployment}{previous}.")
    if report.scoring_uri:
        print(f"Scoring URI: {report.scoring_uri}")
    return 0


# --------------------------------------------------------------------------- invoke


def cmd_invoke(args: argparse.Namespace) -> int:
    from serving import client, specs
    from serving.predictor import DEFAULT_MAX_BATCH

    try:
        images = client.read_images(Path(args.file))
    except client.ClientError as exc:
        raise UserError(str(exc)) from None
    max_batch = int(specs.server_settings().get("SCORING_MAX_BATCH", DEFAULT_MAX_BATCH))
    target = None
    if args.endpoint:
        target, ml_client = azureml.connect(args)
        post = client.remote_poster(ml_client, args.endpoint, args.deployment)
    else:
        url = args.url

        def post(body: dict[str, Any]) -> Any:
            return client.post_local(url, body)

    try:
        with azureml.azure_errors(target):
            probabilities = client.score(images, post, max_batch=max_batch, no_code=args.no_code)
    except client.ClientError as exc:
        raise UserError(str(exc)) from None
    print(client.summary(probabilities, images.labels))
    return 0
