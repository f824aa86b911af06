"""CenterNet losses: penalty-reduced focal loss on the heatmap, L1 on size and offset.

Every term is a sum over the batch divided by the number of objects in it, so an image
with many objects weighs more than an empty one and the scale does not depend on the
grid size (most heatmap cells are easy negatives the focal loss nearly ignores).
"""

from __future__ import annotations

import tensorflow as tf

from trainer.model import HEATMAP, OFFSET, SIZE
from trainer.targets import MASK

# CenterNet's weights: sizes are in grid cells (up to tens), offsets in [0, 1).
SIZE_WEIGHT = 0.1
OFFSET_WEIGHT = 1.0
PROB_EPS = 1e-4  # CenterNet clamps the sigmoid to [1e-4, 1 - 1e-4] before the logs


def focal_loss(target: tf.Tensor, pred: tf.Tensor, alpha: float = 2.0,
               beta: float = 4.0) -> tf.Tensor:
    """Penalty-reduced pixel-wise focal loss (CenterNet eq. 1), summed / num objects.

    Args:
      target: Gaussian-splatted heatmap, exactly 1.0 at object centres.
      pred: sigmoid probabilities, same shape.
    Returns:
      Scalar loss; with no objects, the negative term alone (divided by 1).
    """
    target = tf.cast(target, tf.float32)
    pred = tf.clip_by_value(tf.cast(pred, tf.float32), PROB_EPS, 1.0 - PROB_EPS)
    positive = tf.cast(tf.equal(target, 1.0), tf.float32)
    pos_loss = tf.math.log(pred) * (1.0 - pred) ** alpha * positive
    neg_loss = tf.math.log(1.0 - pred) * pred**alpha * (1.0 - target) ** beta * (1.0 - positive)
    num_objects = tf.maximum(tf.reduce_sum(positive), 1.0)
    return -(tf.reduce_sum(pos_loss) + tf.reduce_sum(neg_loss)) / num_objects


def masked_l1(target: tf.Tensor, pred: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """L1 over the channels at centre cells (mask [..., H, W]), summed / num objects."""
    diff = tf.abs(tf.cast(pred, tf.float32) - tf.cast(target, tf.float32)) * mask[..., None]
    return tf.reduce_sum(diff) / tf.maximum(tf.reduce_sum(mask), 1.0)


def detection_loss(targets: dict[str, tf.Tensor],
                   outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """All loss terms and their weighted sum under ``"loss"`` (what the optimizer sees)."""
    terms = {
        "heatmap_loss": focal_loss(targets[HEATMAP], outputs[HEATMAP]),
        "size_loss": masked_l1(targets[SIZE], outputs[SIZE], targets[MASK]),
        "offset_loss": masked_l1(targets[OFFSET], outputs[OFFSET], targets[MASK]),
    }
    terms["loss"] = (terms["heatmap_loss"] + SIZE_WEIGHT * terms["size_loss"]
                     + OFFSET_WEIGHT * terms["offset_loss"])
    return terms
