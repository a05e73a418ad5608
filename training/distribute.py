"""Choose how to distribute training from the environment the launcher set.

No flag selects the mode: the same command runs everywhere and this module reads what the
launcher (a laptop shell, Azure ML, ``python -m scripts run``, ``horovodrun``) put in the
environment:

- Horovod/MPI variables (``HOROVOD_RANK``, ``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``) ->
  Horovod, one process per rank (``training.horovod_runtime``).
- ``TF_CONFIG`` with ``ps`` tasks -> ParameterServerStrategy. Azure ML names workers and
  parameter servers but no chief, so worker 0 becomes the chief (the coordinator that runs
  the training loop); the other workers and the parameter servers serve until it is done.
- ``TF_CONFIG`` with two or more workers and no ``ps`` -> MultiWorkerMirroredStrategy.
  Azure ML writes an empty ``"ps": []`` that TF >= 2.13 rejects; empty roles are dropped.
- Otherwise MirroredStrategy over the local GPUs when there are several, else the default
  single-device strategy.

The base ``Runtime`` (and the hooks the Trainer calls) is in ``training/runtime.py``; the
cluster runtimes here override the hooks where they differ.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from training.runtime import ClusterConfigError, Examples, Runtime, Step

HOROVOD_ENV_KEYS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


@dataclass
class MultiWorkerRuntime(Runtime):
    """A worker of a MultiWorkerMirroredStrategy cluster. Saving a checkpoint is a collective
    operation there: every worker takes part (all but the chief into a scratch folder, the
    pattern the TF multi-worker guide prescribes)."""

    @property
    def saves_checkpoints(self) -> bool:
        return True


@dataclass
class ParameterServerRuntime(Runtime):
    """The chief (coordinator) of a parameter-server cluster: it schedules steps on the
    workers, which step asynchronously, each on a whole batch of an endless stream (a new
    order each pass), so an epoch is a count of steps, not a pass over the data."""

    coordinator: Any = None  # tf.distribute.coordinator.ClusterCoordinator
    _iterators: dict[Examples, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def compiles_step(self) -> bool:
        # The variables live on the parameter servers, not on the device the step runs on.
        return False

    def run_steps(
        self, step: Step, examples: Examples, epoch: int, count: int
    ) -> Iterator[tuple[Any, Any]]:
        iterator = self._iterators.get(examples)
        if iterator is None:

            def dataset_fn(_context: Any = None) -> Any:
                return examples.batches(examples.x, examples.y, examples.global_batch, epoch=None)

            iterator = iter(self.coordinator.create_per_worker_dataset(dataset_fn))
            self._iterators[examples] = iterator
        # One step per scheduled call (a Python 1: no graph loop), so the coordinator can
        # spread the calls over the workers.
        results = [self.coordinator.schedule(step, args=(iterator, 1)) for _ in range(count)]
        self.coordinator.join()
        for result in results:
            yield result.fetch()


def parse_tf_config(raw: str) -> dict[str, Any]:
    """Parse TF_CONFIG, dropping empty roles such as Azure ML's ``"ps": []``."""
    try:
        config = json.loads(raw)
        cluster = {role: list(tasks) for role, tasks in config["cluster"].items() if tasks}
        task = {"type": str(config["task"]["type"]), "index": int(config["task"]["index"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterConfigError(
            f"TF_CONFIG is not valid ({exc!r}); it must be JSON like "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}.'
        ) from exc
    if task["type"] not in cluster or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ClusterConfigError(
            f"TF_CONFIG task {task} is not in its cluster {sorted(cluster)}: check the launcher."
        )
    return {"cluster": cluster, "task": task}


def promote_chief(config: dict[str, Any]) -> dict[str, Any]:
    """Make worker 0 the chief when a parameter-server cluster has none (as on Azure ML)."""
    cluster, task = dict(config["cluster"]), dict(config["task"])
    if "chief" in cluster:
        return config
    workers = cluster.get("worker", [])
    if len(workers) < 2:
        raise ClusterConfigError(
            "A parameter-server job needs at least 2 workers when no chief is given: worker 0 "
            "becomes the coordinator and the others train. Raise worker_count in the job spec."
        )
    cluster["chief"], cluster["worker"] = workers[:1], workers[1:]
    if task["type"] == "worker":
        task = (
            {"type": "chief", "index": 0}
            if task["index"] == 0
            else {
                "type": "worker",
                "index": task["index"] - 1,
            }
        )
    return {"cluster": cluster, "task": task}


def _wait_for_chief_to_finish(chief_address: str, poll_seconds: float = 2.0) -> None:
    """Block while the chief's server answers; return once it is gone for good.

    Parameter servers and workers cannot be told to stop (tf.distribute.Server has no
    shutdown), so they watch the chief's port: when the chief's process exits, they exit
    too and the job completes instead of hanging.
    """
    host, port = chief_address.rsplit(":", 1)
    seen, misses = False, 0
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=poll_seconds):
                seen, misses = True, 0
        except OSError:
            misses += 1
            # Before the chief is first seen, allow it 10 minutes to start.
            if (seen and misses >= 3) or misses * poll_seconds > 600:
                return
        time.sleep(poll_seconds)


def _threads_for(cluster: Mapping[str, list[str]]) -> int:
    # Local servers on few cores deadlock unless inter-op threads exceed the worker count.
    return max(len(cluster.get("worker", [])) + 2, os.cpu_count() or 1, 4)


def _serve_parameter_server_role(config: dict[str, Any]) -> None:
    cluster, task = config["cluster"], config["task"]
    server_config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=_threads_for(cluster))
    server = tf.distribute.Server(
        tf.train.ClusterSpec(cluster),
        job_name=task["type"],
        task_index=task["index"],
        protocol="grpc",
        config=server_config,
        start=True,
    )
    print(f"[{task['type']} {task['index']}] serving for the chief at {cluster['chief'][0]}")
    _wait_for_chief_to_finish(cluster["chief"][0])
    del server


def detect_runtime(env: Mapping[str, str] | None = None) -> Runtime | None:
    """The runtime for this process, or None when it only served a PS-cluster role.

    May rewrite ``os.environ["TF_CONFIG"]`` to the normalised form TF expects.
    """
    env = os.environ if env is None else env
    if any(key in env for key in HOROVOD_ENV_KEYS):
        from training import horovod_runtime  # imported only under an MPI/Gloo launcher

        return horovod_runtime.detect()

    raw = env.get("TF_CONFIG", "").strip()
    if raw:
        config = parse_tf_config(raw)
        cluster = config["cluster"]
        if "ps" in cluster:
            return _parameter_server(promote_chief(config))
        num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        if num_workers > 1:
            return _multi_worker(config)

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        return Runtime("mirrored", strategy, num_replicas=strategy.num_replicas_in_sync)
    return Runtime("single", tf.distribute.get_strategy())


def _multi_worker(config: dict[str, Any]) -> Runtime:
    os.environ["TF_CONFIG"] = json.dumps(config)
    tf.config.threading.set_inter_op_parallelism_threads(_threads_for(config["cluster"]))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task, cluster = config["task"], config["cluster"]
    has_chief = "chief" in cluster
    is_chief = task["type"] == "chief" or (not has_chief and task["index"] == 0)
    worker_index = task["index"] + (1 if has_chief and task["type"] == "worker" else 0)
    return MultiWorkerRuntime(
        "multi_worker",
        strategy,
        num_replicas=strategy.num_replicas_in_sync,
        is_chief=is_chief,
        worker_index=0 if task["type"] == "chief" else worker_index,
        num_workers=len(cluster.get("worker", [])) + int(has_chief),
    )


def _parameter_server(config: dict[str, Any]) -> Runtime | None:
    os.environ["TF_CONFIG"] = json.dumps(config)
    if config["task"]["type"] != "chief":
        _serve_parameter_server_role(config)
        return None
    cluster = config["cluster"]
    tf.config.threading.set_inter_op_parallelism_threads(_threads_for(cluster))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    return ParameterServerRuntime(
        "parameter_server",
        strategy,
        num_replicas=1,  # workers step asynchronously, each on a full batch
        is_chief=True,
        num_workers=len(cluster["worker"]),
        coordinator=coordinator,
    )
