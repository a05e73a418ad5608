"""Entry point for ``python -m scripts``.

Each command lives in its own module under ``scripts/`` and exposes
``register(subparsers)``, which adds its sub-parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code; raise ``scripts.UserError`` for mistakes the
user can fix. Add a module to ``COMMAND_MODULES`` to add commands.

Ctrl-C (130), SIGTERM (143) and SIGHUP (129) end a command the same way: its ``finally``
blocks stop what it started (training processes, a local server), then it exits with
128 + the signal's number.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scripts import UserError
from scripts.launch import Stopped, stop_on_signals

COMMAND_MODULES: tuple[str, ...] = (
    "scripts.demo",
    "scripts.serving",
    "scripts.infra",
    "scripts.jobs",
    "scripts.batch",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts",
        description="Train, submit, register and serve the MNIST TensorFlow model.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with stop_on_signals():
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Stopped as exc:
        print(f"stopped by {exc}", file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
