"""Boxes -> CenterNet training targets, in TensorFlow so it runs inside tf.data.

Box format in: normalized ``(ymin, xmin, ymax, xmax)`` (the feature spec's order).
Targets out, all on the stride-4 output grid of side ``grid``:
  ``heatmap`` [grid, grid, C]  Gaussian splat per object, exactly 1.0 at its centre cell;
  ``size``    [grid, grid, 2]  (width, height) in grid cells, at centre cells;
  ``offset``  [grid, grid, 2]  (x, y) sub-cell offset of the true centre, at centre cells;
  ``mask``    [grid, grid]     1.0 at centre cells (where size/offset losses apply).
"""

from __future__ import annotations

import tensorflow as tf

from trainer.model import HEATMAP, OFFSET, SIZE

MASK = "mask"
MIN_OVERLAP = 0.7  # CenterNet/CornerNet default


def gaussian_radius(height: tf.Tensor, width: tf.Tensor,
                    min_overlap: float = MIN_OVERLAP) -> tf.Tensor:
    """CenterNet's ``gaussian_radius`` (vectorised), in grid cells.

    The radius within which a corner-shifted box still has IoU >= ``min_overlap`` with
    the true one; kept formula-for-formula identical to the reference implementation
    (including its well-known ``/ 2`` quirk) so published hyperparameters transfer.
    """
    area = height * width
    b1 = height + width
    c1 = area * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + tf.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * area
    r2 = (b2 + tf.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * area
    r3 = (b3 + tf.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return tf.minimum(tf.minimum(r1, r2), r3)


def encode_targets(boxes: tf.Tensor, classes: tf.Tensor, grid: int,
                   num_classes: int) -> dict[str, tf.Tensor]:
    """Encodes one image's objects as dense CenterNet targets.

    Args:
      boxes: float32 [N, 4] normalized (ymin, xmin, ymax, xmax); N may be 0.
      classes: int [N] 1-based class labels.
      grid: output grid side (input_size // OUTPUT_STRIDE).
      num_classes: heatmap channels.
    Returns:
      Dict of ``HEATMAP``, ``SIZE``, ``OFFSET``, ``MASK`` tensors (see module docstring).
    """
    boxes = tf.cast(tf.reshape(boxes, (-1, 4)), tf.float32) * grid
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
    height, width = ymax - ymin, xmax - xmin
    cy, cx = (ymin + ymax) / 2, (xmin + xmax) / 2
    iy = tf.clip_by_value(tf.floor(cy), 0, grid - 1)
    ix = tf.clip_by_value(tf.floor(cx), 0, grid - 1)

    # --- heatmap: per-object Gaussian, truncated at the radius, max over objects -------
    radius = tf.maximum(0.0, tf.floor(gaussian_radius(tf.math.ceil(height), tf.math.ceil(width))))
    sigma = (2 * radius + 1) / 6
    cells = tf.range(grid, dtype=tf.float32)
    dy = cells[None, :] - iy[:, None]  # [N, grid]
    dx = cells[None, :] - ix[:, None]
    r = radius[:, None]
    gy = tf.where(tf.abs(dy) <= r, tf.exp(-(dy**2) / (2 * sigma[:, None] ** 2)), 0.0)
    gx = tf.where(tf.abs(dx) <= r, tf.exp(-(dx**2) / (2 * sigma[:, None] ** 2)), 0.0)
    gauss = gy[:, :, None] * gx[:, None, :]  # [N, grid, grid], separable
    one_hot = tf.one_hot(tf.cast(classes, tf.int32) - 1, num_classes)  # [N, C]
    splats = gauss[..., None] * one_hot[:, None, None, :]
    heatmap = tf.reduce_max(tf.concat([tf.zeros((1, grid, grid, num_classes)), splats], 0), 0)

    # --- size/offset at centre cells; on a collision the smallest object wins --------
    is_centre = tf.logical_and(tf.equal(dy, 0.0)[:, :, None], tf.equal(dx, 0.0)[:, None, :])
    priority = tf.where(is_centre, -(height * width)[:, None, None], -float("inf"))
    # Row 0 is "no object": argmax picks it only where no centre falls (ties -> lowest).
    owner = tf.argmax(tf.concat([tf.fill((1, grid, grid), -float("inf")), priority], 0), 0)
    per_object = tf.stack([width, height, cx - ix, cy - iy], axis=1)  # [N, 4]
    values = tf.gather(tf.concat([tf.zeros((1, 4)), per_object], 0), owner)
    mask = tf.cast(owner > 0, tf.float32)
    return {HEATMAP: heatmap, SIZE: values[..., :2], OFFSET: values[..., 2:], MASK: mask}
