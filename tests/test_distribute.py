"""How the training script reads the cluster from its environment (no training here)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from training.distribute import ClusterConfigError, parse_tf_config, promote_chief

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
    ("task", "expected"),
    [
        (("worker", 0), {"type": "chief", "index": 0}),
        (("worker", 1), {"type": "worker", "index": 0}),
        (("worker", 2), {"type": "worker", "index": 1}),
        (("ps", 0), {"type": "ps", "index": 0}),
    ],
)
def test_worker_zero_becomes_the_parameter_server_coordinator(task, expected):
    config = promote_chief(parse_tf_config(azureml(*task, ps=["p0:9"])))
    assert config["cluster"] == {"chief": ["w0:1"], "worker": ["w1:2", "w2:3"], "ps": ["p0:9"]}
    assert config["task"] == expected


def test_parameter_server_job_with_one_worker_asks_for_more():
    raw = json.dumps(
        {"cluster": {"worker": ["w0:1"], "ps": ["p:2"]}, "task": {"type": "worker", "index": 0}}
    )
    with pytest.raises(ClusterConfigError, match=r"at least 2 workers.*worker_count"):
        promote_chief(parse_tf_config(raw))


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

    from training.data import Mnist
    from training.distribute import Runtime
    from training.train import Trainer, UsageError, parse_args

    images = np.zeros((1_000, 28, 28), np.uint8)
    data = Mnist(images, np.zeros(1_000, np.uint8), images[:10], np.zeros(10, np.uint8), Path())
    runtime = Runtime("multi_worker", tf.distribute.get_strategy(), num_replicas=2)
    with pytest.raises(UsageError, match="600 x 2 replicas exceeds the 1000 training examples"):
        Trainer(parse_args(["--batch-size", "600"]), runtime, data)


def test_optimizer_sums_gradients_across_replicas():
    """The loop divides the loss by the global batch and relies on the Keras optimizer to
    all-reduce (sum) replica gradients. Two replicas see different data; a step must apply
    the sum of their gradients to every copy of the variable."""
    script = textwrap.dedent(
        """
        import tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        two = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            w = tf.Variable(0.0)
            opt = keras.optimizers.SGD(1.0)
            opt.build([w])
        def step(x):
            with tf.GradientTape() as tape:
                loss = w * x / 2.0
            grads = tape.gradient(loss, [w])
            opt.apply_gradients(zip(grads, [w]))
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant([1.0, 3.0][ctx.replica_id_in_sync_group]))
        tf.function(lambda v: strategy.run(step, args=(v,)))(values)
        print([float(v.numpy()) for v in w.values])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[-2.0, -2.0]"
