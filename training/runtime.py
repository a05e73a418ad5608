"""The runtime a training process runs in, as the training loop sees it.

``Runtime`` is the single-process default (one device, or several local GPUs under
MirroredStrategy); ``training/distribute.py`` adds the multi-worker runtime of a cluster and
picks one from the environment, importing the optional cluster runtimes (parameter server,
Horovod) from the modules ``CLUSTER_RUNTIMES`` names. The Trainer and the checkpoints only call the
hooks below; each runtime class overrides the ones where it differs, so no code branches on
``kind``, which is data: the name written to metrics.json, MLflow and the checkpoints' record.

This module imports no TensorFlow, so the training script can check its flags before
TensorFlow loads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf

# (iterator, count) -> (summed loss, correct count) over ``count`` steps: a tf.function that
# loops in the graph when ``count`` is a tensor and unrolls when it is a Python int.
Step = Callable[[Any, Any], tuple[Any, Any]]


# The optional cluster runtimes: kind -> the module with its ``detect``, imported only when the
# launcher asks for that kind. A project made from the template without one (cookiecutter's
# answer "no") has neither the module nor its line here, and refuses such a launcher.
CLUSTER_RUNTIMES: dict[str, str] = {
    # kind (metrics.json's "distribution") -> module
    # fork:begin parameter_server
    "parameter_server": "training.parameter_server_runtime",
    # fork:end parameter_server
    # fork:begin horovod
    "horovod": "training.horovod_runtime",
    # fork:end horovod
}


class ClusterConfigError(Exception):
    """TF_CONFIG (or the MPI environment) describes a cluster we cannot run in."""


def server_threads(cluster: dict[str, list[str]]) -> int:
    """Inter-op threads for a process of a local cluster: fewer than the workers deadlock."""
    return max(len(cluster.get("worker", [])) + 2, os.cpu_count() or 1, 4)


@dataclass(frozen=True, eq=False)
class Examples:
    """The training examples and how to batch them: ``batches(x, y, batch_size, epoch=...,
    input_context=..., onward=...)`` is a ``tf.data.Dataset`` of one epoch (``onward``: that
    epoch and every one after it; ``epoch=None``: forever from epoch 0)."""

    x: np.ndarray
    y: np.ndarray
    global_batch: int
    batches: Callable[..., Any]


@dataclass
class Runtime:
    """Where this process stands in the training cluster and how it trains.

    ``num_replicas`` counts the replicas that share one synchronous step: the global batch is
    the per-replica batch times this. Only the chief writes models, metrics and pictures.
    """

    kind: str  # single | mirrored | multi_worker | parameter_server | horovod
    strategy: tf.distribute.Strategy
    num_replicas: int = 1
    is_chief: bool = True
    worker_index: int = 0
    num_workers: int = 1
    # (examples, next epoch, iterator) after a whole epoch, when ``carries_iterator``
    _carried: tuple[Examples, int, Any] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def ranks_per_step(self) -> int:
        """Processes that each take a whole global batch per step (Horovod's ranks step outside
        tf.distribute, so an epoch's examples and the learning-rate scaling count them too);
        under a strategy the replicas are already in ``num_replicas``."""
        return 1

    @property
    def steps_per_call(self) -> int:
        """How many steps one call of the step function may run in its graph loop: the host
        waits for results (and handles signals) once per call, not once per step."""
        return 64

    @property
    def compiles_step(self) -> bool:
        """Whether the replica step may be XLA-compiled (where the model's ``jit`` asks for it).

        Only with one replica per step: with several, the gradients' all-reduce is a
        synchronisation point that tf.distribute refuses inside a nested (compiled) function.
        """
        return self.num_replicas == 1

    @property
    def saves_checkpoints(self) -> bool:
        """Whether this process writes checkpoints: the chief, into the output folder; where
        saving is a collective operation, every worker (the others to a scratch folder)."""
        return self.is_chief

    @property
    def carries_iterator(self) -> bool:
        """Whether one iterator runs on from an epoch into the next (``run_steps`` builds the
        dataset once a run, not once an epoch: 0.1-0.3 s each on two loaded cores). Only where
        an epoch's batches are exactly the steps the Trainer takes: one process batching all
        the examples with this class's ``epoch_dataset`` (N // global batch, both ways); a
        worker's shard of a cluster may hold a batch more than its steps."""
        return self.num_workers == 1 and type(self).epoch_dataset is Runtime.epoch_dataset

    def epoch_dataset(self, examples: Examples, epoch: int, onward: bool = False) -> Any:
        """Epoch ``epoch``'s batches for this process (``onward``: and the epochs after it):
        the strategy splits each global batch among its replicas."""
        return self.strategy.distribute_datasets_from_function(
            lambda context: examples.batches(
                examples.x,
                examples.y,
                context.get_per_replica_batch_size(examples.global_batch),
                epoch=epoch,
                input_context=context,
                onward=onward,
            )
        )

    def _epoch_iterator(self, examples: Examples, epoch: int) -> Any:
        """An iterator whose next batches are epoch ``epoch``'s: the one the previous epoch
        left, where it may be carried on and that epoch ended whole; else a new one."""
        if not self.carries_iterator:
            return iter(self.epoch_dataset(examples, epoch))
        carried, self._carried = self._carried, None
        if carried is not None and carried[0] is examples and carried[1] == epoch:
            return carried[2]
        return iter(self.epoch_dataset(examples, epoch, onward=True))

    def prepare_epoch(self, examples: Examples, epoch: int) -> None:
        """Build now the iterator epoch ``epoch`` will start from, where it may be carried on
        (``carries_iterator``): the Trainer's warm-up does it while XLA compiles the step, so
        constructing the pipeline (0.1-0.3 s) overlaps the compilation. Elsewhere a no-op."""
        if self.carries_iterator and self._carried is None:
            iterator = iter(self.epoch_dataset(examples, epoch, onward=True))
            self._carried = (examples, epoch, iterator)

    def run_steps(
        self, step: Step, examples: Examples, epoch: int, count: int
    ) -> Iterator[tuple[Any, Any]]:
        """Run ``count`` steps of epoch ``epoch``, yielding (summed loss, correct count) after
        the first step alone (``after_first_step`` follows it), then after each call of up to
        ``steps_per_call`` steps."""
        import tensorflow as tf

        iterator = self._epoch_iterator(examples, epoch)
        done = 0
        while done < count:
            size = 1 if done == 0 else min(self.steps_per_call, count - done)
            yield step(iterator, tf.constant(size, tf.int32))  # a tensor: one trace, a loop
            done += size
        if self.carries_iterator and count == len(examples.x) // examples.global_batch:
            self._carried = (examples, epoch + 1, iterator)  # all its batches: the next follow

    def wrap_tape(self, tape: tf.GradientTape) -> tf.GradientTape:
        """Hook for all-reducing gradients outside tf.distribute (Horovod overrides it)."""
        return tape

    def after_restore(self, start: int, model: Any, optimizer: Any) -> int:
        """Hook run after the checkpoint restore: the epoch every worker starts from.

        Horovod ranks may not all see the checkpoints (node-local output folders), so they
        take rank 0's epoch and variables; tf.distribute strategies need nothing here.
        """
        return start

    def share_from_chief(self, value: Any, name: str) -> Any:
        """The chief's ``value`` on every worker (Horovod broadcasts it). tf.distribute workers
        read the same output folder and decide alike, and a worker that fails stops the job."""
        return value

    def after_first_step(self, model: Any, optimizer: Any) -> None:
        """Hook run once after the first step (Horovod broadcasts rank 0's variables)."""

    def barrier(self) -> None:
        """Wait for all workers (a no-op where the strategy synchronises on its own)."""
