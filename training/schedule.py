"""The learning-rate schedule every model trains with: linear warm-up, then cosine decay.

Written against the Keras API shared by Keras 3 (TF >= 2.16) and tf.keras 2.13 (TensorFlow
2.13.1, the Horovod environment), so one package serves both. It subclasses a Keras class, so
importing this module loads TensorFlow; ``training/model.py`` does not (its registry is read
while the flags are checked, before TensorFlow loads).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to zero.

    Large-batch training of a small net converges fastest when the rate ramps up, peaks
    high and anneals to zero by the last step (the "one-cycle" recipe).

    Deliberately not registered with ``keras.utils.register_keras_serializable``: MLflow
    pickles every registered object beside the saved model, which then needs this package to
    load. The schedule belongs to training (its rate follows the optimizer's step counter,
    which checkpoints restore); the saved model is for inference only.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int) -> None:
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        progress = tf.clip_by_value((step - warmup) / decay, 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < warmup, self.peak * (step + 1.0) / warmup, cosine)

    def get_config(self) -> dict[str, float | int]:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }
