"""CenterNet losses against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from trainer.losses import SIZE_WEIGHT, detection_loss, focal_loss, masked_l1
from trainer.model import HEATMAP, OFFSET, SIZE
from trainer.targets import MASK


def test_focal_loss_hand_computed():
    target = tf.constant([1.0, 0.5, 0.0])
    pred = tf.constant([0.8, 0.3, 0.1])
    positive = math.log(0.8) * 0.2**2
    near_centre = math.log(0.7) * 0.3**2 * 0.5**4  # penalty-reduced by (1 - y)^4
    background = math.log(0.9) * 0.1**2
    expected = -(positive + near_centre + background) / 1  # one object
    assert float(focal_loss(target, pred)) == pytest.approx(expected, rel=1e-5)


def test_focal_loss_normalizes_by_number_of_objects():
    one = focal_loss(tf.constant([1.0, 0.0]), tf.constant([0.6, 0.2]))
    two = focal_loss(tf.constant([1.0, 0.0, 1.0, 0.0]), tf.constant([0.6, 0.2, 0.6, 0.2]))
    assert float(two) == pytest.approx(float(one), rel=1e-6)


def test_focal_loss_without_objects_is_the_negative_term():
    expected = -math.log(0.7) * 0.3**2
    assert float(focal_loss(tf.zeros(2), tf.constant([0.3, 1e-9]))) == pytest.approx(
        expected, rel=1e-3)


def test_focal_loss_is_zero_for_a_perfect_prediction_up_to_clamping():
    assert float(focal_loss(tf.constant([1.0, 0.0]), tf.constant([1.0, 0.0]))) < 1e-7


def test_masked_l1_only_counts_centres():
    target = tf.constant([[[1.0, 2.0], [5.0, 5.0]]])  # [1, 1, 2, 2]: cells (0,0), (0,1)
    pred = tf.constant([[[2.0, 0.0], [0.0, 0.0]]])
    mask = tf.constant([[1.0, 0.0]])
    assert float(masked_l1(target[None], pred[None], mask[None])) == pytest.approx(3.0)


def test_detection_loss_weights_terms():
    heat = np.zeros((1, 2, 2, 1), np.float32)
    heat[0, 0, 0, 0] = 1
    mask = heat[..., 0]
    size = np.full((1, 2, 2, 2), 4.0, np.float32)
    targets = {HEATMAP: heat, SIZE: size, OFFSET: np.zeros_like(size), MASK: mask}
    outputs = {HEATMAP: heat, SIZE: np.zeros_like(size), OFFSET: np.zeros_like(size)}
    terms = detection_loss(targets, outputs)
    assert float(terms["size_loss"]) == pytest.approx(8.0)
    assert float(terms["loss"]) == pytest.approx(
        float(terms["heatmap_loss"]) + SIZE_WEIGHT * 8.0, rel=1e-6)
