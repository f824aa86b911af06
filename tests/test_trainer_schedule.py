"""WarmupCosine: values at the schedule's landmarks, serialization."""

from __future__ import annotations

import math

import pytest
import tf_keras as keras

from trainer.schedule import WarmupCosine


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),  # warmup starts from zero
        (50, 0.05),  # half way up
        (100, 0.1),  # end of warmup: the peak
        (300, 0.1 * 0.5 * (1 + math.cos(math.pi * 0.5))),  # cosine mid point: half the peak
        (500, 0.0),  # end: ~0
        (900, 0.0),  # past the end it stays at 0
    ],
)
def test_values(step, expected):
    schedule = WarmupCosine(0.1, total_steps=500, warmup_steps=100)
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-7)


def test_no_warmup_starts_at_peak():
    assert float(WarmupCosine(0.1, total_steps=10, warmup_steps=0)(0)) == pytest.approx(0.1)


def test_serializes_round_trip():
    schedule = WarmupCosine(0.1, total_steps=500, warmup_steps=100)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule))
    assert isinstance(restored, WarmupCosine) and restored.get_config() == schedule.get_config()
    assert float(restored(250)) == pytest.approx(float(schedule(250)))


def test_rejects_warmup_longer_than_training():
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(0.1, total_steps=10, warmup_steps=11)
