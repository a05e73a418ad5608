"""How the training script reads the cluster from its environment (no training here)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from training import distribute
from training.distribute import ClusterConfigError, detect_runtime, parse_tf_config

WORKERS = ["w0:1", "w1:2", "w2:3"]


def azureml(task_type: str, index: int, ps: list[str]) -> str:
    """TF_CONFIG as Azure ML writes it: workers and ps, no chief, ps possibly empty."""
    cluster = {"worker": WORKERS, "ps": ps}
    return json.dumps(
        {"cluster": cluster, "task": {"type": task_type, "index": index}, "environment": "cloud"}
    )


def test_empty_ps_list_from_azure_ml_is_dropped():
    config = parse_tf_config(azureml("worker", 1, ps=[]))
    assert config == {"cluster": {"worker": WORKERS}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        '{"cluster": {}}',
        json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}),
    ],
)
def test_invalid_tf_config_is_a_clear_error(raw):
    with pytest.raises(ClusterConfigError, match="TF_CONFIG"):
        parse_tf_config(raw)


# The launchers that ask for an optional cluster runtime, as they set the environment.
ASKING = {
    "horovod": {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"},
    "parameter_server": {"TF_CONFIG": azureml("worker", 0, ps=["p0:9"])},
}


@pytest.mark.parametrize(
    ("kind", "asked", "instead"),
    [
        ("horovod", "This process was started by an MPI launcher", "without an MPI launcher"),
        ("parameter_server", "TF_CONFIG names parameter servers", "drop parameter_server_count"),
    ],
)
@pytest.mark.parametrize("absent", ["not listed", "module missing"])
def test_a_cluster_runtime_this_project_lacks_is_refused_not_run_alone(
    monkeypatch: pytest.MonkeyPatch, kind: str, asked: str, instead: str, absent: str
) -> None:
    """A project made without Horovod (or parameter servers) has no such runtime: a process
    started for one stops with a message saying so, instead of training on its own."""
    listed = {} if absent == "not listed" else {kind: "training.no_such_runtime"}
    monkeypatch.setattr(distribute, "CLUSTER_RUNTIMES", listed)
    with pytest.raises(ClusterConfigError) as refused:
        detect_runtime(ASKING[kind])
    message = str(refused.value)
    assert message.startswith(asked), message
    assert f"this project has no {kind} runtime" in message
    assert f"made from the template with {kind}=no" in message
    assert instead in message and "training/jobs/multi_worker.yml" in message


def test_cli_refuses_a_launcher_for_a_runtime_it_lacks_without_traceback(
    mnist_dir, run_python, tmp_path
):
    """The training script's answer to such a launcher: exit 2 and the one message."""
    script = (
        "import sys, training.runtime as r; r.CLUSTER_RUNTIMES.clear(); "
        "from training.train import main; sys.exit(main())"
    )
    result = run_python(
        "-c",
        script,
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
        env={"TF_CONFIG": ASKING["parameter_server"]["TF_CONFIG"]},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: TF_CONFIG names parameter servers" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_bad_tf_config_without_traceback(mnist_dir, run_python):
    result = run_python("-m", "training.train", "--epochs", "1", env={"TF_CONFIG": "{oops"})
    assert result.returncode == 2
    assert "TF_CONFIG is not valid" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "complaint"),
    [
        ("--batch-size", "0", "must be between 1 and 60000"),
        ("--epochs", "two", "not a whole number"),
        ("--learning-rate", "-1", "positive number"),
        ("--learning-rate", "nan", "positive number"),
        ("--dropout", "1.5", "in [0, 1)"),
    ],
)
def test_bad_flag_values_are_usage_errors(flag, value, complaint, run_python):
    result = run_python("-m", "training.train", flag, value)
    assert result.returncode == 2
    assert complaint in result.stderr and "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_batch_larger_than_the_data_is_a_usage_error(run_python, tmp_path):
    result = run_python(
        "-m",
        "training.train",
        "--batch-size",
        "70000",
        "--no-tracking",
        "--output-dir",
        str(tmp_path),
    )
    assert result.returncode == 2 and "must be between 1 and 60000" in result.stderr


def test_global_batch_larger_than_the_data_is_a_usage_error():
    """Each replica's batch fits, the global batch (batch x replicas) does not."""
    import tensorflow as tf

    from training.config import UsageError, parse_args
    from training.data import Mnist
    from training.distribute import MultiWorkerRuntime
    from training.train import Trainer

    images = np.zeros((1_000, 28, 28), np.uint8)
    data = Mnist(images, np.zeros(1_000, np.uint8), images[:10], np.zeros(10, np.uint8), Path())
    runtime = MultiWorkerRuntime("multi_worker", tf.distribute.get_strategy(), num_replicas=2)
    with pytest.raises(UsageError, match="600 x 2 replicas exceeds the 1000 training examples"):
        Trainer(parse_args(["--batch-size", "600"]), runtime, data)


def test_two_replica_step_equals_one_replica_step_on_the_same_global_batch():
    """The Trainer under MirroredStrategy on two (logical CPU) replicas: the peak learning
    rate is scaled by sqrt(2), the global batch is twice the per-replica batch, the replicas
    read the two halves of one global batch, and one synchronous step applies exactly the
    update that
    one replica makes on the whole global batch (loss divided by the global batch, replica
    gradients summed). Adam's first moments are compared: unlike Adam's first update, they
    scale with the gradient, so a wrong loss scale cannot hide."""
    script = textwrap.dedent(
        """
        import json, math
        from pathlib import Path
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        two_cpus = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two_cpus)
        from training.data import Mnist
        from training.runtime import Runtime
        from training.config import parse_args
        from training.train import Trainer
        class Uncompiled(Runtime):  # both sides on the same (non-XLA) kernels: the
            compiles_step = property(lambda self: False)  # test is about replicas

        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (800, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, 800).astype(np.uint8)
        data = Mnist(images, labels, images[:10], labels[:10], Path())
        common = ["--dropout", "0", "--epochs", "2", "--no-tracking"]
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        two = Trainer(parse_args(common + ["--batch-size", "100", "--learning-rate", "0.003"]),
                      Runtime("mirrored", strategy, num_replicas=2), data)
        rate = str(0.003 * math.sqrt(2))
        one = Trainer(parse_args(common + ["--batch-size", "200", "--learning-rate", rate]),
                      Uncompiled("single", tf.distribute.get_strategy()), data)
        one.model.set_weights(two.model.get_weights())
        def first_epoch(t):
            return iter(t.runtime.epoch_dataset(t.examples, 0))
        losses = [float(t._steps(first_epoch(t), 1)[0]) for t in (two, one)]
        def moments(trainer):
            return [v.numpy() for v in trainer.optimizer.variables
                    if "momentum" in v.path]
        weights = max(float(np.abs(a - b).max())
                      for a, b in zip(two.model.get_weights(), one.model.get_weights()))
        slots = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
                    for a, b in zip(moments(two), moments(one)))
        print(json.dumps({
            "peak_ratio": two.schedule.peak / 0.003,
            "global_batch": two.global_batch,
            "steps": two.steps_per_epoch,
            "losses": losses,
            "weights": weights,
            "moments": len(moments(two)),
            "slots": slots,
        }))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["peak_ratio"] == pytest.approx(2**0.5)
    assert report["global_batch"] == 200 and report["steps"] == 4  # 800 examples / 200
    assert report["losses"][0] == pytest.approx(report["losses"][1], rel=1e-5)
    assert report["moments"] == 6  # one first moment per weight
    assert report["slots"] < 1e-4, report
    assert report["weights"] < 1e-5, report  # the step itself moves weights by ~4e-3


def test_each_worker_reads_its_own_part_of_every_epochs_permutation():
    """make_dataset with an input context (one per worker under tf.distribute): the shards
    are disjoint, together they are the whole epoch, shard i is every 2nd example of the
    seeded permutation from i on, and the next epoch is another permutation."""
    import tensorflow as tf

    from training.train import make_dataset

    count, batch = 1_000, 50
    index = np.arange(count)
    # Each image spells its own index in its first two pixels.
    images = np.zeros((count, 784), np.uint8)
    images[:, 0], images[:, 1] = index // 256, index % 256

    def read(epoch: int, shard: int) -> np.ndarray:
        context = tf.distribute.InputContext(2, shard, 2)
        dataset = make_dataset(images, index, batch, seed=3, epoch=epoch, input_context=context)
        pixels = np.concatenate([np.rint(x.numpy()[:, :2] * 255) for x, _ in dataset])
        return (pixels[:, 0] * 256 + pixels[:, 1]).astype(int)

    first, second = read(0, 0), read(0, 1)
    assert len(first) == len(second) == count // 2
    assert not set(first) & set(second)
    assert sorted(np.concatenate([first, second])) == list(range(count))
    permutation = np.empty(count, int)
    permutation[0::2], permutation[1::2] = first, second
    assert permutation.tolist() != list(range(count))  # shuffled, not in file order
    assert not np.array_equal(read(1, 0), first)  # a new order every epoch
    np.testing.assert_array_equal(read(0, 0), first)  # and the same one on a resume
