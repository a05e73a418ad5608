"""Horovod: one process per rank, gradients all-reduced over MPI (Azure ML) or Gloo (locally).

``training.distribute.detect_runtime`` imports this module only when a Horovod or MPI
launcher set its variables (``horovodrun``, ``mpirun``, Azure ML's ``type: mpi`` jobs), so
the default environment never needs Horovod installed. Horovod 0.28.1, its last release,
builds against TensorFlow 2.13 but not 2.21 (Keras 3): it runs in its own pinned environment
(``training/environments/horovod/``, docs/horovod.md); the training package is the same.

How the Trainer uses what ``detect()`` returns:

- ``num_workers``/``worker_index`` (Horovod's size and rank): each rank trains on every
  ``size``-th example from ``rank`` on, with the per-rank batch, and the learning rate is
  scaled by sqrt(size);
- ``wrap_tape``: ``hvd.DistributedGradientTape`` averages the gradients of all ranks, so
  every rank applies the same update;
- ``after_restore``: rank 0's start epoch and variables are broadcast, so every rank resumes
  from the same epoch even where only rank 0 sees the checkpoints (a node-local output
  folder), and the ranks run the same number of steps;
- ``after_first_step``: rank 0's model and optimizer variables are broadcast once more
  (Horovod's recipe for optimizers that create their slots lazily on the first step);
- only rank 0 (``is_chief``) writes checkpoints, the model, metrics and pictures.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from training.distribute import ClusterConfigError, Runtime


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
    _finished: bool = False

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

    def after_first_step(self, model: Any, optimizer: Any) -> None:
        self._broadcast_state(model, optimizer)

    def barrier(self) -> None:
        # An allreduce completes only once every rank has reached it.
        self.hvd.allreduce(tf.constant(0.0), name="barrier")
        self._finished = True

    def _exit_barrier(self) -> None:
        # Only after training finished on every rank: a rank that fails mid-training must
        # exit at once (so that the launcher stops the others), not wait here for ever.
        if self._finished:
            self.hvd.allreduce(tf.constant(0.0), name="exit_barrier")


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
    # Registered after hvd.init(), so it runs before Horovod's own shutdown at exit: once
    # training is over, every rank waits there until all have finished, so the others do
    # not tear down the communicator while rank 0 is still writing its outputs.
    atexit.register(runtime._exit_barrier)
    print(
        f"Horovod rank {hvd.rank()} of {hvd.size()} (local rank {hvd.local_rank()}), "
        f"TensorFlow {tf.__version__}, {len(gpus)} GPU(s) on this node",
        flush=True,
    )
    return runtime
