"""Epoch checkpoints: the model's weights, the optimizer's state and the epoch, under
``OUTPUT_DIR/checkpoints``, with the history of the epochs they hold.

Whether a run may resume from them is decided before they are read (``training/resume.py``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from training.outputs import (
    OutputError,
    describe_write_error,
    first_line,
    tf_write_errors,
    write_atomic,
)
from training.runtime import Runtime

if TYPE_CHECKING:
    import tensorflow as tf


class RestoreError(Exception):
    """A checkpoint that does not restore every weight and the optimizer's state."""


class Checkpointed(Protocol):
    """What a checkpoint holds and who writes it (the Trainer is one)."""

    runtime: Runtime
    checkpoint: tf.train.Checkpoint  # the model, the optimizer and ``epoch_var``
    epoch_var: Any  # tf.Variable: the epochs finished


class Checkpoints:
    """Epoch checkpoints under OUTPUT_DIR/checkpoints, written so a kill never corrupts them.

    Where the runtime says every worker saves (``Runtime.saves_checkpoints``: a synchronous
    multi-worker cluster), all but the chief save to a throw-away folder (the pattern the TF
    multi-worker guide prescribes). A restore must restore every variable of the model and
    the optimizer (and nothing else may be left over in the checkpoint): anything less is a
    ``RestoreError``, never a warning.
    """

    def __init__(self, trainer: Checkpointed, output_dir: Path) -> None:
        import tensorflow as tf

        self.trainer = trainer
        self.directory = output_dir / "checkpoints"
        self.history_path = self.directory / "history.json"
        runtime = trainer.runtime
        if runtime.is_chief:
            target = self.directory
        else:
            target = Path(tempfile.mkdtemp(prefix=f"ckpt-worker{runtime.worker_index}-"))
        self._scratch = None if runtime.is_chief else target
        self.saves = runtime.saves_checkpoints
        self.manager = tf.train.CheckpointManager(trainer.checkpoint, str(target), max_to_keep=2)

    def restore(self) -> tuple[int, list[dict[str, float]]]:
        """(first epoch to run, history so far); (0, []) when there is no checkpoint."""
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(self.directory))
        if latest is None:
            return 0, []
        status = None
        try:
            status = self.trainer.checkpoint.restore(latest)
            status.assert_consumed()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            if status is not None:
                status.expect_partial()  # reported below: no TF warning about it at exit
            raise RestoreError(
                f"The checkpoint {latest} does not restore this run's model and optimizer "
                f"({first_line(exc)}), so resuming from it would train from partly fresh "
                "weights. Train into a new --output-dir, or pass --restart to discard the "
                "checkpoints there and train from scratch."
            ) from None
        history = []
        if self.history_path.exists():
            history = json.loads(self.history_path.read_text())
        start = int(self.trainer.epoch_var.numpy())
        return start, [row for row in history if row["epoch"] <= start]

    def save(self, epoch: int, history: list[dict[str, float]]) -> None:
        """Write epoch ``epoch``'s checkpoint, its history row first (a restore keeps only the
        rows up to the checkpoint's epoch). On a write error nothing of this epoch is left:
        the previous checkpoint stays the latest, whole."""
        self.trainer.epoch_var.assign(epoch)
        if not self.saves:
            return
        try:
            if self.trainer.runtime.is_chief:
                write_atomic(self.history_path, json.dumps(history, indent=1))
            self.manager.save(checkpoint_number=epoch)
        except tf_write_errors() as exc:
            self._remove_partial(epoch)
            raise OutputError(
                f"{describe_write_error(exc, 'the checkpoint in', self.directory)}. "
                f"{self._kept(epoch - 1)}"
            ) from None

    def _remove_partial(self, epoch: int) -> None:
        for path in Path(self.manager.directory).glob(f"ckpt-{epoch}[._]*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _kept(self, epoch: int) -> str:
        if epoch < 1:
            return "No epoch had finished, so nothing was lost."
        return (
            f"The checkpoint after epoch {epoch} in {self.directory} is intact: free space or "
            "fix the folder, then rerun the same command to resume from it."
        )

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
