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
    freshly initialised heads; the cosine ends at ~0 so the last epochs settle. The
    length lives in variables so a time-budgeted run can fix it after measuring its first
    steps (``set_length``, during warmup) and the cosine still ends at its last step.
    """

    def __init__(self, peak_learning_rate: float, total_steps: int, warmup_steps: int):
        super().__init__()
        _check_length(total_steps, warmup_steps)
        self.peak_learning_rate = float(peak_learning_rate)
        self._total = tf.Variable(float(total_steps), trainable=False, name="lr_total_steps")
        self._warmup = tf.Variable(float(warmup_steps), trainable=False, name="lr_warmup_steps")

    @property
    def length_variables(self) -> tuple[tf.Variable, tf.Variable]:
        """(total, warmup) steps: track them in the model's checkpoints so a resumed
        time-budgeted run keeps the length it planned."""
        return self._total, self._warmup

    @property
    def total_steps(self) -> int:
        return int(self._total.numpy())

    @property
    def warmup_steps(self) -> int:
        return int(self._warmup.numpy())

    def set_length(self, total_steps: int, warmup_steps: int) -> None:
        """Re-plans the schedule; steps already taken keep the rates they had only if
        they were within both the old and the new warmup."""
        _check_length(total_steps, warmup_steps)
        self._total.assign(float(total_steps))
        self._warmup.assign(float(warmup_steps))

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        warmup = tf.maximum(self._warmup, 1.0)
        decay_steps = tf.maximum(self._total - self._warmup, 1.0)
        progress = tf.clip_by_value((step - self._warmup) / decay_steps, 0.0, 1.0)
        cosine = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self._warmup, peak * step / warmup, cosine)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


def _check_length(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"Need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), "
            "total_steps >= 1"
        )
