"""How the Trainer runs its steps: many steps per call in a graph loop, the replica step
XLA-compiled where the model asks for it and the runtime allows it, and the XLA flag that keeps
Dropout's random numbers cheap under XLA on CPU.

The training itself is a few steps on random images (no MNIST needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.data import Mnist


def _data(count: int) -> Mnist:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    return Mnist(images, labels, images[:64], labels[:64], Path())


def _single() -> object:
    import tensorflow as tf

    from training.runtime import Runtime

    return Runtime("single", tf.distribute.get_strategy())


def _seeded(make: Any, *args: Any) -> Any:
    """``make(*args)`` after seeding: the same initial weights and Dropout seeds each time."""
    import keras

    keras.utils.set_random_seed(0)
    return make(*args)


def test_an_epoch_in_a_few_calls_trains_exactly_as_one_step_per_call():
    """A 21-step epoch runs as calls of 1 + 64-capped steps (here 1 + 20): the same batches in
    the same order and the same updates as 21 calls of one step each, and the summed loss and
    hits of the calls are the epoch's."""
    from training.config import parse_args
    from training.train import Trainer

    data = _data(21 * 64 + 10)  # 10 left over: not a whole batch, never trained on
    args = ["--batch-size", "64", "--epochs", "2", "--no-tracking"]
    fused, stepped = (_seeded(Trainer, parse_args(args), _single(), data) for _ in range(2))
    assert fused.steps_per_epoch == 21

    calls = list(fused.runtime.run_steps(fused._steps, fused.examples, 0, 21))
    assert len(calls) == 2  # the first step alone (after_first_step), then the other 20

    iterator = iter(stepped.runtime.epoch_dataset(stepped.examples, 0))
    one_by_one = [stepped._steps(iterator, 1) for _ in range(21)]

    assert int(fused.optimizer.iterations.numpy()) == int(stepped.optimizer.iterations.numpy())
    assert int(fused.optimizer.iterations.numpy()) == 21
    for a, b in zip(fused.model.get_weights(), stepped.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    fused_hits = sum(float(hits) for _, hits in calls)
    assert fused_hits == sum(float(hits) for _, hits in one_by_one)
    fused_loss = sum(float(loss) for loss, _ in calls)
    assert fused_loss == pytest.approx(sum(float(loss) for loss, _ in one_by_one), rel=1e-5)
    assert 0 < fused_hits <= 21 * 64
    with pytest.raises(StopIteration):  # the epoch's batches are all used
        next(iterator)


def test_calls_are_capped_at_the_runtimes_steps_per_call():
    """150 steps: 1, then 64, 64 and the 21 left (the host waits, and a signal lands, between
    calls); every step's examples are counted once."""
    from training.config import parse_args
    from training.train import Trainer

    trainer = Trainer(parse_args(["--batch-size", "8", "--no-tracking"]), _single(), _data(1200))
    assert trainer.runtime.steps_per_call == 64 and trainer.steps_per_epoch == 150
    sizes = []
    before = 0
    for _ in trainer.runtime.run_steps(trainer._steps, trainer.examples, 0, 150):
        now = int(trainer.optimizer.iterations.numpy())
        sizes.append(now - before)
        before = now
    assert sizes == [1, 64, 64, 21]


def test_the_step_is_compiled_only_where_the_model_asks_and_the_runtime_allows():
    """The DNN asks for XLA, the CNN (convolutions are slower under XLA on CPU) does not; a
    runtime with several replicas per step, a parameter-server coordinator and Horovod (its
    all-reduce has no XLA kernel) never compile it."""
    import tensorflow as tf

    from training.config import parse_args
    from training.distribute import MultiWorkerRuntime
    from training.model import MODELS
    from training.train import Trainer

    assert (MODELS["dnn"].jit, MODELS["cnn"].jit) == (True, False)
    strategy = tf.distribute.get_strategy()
    assert _single().compiles_step is True
    assert MultiWorkerRuntime("multi_worker", strategy, num_replicas=2).compiles_step is False
    cases = [("dnn", _single(), True), ("cnn", _single(), False)]
    # fork:begin parameter_server
    from training.parameter_server_runtime import ParameterServerRuntime

    assert ParameterServerRuntime("parameter_server", strategy).compiles_step is False
    # fork:end parameter_server
    # fork:begin horovod
    from training.horovod_runtime import HorovodRuntime

    assert HorovodRuntime("horovod", strategy).compiles_step is False
    cases.append(("dnn", HorovodRuntime("horovod", strategy), False))
    # fork:end horovod

    data = _data(256)
    for model, runtime, compiled in cases:
        trainer = Trainer(parse_args(["--model", model, "--no-tracking"]), runtime, data)
        assert trainer.jit is compiled, (model, runtime.kind)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "--xla_cpu_use_fusion_emitters=false"),
        ("--xla_dump_to=/tmp/x", "--xla_dump_to=/tmp/x --xla_cpu_use_fusion_emitters=false"),
        ("--xla_cpu_use_fusion_emitters=true", "--xla_cpu_use_fusion_emitters=true"),
    ],
)
def test_the_xla_flag_is_added_once_and_never_overrides_the_users(monkeypatch, before, after):
    from training.train import use_fast_xla_cpu_random

    if before is None:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("XLA_FLAGS", before)
    use_fast_xla_cpu_random()
    use_fast_xla_cpu_random()
    import os

    assert os.environ["XLA_FLAGS"] == after


def test_warming_up_compiles_the_step_and_changes_no_state():
    """After ``warm_up`` (one step on a batch of zeros, then every variable put back; epoch 0's
    iterator built meanwhile) an epoch trains to exactly the weights, Adam slots, step count and
    Dropout seeds of a trainer that did not warm up, and its first call no longer compiles."""
    import time

    from training.config import parse_args
    from training.train import Trainer

    data = _data(8 * 128)
    args = parse_args(["--batch-size", "128", "--dropout", "0.2", "--no-tracking"])
    warm, cold = (_seeded(Trainer, args, _single(), data) for _ in range(2))
    warm.warm_up()
    assert int(warm.optimizer.iterations.numpy()) == 0
    assert warm.runtime._carried is not None and warm.runtime._carried[1] == 0  # prepared
    first_calls = []
    for trainer in (warm, cold):
        began = time.perf_counter()
        next(trainer.runtime.run_steps(trainer._steps, trainer.examples, 0, 1))
        first_calls.append(time.perf_counter() - began)
        list(trainer.runtime.run_steps(trainer._steps, trainer.examples, 1, 8))
    assert first_calls[0] < first_calls[1] / 2, first_calls  # compiling takes ~1 s
    assert warm._steps.experimental_get_tracing_count() == 1
    pairs = [
        *zip(warm.model.variables, cold.model.variables, strict=True),
        *zip(warm.optimizer.variables, cold.optimizer.variables, strict=True),
    ]
    assert len(pairs) > 6 + 12  # weights, slots, and more: the step count, seeds
    for a, b in pairs:
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_one_process_carries_one_iterator_through_whole_epochs_with_each_epochs_batches():
    """In one process an epoch that ran all its steps leaves its iterator to the next: the
    dataset is built once for the run, and every epoch still trains exactly the batches of
    its own dataset (the seed's and epoch's order). An epoch cut short is not carried on: the
    next one builds a dataset of its own, starting at its own first batch."""
    from training.runtime import Examples
    from training.train import make_dataset

    data = _data(4 * 64 + 10)  # 4 batches of 64 an epoch, 10 left over
    x, y = data.x_train.reshape(-1, 784), data.y_train.astype(np.int32)
    built = []

    def batches(*args: Any, **kwargs: Any) -> Any:
        built.append(kwargs["epoch"])
        return make_dataset(*args, seed=5, **kwargs)

    def labels_of(dataset: Any) -> list[list[int]]:
        return [list(np.asarray(labels)) for _, labels in dataset]

    def step(iterator: Any, size: Any) -> list[list[int]]:  # records the labels it trained
        return [list(np.asarray(next(iterator)[1])) for _ in range(int(size))]

    runtime, examples = _single(), Examples(x, y, 64, batches)
    assert runtime.carries_iterator is True
    expected = [labels_of(make_dataset(x, y, 64, seed=5, epoch=e)) for e in range(4)]
    assert all(len(epoch) == 4 for epoch in expected) and expected[0] != expected[1]
    for epoch in range(3):
        calls = list(runtime.run_steps(step, examples, epoch, 4))
        assert [batch for call in calls for batch in call] == expected[epoch]
    assert built == [0]  # one dataset for the three epochs

    calls = list(runtime.run_steps(step, examples, 3, 2))  # half of epoch 3 only
    assert [batch for call in calls for batch in call] == expected[3][:2]
    calls = list(runtime.run_steps(step, examples, 4, 4))
    assert [batch for call in calls for batch in call] == labels_of(
        make_dataset(x, y, 64, seed=5, epoch=4)
    )
    assert built == [0, 4]  # epoch 4 built its own: epoch 3 left batches unread
