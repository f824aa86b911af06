"""decode_detections: peaks -> boxes, and the output layout every signature returns."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer.decode import BOXES, CLASSES, NUM_DETECTIONS, SCORES, decode_detections
from trainer.model import HEATMAP, OFFSET, SIZE
from trainer.targets import encode_targets


def test_recovers_boxes_encoded_as_targets():
    boxes = np.array([[0.10, 0.20, 0.30, 0.60], [0.55, 0.50, 0.95, 0.70]], np.float32)
    targets = encode_targets(tf.constant(boxes), tf.constant([3, 1]), 32, num_classes=3)
    outputs = {k: targets[k][None] for k in (HEATMAP, SIZE, OFFSET)}
    out = {k: v.numpy()[0] for k, v in decode_detections(outputs, max_detections=5).items()}
    assert out[NUM_DETECTIONS] == 2
    np.testing.assert_array_equal(out[SCORES], [1, 1, 0, 0, 0])
    order = np.argsort(out[CLASSES][:2])[::-1]  # class 3 is boxes[0], class 1 is boxes[1]
    np.testing.assert_allclose(out[BOXES][:2][order], boxes, atol=1e-5)
    np.testing.assert_array_equal(out[BOXES][2:], 0)


def test_keeps_only_local_peaks_and_orders_by_score():
    heat = np.zeros((1, 8, 8, 2), np.float32)
    heat[0, 2, 3, 0] = 0.9
    heat[0, 2, 4, 0] = 0.5  # neighbour of a stronger peak: suppressed by the 3x3 max-pool
    heat[0, 6, 6, 1] = 0.7
    heat[0, 0, 7, 1] = 0.005  # below the score floor
    size = np.zeros((1, 8, 8, 2), np.float32)
    size[0, 2, 3] = (2.0, 4.0)  # (w, h) in cells
    offset = np.zeros((1, 8, 8, 2), np.float32)
    offset[0, 2, 3] = (0.5, 0.25)  # (x, y)
    out = decode_detections({HEATMAP: heat, SIZE: size, OFFSET: offset}, max_detections=4)
    out = {k: v.numpy()[0] for k, v in out.items()}
    assert out[NUM_DETECTIONS] == 2
    np.testing.assert_allclose(out[SCORES], [0.9, 0.7, 0, 0])
    np.testing.assert_array_equal(out[CLASSES], [1, 2, 0, 0])
    cy, cx = 2.25 / 8, 3.5 / 8
    np.testing.assert_allclose(out[BOXES][0], [cy - 2 / 8, cx - 1 / 8, cy + 2 / 8, cx + 1 / 8],
                               atol=1e-6)


def test_pads_to_max_detections_on_tiny_grids():
    outputs = {HEATMAP: tf.fill((2, 2, 2, 1), 0.5), SIZE: tf.ones((2, 2, 2, 2)),
               OFFSET: tf.zeros((2, 2, 2, 2))}
    out = decode_detections(outputs, max_detections=10)
    assert out[BOXES].shape == (2, 10, 4) and out[SCORES].shape == (2, 10)
    assert out[NUM_DETECTIONS].dtype == tf.int32
    np.testing.assert_array_equal(out[NUM_DETECTIONS].numpy(), [4, 4])
