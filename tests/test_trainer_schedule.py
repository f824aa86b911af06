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


def test_set_length_moves_the_end_of_the_cosine():
    """A time budget fixes the length after the measuring steps: the rate must then reach
    ~0 exactly at the new last step, and warmup values before it are unchanged."""
    schedule = WarmupCosine(0.1, total_steps=500, warmup_steps=100)
    before = [float(schedule(s)) for s in range(0, 100, 10)]
    schedule.set_length(total_steps=1234, warmup_steps=100)
    assert [float(schedule(s)) for s in range(0, 100, 10)] == before
    assert float(schedule(1234)) == pytest.approx(0.0, abs=1e-7)
    assert float(schedule(1233)) > 0.0
    assert float(schedule(667)) == pytest.approx(0.05, abs=1e-6)  # half way down
    assert schedule.get_config()["total_steps"] == 1234
    with pytest.raises(ValueError, match="warmup_steps"):
        schedule.set_length(total_steps=50, warmup_steps=100)
