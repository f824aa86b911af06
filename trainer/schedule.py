"""Learning-rate schedule: linear warmup, then cosine decay to ~0."""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="sightline")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """``peak * step / warmup`` for the first ``warmup_steps``, then a cosine to 0.

    Warmup keeps AdamW's early, badly-estimated second moments from blowing up the
    freshly initialised heads; the cosine ends at ~0 so the last epochs settle.
    """

    def __init__(self, peak_learning_rate: float, total_steps: int, warmup_steps: int):
        super().__init__()
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"Need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), "
                "total_steps >= 1"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        warmup = float(max(self.warmup_steps, 1))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, peak * step / warmup, cosine)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }
