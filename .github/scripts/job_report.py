"""Gate a training run on its metrics and write the job summary (train.yml).

    python .github/scripts/job_report.py METRICS.json --min-accuracy 0.97 --job NAME

Prints a Markdown table of the run's metrics (to $GITHUB_STEP_SUMMARY when set, else stdout)
and exits 1 when ``test_accuracy`` is missing or below the threshold, 2 on a usage error.
A ``submit --min-accuracy`` flag would make this script unnecessary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, help="the run's metrics.json")
    parser.add_argument("--min-accuracy", type=float, required=True, help="0 to 1")
    parser.add_argument("--job", default="", help="the Azure ML job name, for the summary")
    args = parser.parse_args(argv)
    if not 0.0 <= args.min_accuracy <= 1.0:
        parser.error(f"--min-accuracy: {args.min_accuracy} is not between 0 and 1")
    return args


def read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path} is not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path} holds no metrics object")
    return data


def report(metrics: dict[str, Any], minimum: float, job: str) -> tuple[bool, str]:
    accuracy = metrics.get("test_accuracy")
    ok = isinstance(accuracy, int | float) and accuracy >= minimum
    verdict = (
        f"passed: test_accuracy {accuracy:.4f} >= {minimum:.4f}"
        if ok
        else f"FAILED: test_accuracy {accuracy!r} is below {minimum:.4f}"
        if isinstance(accuracy, int | float)
        else "FAILED: the run reported no test_accuracy"
    )
    rows = "\n".join(
        f"| `{key}` | {value:.4f} |" if isinstance(value, float) else f"| `{key}` | {value} |"
        for key, value in sorted(metrics.items())
        if isinstance(value, int | float | str)
    )
    title = f"### Training job `{job}`" if job else "### Training job"
    return ok, f"{title}\n\n**{verdict}**\n\n| metric | value |\n|---|---|\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok, text = report(read_metrics(args.metrics), args.min_accuracy, args.job)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as stream:
            stream.write(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
