"""Parameter-server training: ``tf.distribute.experimental.ParameterServerStrategy``.

``training.distribute.detect_runtime`` imports this module (through ``CLUSTER_RUNTIMES``) when
``TF_CONFIG`` names ``ps`` tasks. Azure ML names workers and parameter servers but no chief,
so worker 0 becomes the chief (the coordinator that runs the training loop with a
``ClusterCoordinator``); the other workers and the parameter servers serve until it is done.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from training.runtime import ClusterConfigError, Examples, Runtime, Step, server_threads


def detect(config: dict[str, Any]) -> Runtime | None:
    """The chief's runtime, or None once a worker or parameter server has served its role."""
    return _parameter_server(promote_chief(config))


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


def _serve_parameter_server_role(config: dict[str, Any]) -> None:
    cluster, task = config["cluster"], config["task"]
    server_config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=server_threads(cluster))
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


def _parameter_server(config: dict[str, Any]) -> Runtime | None:
    os.environ["TF_CONFIG"] = json.dumps(config)
    if config["task"]["type"] != "chief":
        _serve_parameter_server_role(config)
        return None
    cluster = config["cluster"]
    tf.config.threading.set_inter_op_parallelism_threads(server_threads(cluster))
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
