"""Model outputs -> top-K detections; a pure function shared by export and offline eval.

Only max-pool, comparisons, ``tf.math.top_k`` and gathers: no NMS or custom ops, so it
converts to TFLite builtins. The 3x3 max-pool keeps local heatmap peaks (CenterNet's
stand-in for NMS).
"""

from __future__ import annotations

import tensorflow as tf

from data import feature_spec as fs
from trainer.model import HEATMAP, OFFSET, SIZE

# The outputs of every signature; shapes and box format in ``data.feature_spec``.
BOXES = fs.DETECTION_BOXES
SCORES = fs.DETECTION_SCORES
CLASSES = fs.DETECTION_CLASSES
NUM_DETECTIONS = fs.NUM_DETECTIONS
SCORE_FLOOR = 0.01  # rows below it are zeroed and not counted


def decode_detections(outputs: dict[str, tf.Tensor], max_detections: int,
                      score_floor: float = SCORE_FLOOR) -> dict[str, tf.Tensor]:
    """Heatmap/size/offset at stride 4 -> the detection outputs of every signature.

    Args:
      outputs: model outputs ``HEATMAP`` [B, H, W, C] (probabilities), ``SIZE`` and
        ``OFFSET`` [B, H, W, 2] as (x, y) / (width, height) in grid cells.
      max_detections: K; capped at H * W * C.
      score_floor: detections scoring at or below it become zero rows.
    Returns:
      Dict keyed by ``BOXES`` (``data.boxes.YXYX``), ``SCORES``, ``CLASSES``,
      ``NUM_DETECTIONS``; valid rows first (sorted by score), the rest zero.
    """
    heatmap = tf.cast(outputs[HEATMAP], tf.float32)
    _, height, width, num_classes = heatmap.shape
    batch = tf.shape(heatmap)[0]
    peaks = tf.nn.max_pool2d(heatmap, 3, 1, "SAME")
    heatmap = tf.where(tf.equal(heatmap, peaks), heatmap, 0.0)
    k = min(max_detections, height * width * num_classes)
    scores, flat = tf.math.top_k(tf.reshape(heatmap, (batch, -1)), k=k)

    cell = flat // num_classes
    classes = tf.cast(flat % num_classes + 1, tf.float32)
    cy = tf.cast(cell // width, tf.float32)
    cx = tf.cast(cell % width, tf.float32)
    size = tf.gather(tf.reshape(tf.cast(outputs[SIZE], tf.float32), (batch, -1, 2)), cell,
                     batch_dims=1)
    offset = tf.gather(tf.reshape(tf.cast(outputs[OFFSET], tf.float32), (batch, -1, 2)), cell,
                       batch_dims=1)
    cx = (cx + offset[..., 0]) / width
    cy = (cy + offset[..., 1]) / height
    half_w = tf.maximum(size[..., 0], 0.0) / (2 * width)
    half_h = tf.maximum(size[..., 1], 0.0) / (2 * height)
    boxes = tf.clip_by_value(tf.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], -1),
                             0.0, 1.0)

    valid = scores > score_floor
    keep = tf.cast(valid, tf.float32)
    boxes, scores, classes = boxes * keep[..., None], scores * keep, classes * keep
    if k < max_detections:  # tiny grids: pad so K is always max_detections
        pad = max_detections - k
        boxes = tf.pad(boxes, [[0, 0], [0, pad], [0, 0]])
        scores, classes = (tf.pad(t, [[0, 0], [0, pad]]) for t in (scores, classes))
    return {
        BOXES: boxes,
        SCORES: scores,
        CLASSES: classes,
        NUM_DETECTIONS: tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
    }
