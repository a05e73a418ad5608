"""The training benchmark's own arithmetic: the best speed-up any trainer of the recipe could
have, and the recipe its ceiling and tuned-Keras baselines train (the default one, as ours)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import train_speed as bench


def test_best_possible_speedup_is_the_baselines_seconds_over_the_ceilings_time():
    # 4 epochs of 59,904 examples at 71,881 ex/s take 3.334 s at the very least: a baseline
    # that needs 5.40 s can be beaten by 1.62x at most, however fast the loop.
    assert bench.best_possible_speedup(5.40, 4, 59_904, 71_881) == pytest.approx(1.6199, abs=1e-4)
    # Fewer examples to the target, or a faster ceiling, raise the bound in proportion.
    assert bench.best_possible_speedup(5.40, 2, 59_904, 71_881) == pytest.approx(3.2398, abs=1e-4)
    assert bench.best_possible_speedup(5.40, 4, 59_904, 143_762) == pytest.approx(3.2398, abs=1e-4)


def test_an_epoch_counts_whole_batches_of_the_default_batch_only():
    data = SimpleNamespace(x_train=np.zeros((60_000, 1), np.uint8))
    assert bench._epoch_examples(data) == 234 * 256  # 59,904: the last 96 make no batch


def test_the_baselines_train_the_default_recipe():
    """The ceiling and tuned Keras read the training defaults: 3 epochs of 234 steps, Adam's
    peak 5e-3 after a 70-step (10%) warm-up, the DNN without dropout."""
    config = bench._defaults()
    assert (config.model, config.batch_size, config.epochs) == ("dnn", 256, 3)
    assert config.model_options() == {
        "first_layer_neurons": 300,
        "second_layer_neurons": 100,
        "dropout": 0.0,
    }
    schedule = bench._schedule(config, 234)
    assert (schedule.peak, schedule.total_steps, schedule.warmup_steps) == (5e-3, 702, 70)
    assert float(schedule(70)) == pytest.approx(5e-3)  # the peak, right after warm-up
    assert float(schedule(702)) == pytest.approx(0.0, abs=1e-9)  # zero at the last step
