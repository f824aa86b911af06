"""Model outputs for tests, from rows of (xmin, ymin, xmax, ymax, class, score)."""

from __future__ import annotations

from typing import Any

import numpy as np

from data import feature_spec as fs


def outputs_from_rows(rows: Any, count: Any, ops: Any = np) -> dict[str, Any]:
    """The signature outputs (``data.feature_spec.DETECTION_OUTPUTS``) of ``rows`` [..., K, 6].

    ``ops`` is numpy, or ``tf`` inside a traced function.
    """
    xmin, ymin, xmax, ymax = (rows[..., i] for i in range(4))
    return {
        fs.DETECTION_BOXES: ops.stack([ymin, xmin, ymax, xmax], axis=-1),  # data.boxes.YXYX
        fs.DETECTION_CLASSES: rows[..., 4],
        fs.DETECTION_SCORES: rows[..., 5],
        fs.NUM_DETECTIONS: count,
    }


def rows_from_outputs(outputs: dict[str, Any]) -> np.ndarray:
    """The inverse: [..., K, 6] rows of (xmin, ymin, xmax, ymax, class, score)."""
    boxes = np.asarray(outputs[fs.DETECTION_BOXES])
    return np.concatenate([boxes[..., [1, 0, 3, 2]],
                           np.asarray(outputs[fs.DETECTION_CLASSES])[..., None],
                           np.asarray(outputs[fs.DETECTION_SCORES])[..., None]], axis=-1)
