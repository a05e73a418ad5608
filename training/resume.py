"""Resume only what this run would have produced: the record beside the checkpoints.

A checkpoint says nothing about the flags that made it, so a rerun with other flags (another
layer size, dropout, batch, schedule length, runtime or data) would restore a model that no
single run produces, or fail half-way. ``OUTPUT_DIR/checkpoints/run.json`` records what
produced the checkpoints next to it; a rerun into the same folder resumes only when its own
record is equal, and stops before training otherwise, naming each difference and the two ways
out: a new ``--output-dir``, or ``--restart``.

``--epochs`` is part of the record: it sets the length of the cosine schedule (the rate
reaches zero at the last epoch), so a resumed run with more or fewer epochs would follow a
schedule that no single run follows. A rerun of a finished folder with the same flags has
nothing to do and changes nothing.

The record is plain data: this module loads no TensorFlow until ``run_record`` asks its
version.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import LABEL_SMOOTHING, WARMUP_FRACTION, Config
from training.data import Mnist, fingerprint
from training.outputs import OutputError, describe_write_error, write_atomic
from training.runtime import Runtime

RECORD_NAME = "run.json"
RECORD_FORMAT = 1


class ResumeRefused(Exception):
    """The checkpoints in the output folder came from another run. The message says what differs
    and what to do."""


@dataclass(frozen=True)
class Plan:
    """What this invocation does with the output folder's checkpoints."""

    action: str  # "fresh" | "resume" | "finished"
    record: dict[str, Any]  # what produces this run (the ``produced_by`` part of run.json)


def read_record(checkpoint_dir: Path) -> dict[str, Any] | None:
    path = checkpoint_dir / RECORD_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ResumeRefused(
            f"{path} cannot be read ({exc}), so the checkpoints beside it cannot be matched to "
            "this run. Train into a new --output-dir, or pass --restart to discard those "
            "checkpoints and train from scratch."
        ) from None


def has_checkpoints(checkpoint_dir: Path) -> bool:
    return (checkpoint_dir / "checkpoint").is_file()


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every key whose value differs (a missing key shows as ``-``)."""
    return [
        f"{key} {_show(old.get(key, '-'))} -> {_show(new.get(key, '-'))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _ways_out(checkpoint_dir: Path) -> str:
    return (
        "Either train into a new folder (--output-dir NEW_FOLDER), or pass --restart to "
        f"discard the checkpoints and history in {checkpoint_dir} and train from scratch (the "
        "model and metrics already there are replaced only when the new run finishes)."
    )


def plan(checkpoint_dir: Path, produced_by: dict[str, Any], *, restart: bool) -> Plan:
    """Decide between a fresh start, a resume and "already finished"; refuse a mismatch.

    Reads only; ``--restart`` is carried out by ``discard`` on the chief.
    """
    if restart or not has_checkpoints(checkpoint_dir):
        return Plan("fresh", produced_by)
    stored = read_record(checkpoint_dir)
    if stored is None or stored.get("format") != RECORD_FORMAT:
        raise ResumeRefused(
            f"{checkpoint_dir} holds checkpoints without a record of the run that wrote them "
            f"({RECORD_NAME}: written by an older version of this script), so they cannot be "
            f"checked against this run's flags and are not resumed. {_ways_out(checkpoint_dir)}"
        )
    changed = differences(stored.get("produced_by", {}), produced_by)
    if changed:
        raise ResumeRefused(
            f"{checkpoint_dir} holds checkpoints of another run, so this one does not resume "
            f"from them: {'; '.join(changed)}. {_ways_out(checkpoint_dir)}"
        )
    return Plan("finished" if stored.get("finished") else "resume", produced_by)


def record_text(produced_by: dict[str, Any], *, finished: bool) -> str:
    record = {"format": RECORD_FORMAT, "produced_by": produced_by, "finished": finished}
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


def discard(checkpoint_dir: Path) -> None:
    """``--restart``: remove the checkpoints, their history, record and MLflow run id."""
    if checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)


def run_record(config: Config, runtime: Runtime, data: Mnist) -> dict[str, Any]:
    """What produces this run's checkpoints: the flags that change shapes or results, the
    runtime, and the data."""
    import keras
    import tensorflow as tf

    return {
        "model": config.model,
        **config.model_options(),
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "epochs": config.epochs,
        "seed": config.seed,
        "label_smoothing": LABEL_SMOOTHING,
        "warmup_fraction": WARMUP_FRACTION,
        "distribution": runtime.kind,
        "replicas": runtime.num_replicas,
        "workers": runtime.num_workers,
        "tensorflow_major": int(tf.__version__.split(".")[0]),
        "keras_major": int(keras.__version__.split(".")[0]),
        "data_sha256": fingerprint(data),
    }


def plan_run(config: Config, runtime: Runtime, data: Mnist) -> Plan:
    """Fresh, resume or finished, decided by the chief for every worker; raises
    ``ResumeRefused`` on every worker when the checkpoints belong to another run."""
    output_dir = Path(config.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    try:
        decided = plan(checkpoint_dir, run_record(config, runtime, data), restart=config.restart)
        verdict: tuple[str, str] = (decided.action, "")
    except ResumeRefused as exc:
        decided, verdict = None, ("refused", str(exc))
    action, reason = runtime.share_from_chief(verdict, "resume_plan")
    if action == "refused":
        raise ResumeRefused(reason)
    record = decided.record if decided else run_record(config, runtime, data)
    if action == "finished" and not (output_dir / "model").exists():
        action = "resume"  # outputs lost after the last epoch: write them again, train nothing
    return Plan(action, record)


def start_fresh(checkpoint_dir: Path, record: dict[str, Any]) -> None:
    """The chief clears old checkpoints (only --restart or a folder without any gets here)
    and records what produces the new ones."""
    try:
        discard(checkpoint_dir)
        write_atomic(checkpoint_dir / RECORD_NAME, record_text(record, finished=False))
    except OSError as exc:
        raise OutputError(
            f"{describe_write_error(exc, 'the checkpoints folder', checkpoint_dir)}. Fix the "
            "folder or choose another --output-dir."
        ) from None


def mark_finished(checkpoint_dir: Path, record: dict[str, Any]) -> None:
    """The chief records that the run finished: a rerun with the same flags has nothing to do."""
    write_atomic(checkpoint_dir / RECORD_NAME, record_text(record, finished=True))
