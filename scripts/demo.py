"""``demo``: the main job end to end on this machine.

1. Train with the default hyperparameters (``python -m training.train``; resumes if the
   output folder already holds a checkpoint).
2. Register ``model/`` in the local MLflow model registry, tagged with the framework and its
   version (what SDK v1's ``model_framework`` recorded); on Azure ML, ``python -m scripts
   register`` does the same in the workspace.
3. Serve it with the scoring server that managed online endpoints run (``azmlinfsrv`` with
   ``serving/code/score.py`` and the deployment spec's environment variables) on a loopback port.
4. Score real MNIST test images through HTTP and print the accuracy and latency.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scripts import UserError

ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGES = 10_000  # MNIST's test set
# what training writes into its output folder: a folder with none of these is no run of it
RUN_MARKS = ("checkpoints", "metrics.json", "model")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train on MNIST, serve the model locally and score test images (end to end)",
        description=__doc__,
    )
    parser.add_argument("--output-dir", default="outputs/demo", help="(default %(default)s)")
    parser.add_argument("--data-folder", help="MNIST folder (default: $MNIST_DATA_DIR or download)")
    parser.add_argument(
        "--fresh", action="store_true", help="discard the output folder's earlier run first"
    )
    parser.add_argument(
        "--images",
        type=_image_count,
        default=TEST_IMAGES,
        help=f"test images to score, 1 to {TEST_IMAGES:,} (default: all)",
    )
    parser.set_defaults(func=run_demo)


def _image_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= count <= TEST_IMAGES:
        raise argparse.ArgumentTypeError(
            f"{text} is out of range: MNIST has {TEST_IMAGES:,} test images, score 1 to "
            f"{TEST_IMAGES:,}"
        )
    return count


def train_step(output_dir: Path, data_folder: str | None) -> tuple[dict, bool]:
    """Train (or resume) into ``output_dir``: (metrics, whether this call trained). Training
    leaves a finished folder untouched, metrics.json included."""
    metrics_path = output_dir / "metrics.json"
    before = metrics_path.stat().st_mtime_ns if metrics_path.exists() else None
    command = [sys.executable, "-m", "training.train", "--output-dir", str(output_dir)]
    if data_folder:
        command += ["--data-folder", data_folder]
    print(f"$ {' '.join(command)}", flush=True)
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise UserError(f"training failed with exit status {result.returncode} (see above).")
    return json.loads(metrics_path.read_text()), metrics_path.stat().st_mtime_ns != before


def check_output_dir(output_dir: Path) -> None:
    """Refuse an output folder that is a file or lies under one, before anything runs."""
    from scripts.localjob import file_in_the_way

    blocker = file_in_the_way(output_dir)
    if blocker is not None:
        raise UserError(
            f"--output-dir {output_dir}: {blocker} is a file, not a folder; "
            "choose a folder (it is made if missing)"
        )


def check_discardable(output_dir: Path) -> None:
    """``--fresh`` removes the folder: only when it holds a training run and nothing else
    that matters (never the repository, the working directory, home or a folder above them)."""
    if not output_dir.exists():
        return
    protected = {
        ROOT: "the repository",
        Path.cwd().resolve(): "the working directory",
        Path.home().resolve(): "your home folder",
    }
    holds = [p for p in protected if p == output_dir or output_dir in p.parents]
    entries = {entry.name for entry in output_dir.iterdir()}
    if holds:
        what = protected[holds[0]]
        why = f"is {what}" if holds[0] == output_dir else f"holds {what} ({holds[0]})"
    elif entries and not entries & set(RUN_MARKS):
        why = "holds no training run (no checkpoints/, metrics.json or model/)"
    else:
        return
    raise UserError(
        f"--fresh would delete {output_dir}, which {why}: point --output-dir at the demo's "
        "own folder (default outputs/demo)"
    )


def run_demo(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir).resolve()
    check_output_dir(output_dir)
    if args.fresh:
        check_discardable(output_dir)
    test = load_test_images(args.data_folder, args.images)  # bad data stops before training
    if args.fresh:
        shutil.rmtree(output_dir, ignore_errors=True)
    metrics, trained = train_step(output_dir, args.data_folder)
    speed = metrics["examples_per_second"] if trained else None
    print(
        f"\nTrained: test accuracy {metrics['test_accuracy']:.2%} after {metrics['epochs']} "
        f"epochs in {metrics['train_seconds']:.1f} s "
        + (f"({speed:,.0f} examples/s)" if speed else "(already trained: use --fresh to retrain)")
        + f" -> {output_dir}/model"
    )
    print(f"Pictures: {output_dir}/training_curves.png, {output_dir}/confusion_matrix.png")
    name, version = register_locally(output_dir / "model", metrics)
    print(f"Registered: MLflow model {name} version {version} ({mlflow_uri()})")
    serve_and_score(output_dir / "model", test, metrics["test_accuracy"])
    return 0


def load_test_images(data_folder: str | None, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` MNIST test images (each flat, values in [0, 1]) and their labels."""
    from training.data import DataError, load_mnist

    try:
        data = load_mnist(data_folder)
    except DataError as exc:
        raise UserError(str(exc)) from None
    images = data.x_test[:count]
    return images.reshape(len(images), -1) / 255.0, data.y_test[:count]


def mlflow_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def register_locally(model_dir: Path, metrics: dict) -> tuple[str, str]:
    """A new version of the registered model, pointing at ``model_dir``, with the same name
    and framework tags that ``python -m scripts register`` gives it in the workspace."""
    import mlflow

    from scripts.azureml.assets import model_tags, registered_model_name

    name = registered_model_name()
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name,
        source=str(model_dir),
        tags={**model_tags(model_dir), "test_accuracy": f"{metrics['test_accuracy']:.4f}"},
    )
    return name, version.version


def serve_and_score(
    model_dir: Path, test: tuple[np.ndarray, np.ndarray], test_accuracy: float
) -> None:
    from scripts.endpoints import specs
    from scripts.endpoints.client import post_local
    from scripts.endpoints.local_server import LocalServer, ServerError

    pixels, labels = test
    settings = specs.server_settings()
    with tempfile.TemporaryDirectory() as scratch:
        server = LocalServer(
            model_dir=model_dir, settings=settings, log_path=Path(scratch) / "server.log"
        )
        try:
            server.start()
        except ServerError as exc:
            raise UserError(str(exc)) from None
        try:
            print(
                f"Serving: azmlinfsrv + serving/code/score.py on {server.url} "
                f"(ready in {server.startup_seconds:.1f} s; "
                + ", ".join(f"{k}={v}" for k, v in settings.items())
                + ")"
            )
            predictions, latencies = [], []
            for image in pixels[:200]:  # one image a request, as a client app would
                began = time.perf_counter()
                answer = post_local(f"{server.url}/score", {"data": [image.tolist()]})
                latencies.append(time.perf_counter() - began)
                predictions.append(answer["predictions"][0])
            for start in range(200, len(pixels), 256):  # the rest in batches
                answer = post_local(
                    f"{server.url}/score", {"data": pixels[start : start + 256].tolist()}
                )
                predictions.extend(answer["predictions"])
        finally:
            server.stop()
    accuracy = float((np.asarray(predictions) == labels).mean())
    p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
    print(
        f"Scored: {len(labels)} test images over HTTP, accuracy {accuracy:.2%} "
        f"(training measured {test_accuracy:.2%} on all 10,000); "
        f"single-image latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
