"""Horovod: one process per rank, gradients all-reduced over MPI (Azure ML) or Gloo (locally).

``training.distribute.detect_runtime`` imports this module only when a Horovod or MPI
launcher set its variables (``horovodrun``, ``mpirun``, Azure ML's ``type: mpi`` jobs), so
the default environment never needs Horovod installed. Horovod 0.28.1, its last release,
builds against TensorFlow 2.13 but not 2.21 (Keras 3): it runs in its own pinned environment
(``training/environments/horovod/``, docs/horovod.md); the training package is the same.

How the Trainer uses what ``detect()`` returns:

- ``num_workers``/``worker_index`` (Horovod's size and rank), ``ranks_per_step`` and
  ``epoch_dataset``: each rank trains on every ``size``-th example from ``rank`` on, with the
  per-rank batch, and the learning rate is scaled by sqrt(size);
- ``wrap_tape``: ``hvd.DistributedGradientTape`` averages the gradients of all ranks, so
  every rank applies the same update;
- ``share_from_chief``: rank 0's verdict on the output folder's checkpoints (fresh, resume,
  finished or refused) holds for every rank, so no rank trains alone or waits for a rank that
  has stopped;
- ``after_restore``: rank 0's start epoch and variables are broadcast, so every rank resumes
  from the same epoch even where only rank 0 sees the checkpoints (a node-local output
  folder), and the ranks run the same number of steps;
- ``after_first_step``: rank 0's model and optimizer variables are broadcast once more
  (Horovod's recipe for optimizers that create their slots lazily on the first step);
- ``barrier``: every rank finishes its last step before rank 0 alone writes the model,
  metrics and pictures (only ``is_chief`` writes, checkpoints included). The other ranks
  may then exit while rank 0 is still writing: their shutdown does not disturb it
  (checked with Gloo: rank 0 completes its outputs and exits 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from training.runtime import ClusterConfigError, Examples, Runtime


def _import_horovod() -> Any:
    try:
        import horovod.tensorflow as hvd
    except ImportError as exc:
        raise ClusterConfigError(
            f"This process was started by a Horovod/MPI launcher, but Horovod cannot be "
            f"imported here ({exc}). Horovod 0.28.1 builds against TensorFlow 2.13, "
            f"not 2.21 (this is TensorFlow {tf.__version__}): run `make horovod-env` and start "
            "training with that environment's python, e.g. `horovodrun --gloo -np 2 "
            "-H localhost:2 ~/.cache/tf-mnist-azureml/venv-horovod/bin/python -m "
            "training.train`, or use the Horovod environment on Azure ML."
        ) from exc
    return hvd


def _variables(holder: Any) -> list[Any]:
    """``holder.variables`` whether it is a property (Keras 3) or a method (older Keras)."""
    variables = holder.variables
    return list(variables() if callable(variables) else variables)


@dataclass
class HorovodRuntime(Runtime):
    """A rank of a Horovod job; ``hvd`` is ``horovod.tensorflow``, already initialised."""

    hvd: Any = None

    @property
    def ranks_per_step(self) -> int:
        return self.num_workers

    @property
    def compiles_step(self) -> bool:
        # Horovod's all-reduce ops (in the tape's gradient) have no XLA kernels.
        return False

    def epoch_dataset(self, examples: Examples, epoch: int) -> Any:
        # Rank r trains on examples r, r + size, r + 2 size, ... with its own whole batch.
        shard = slice(self.worker_index, None, self.num_workers)
        return examples.batches(
            examples.x[shard], examples.y[shard], examples.global_batch, epoch=epoch
        )

    def wrap_tape(self, tape: tf.GradientTape) -> tf.GradientTape:
        return self.hvd.DistributedGradientTape(tape)

    def _broadcast_state(self, model: Any, optimizer: Any) -> None:
        self.hvd.broadcast_variables(_variables(model), root_rank=0)
        self.hvd.broadcast_variables(_variables(optimizer), root_rank=0)

    def after_restore(self, start: int, model: Any, optimizer: Any) -> int:
        agreed = int(self.hvd.broadcast_object(int(start), root_rank=0, name="start_epoch"))
        if agreed != start:
            print(
                f"[rank {self.worker_index}] found checkpoints up to epoch {start}, rank 0 "
                f"up to epoch {agreed}: resuming from rank 0's",
                flush=True,
            )
        self._broadcast_state(model, optimizer)
        return agreed

    def share_from_chief(self, value: Any, name: str) -> Any:
        return self.hvd.broadcast_object(value, root_rank=0, name=name)

    def after_first_step(self, model: Any, optimizer: Any) -> None:
        self._broadcast_state(model, optimizer)

    def barrier(self) -> None:
        # An allreduce completes only once every rank has reached it.
        self.hvd.allreduce(tf.constant(0.0), name="barrier")


def detect() -> HorovodRuntime:
    """Initialise Horovod and describe this rank; pins one GPU per local rank if any."""
    hvd = _import_horovod()
    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        # One GPU per process: rank r on a node takes that node's GPU r.
        gpu = gpus[hvd.local_rank() % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
    runtime = HorovodRuntime(
        kind="horovod",
        strategy=tf.distribute.get_strategy(),
        num_replicas=1,  # per process; the ranks are counted by num_workers
        is_chief=hvd.rank() == 0,
        worker_index=hvd.rank(),
        num_workers=hvd.size(),
        hvd=hvd,
    )
    print(
        f"Horovod rank {hvd.rank()} of {hvd.size()} (local rank {hvd.local_rank()}), "
        f"TensorFlow {tf.__version__}, {len(gpus)} GPU(s) on this node",
        flush=True,
    )
    return runtime
