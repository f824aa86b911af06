"""CenterNet target encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from trainer.model import HEATMAP, OFFSET, SIZE
from trainer.targets import MASK, encode_targets, gaussian_radius


def reference_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's utils/image.py gaussian_radius, verbatim in spirit."""
    b1, c1 = height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


@pytest.mark.parametrize("height, width", [(4.0, 4.0), (10.0, 3.0), (30.0, 50.0)])
def test_gaussian_radius_matches_reference(height, width):
    assert float(gaussian_radius(tf.constant(height), tf.constant(width))) == pytest.approx(
        reference_radius(height, width), rel=1e-5)


def test_peak_size_and_offset_at_the_box_centre():
    grid = 16
    # Centre at (y, x) = (0.40, 0.65) * 16 = (6.4, 10.4) -> cell (6, 10), offset (0.4, 0.4).
    box = tf.constant([[0.40 - 0.125, 0.65 - 0.25, 0.40 + 0.125, 0.65 + 0.25]])
    targets = encode_targets(box, tf.constant([2]), grid, num_classes=3)
    heat = targets[HEATMAP].numpy()
    assert heat.shape == (grid, grid, 3)
    assert np.unravel_index(heat.argmax(), heat.shape) == (6, 10, 1)
    assert heat[6, 10, 1] == 1.0 and (heat == 1.0).sum() == 1
    assert heat[..., [0, 2]].max() == 0.0  # other classes untouched
    assert 0 < heat[6, 11, 1] < 1 and heat[6, 11, 1] == pytest.approx(heat[6, 9, 1])
    mask = targets[MASK].numpy()
    assert mask.sum() == 1 and mask[6, 10] == 1
    np.testing.assert_allclose(targets[SIZE].numpy()[6, 10], [8.0, 4.0], rtol=1e-5)  # (w, h)
    np.testing.assert_allclose(targets[OFFSET].numpy()[6, 10], [0.4, 0.4], atol=1e-5)  # (x, y)


def test_no_objects_gives_empty_targets():
    targets = encode_targets(tf.zeros((0, 4)), tf.zeros((0,), tf.int64), 8, num_classes=2)
    for value in targets.values():
        assert float(tf.reduce_max(tf.abs(value))) == 0.0


def test_overlapping_centres_keep_the_smaller_object_and_both_peaks():
    boxes = tf.constant([[0.1, 0.1, 0.9, 0.9], [0.4, 0.4, 0.6, 0.6]])
    targets = encode_targets(boxes, tf.constant([1, 2]), 8, num_classes=2)
    np.testing.assert_allclose(targets[SIZE].numpy()[4, 4], [1.6, 1.6], rtol=1e-5)
    assert targets[MASK].numpy().sum() == 1
    assert targets[HEATMAP].numpy()[4, 4].tolist() == [1.0, 1.0]
