"""What training leaves in ``--output-dir`` and how it is written: the output folder checked
before any work, whole-file (atomic) writes, the model with metrics.json and the pictures, and
write errors told in one sentence (the system's reason, where, and what was kept).

The pictures themselves are drawn in ``training/report.py``, the MLflow model written by
``training/export.py``.
"""

from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from training.export import save_model


class OutputError(Exception):
    """The output folder cannot be written (a file in the way, read-only, disk full)."""


def describe_write_error(exc: BaseException, what: str, path: Path | str) -> str:
    """One sentence: what could not be written where, and why (the system's words for an
    OSError, the first line of TensorFlow's for its own write errors)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "no space left on the device"
    else:
        reason = first_line(exc)
    return f"cannot write {what} {path}: {reason}"


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (TensorFlow's often run to many), else its type."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def tf_write_errors() -> tuple[type[BaseException], ...]:
    import tensorflow as tf

    return (OSError, tf.errors.OpError)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` whole, or leave it as it was (no ``.tmp`` left behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prepare_output_dir(path: Path) -> None:
    """Create ``--output-dir`` and prove a file can be created in it, before TensorFlow loads."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.is_file()), path)
        where = "is a file" if blocker == path else f"is under {blocker}, which is a file"
        raise OutputError(
            f"--output-dir {path} {where}, not a folder. Choose another --output-dir, or move "
            f"{blocker} away."
        ) from None
    except OSError as exc:
        raise OutputError(
            f"--output-dir {path} cannot be used: "
            f"{describe_write_error(exc, 'into', exc.filename or path)}. Choose a folder you can "
            "write to (on Azure ML, the job's outputs folder)."
        ) from None


def write_reports(
    output_dir: Path,
    history: list[dict[str, float]],
    metrics: dict[str, Any],
    labels: np.ndarray,
    predictions: np.ndarray,
    classes: int,
) -> list[Path]:
    from training.report import confusion_matrix, plot_confusion, plot_curves

    metrics_path = output_dir / "metrics.json"
    write_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
    return [
        metrics_path,
        plot_curves(history, output_dir / "training_curves.png"),
        plot_confusion(
            confusion_matrix(labels, predictions, classes), output_dir / "confusion_matrix.png"
        ),
    ]


def write_outputs(
    output_dir: Path,
    model: Any,
    test_set: tuple[np.ndarray, np.ndarray],
    history: list[dict[str, float]],
    metrics: dict[str, Any],
    predictions: np.ndarray,
) -> list[Path]:
    """The model (``test_set``'s images are its input example), then metrics.json and the
    pictures; a write error names what failed and that the last checkpoint can write them
    again."""
    try:
        images, labels = test_set
        save_model(model, output_dir / "model", example=images)
        classes = int(model.output_shape[-1])  # the model's own class count
        return write_reports(output_dir, history, metrics, labels, predictions, classes)
    except tf_write_errors() as exc:
        raise OutputError(
            f"{describe_write_error(exc, 'the outputs in', output_dir)}. The checkpoint after "
            f"the last epoch is intact: free space or fix the folder, then rerun the same "
            "command to write the outputs from it (no epoch is trained again)."
        ) from None
