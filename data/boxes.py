"""Box formats, named wherever boxes cross a module boundary; mismatches are rejected.

* ``YXYX``: normalized ``(ymin, xmin, ymax, xmax)``: the tf.Example features
  (``feature_spec.BOX_KEYS``), training targets, and every signature's ``detection_boxes``
  (the TF Object Detection API's order).
* ``XYXY``: normalized ``(xmin, ymin, xmax, ymax)``: the exact COCO metric
  (``cocoeval.ImageData``) and DriftCheck's box checks.
* ``COCO``: pixels ``(x, y, width, height)``: COCO annotation files and results.

``convert`` is the one way between them; it refuses an unknown format name, a last axis
that is not 4, and corners out of order for the format claimed (e.g. ``xyxy`` boxes passed
as ``yxyx`` often have "ymin > ymax"), naming the format and where the boxes came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from data import feature_spec as fs

YXYX = "yxyx"
XYXY = "xyxy"
COCO = "coco"
FORMATS = (YXYX, XYXY, COCO)
# Feature keys in each normalized format's column order.
FEATURE_KEYS = {YXYX: fs.BOX_KEYS, XYXY: (fs.BBOX_XMIN, fs.BBOX_YMIN, fs.BBOX_XMAX, fs.BBOX_YMAX)}
_CORNERS = {YXYX: (0, 1, 2, 3), XYXY: (1, 0, 3, 2)}  # column of ymin, xmin, ymax, xmax


def check(boxes: Any, box_format: str, where: str = "boxes") -> np.ndarray:
    """``boxes`` as an [N, 4] array, or ValueError if they cannot be in ``box_format``."""
    if box_format not in FORMATS:
        raise ValueError(f"{where}: unknown box format {box_format!r}; use one of {FORMATS}")
    array = np.asarray(boxes)
    if array.shape[-1:] != (4,) and array.size:
        raise ValueError(f"{where}: boxes must have 4 coordinates on the last axis, "
                         f"got shape {array.shape}")
    array = array.reshape(-1, 4)
    if box_format == COCO:
        bad = (array[:, 2] < 0) | (array[:, 3] < 0)
        rule = "negative width or height"
    else:
        ymin, xmin, ymax, xmax = (array[:, i] for i in _CORNERS[box_format])
        bad = (ymin > ymax) | (xmin > xmax)
        rule = "min > max corners"
    if bad.any():
        raise ValueError(f"{where}: {int(bad.sum())} of {len(array)} boxes given as "
                         f"{box_format} have {rule} (first: {array[bad][0].tolist()}); "
                         "are they in another format?")
    return array


def convert(boxes: Any, source: str, target: str, *, height: float | None = None,
            width: float | None = None, where: str = "boxes") -> np.ndarray:
    """[N, 4] boxes from ``source`` to ``target`` format; ``COCO`` needs the image size."""
    array = check(boxes, source, where)
    check(np.zeros((0, 4)), target, where)
    if COCO in (source, target) and (height is None or width is None):
        raise ValueError(f"{where}: converting {source} -> {target} needs the image size")
    if source == COCO:
        x, y, w, h = array.T
        yxyx = np.stack([y / height, x / width, (y + h) / height, (x + w) / width], axis=1)
    else:
        yxyx = array[:, _CORNERS[source]]
    if target == COCO:
        ymin, xmin, ymax, xmax = yxyx.T
        return np.stack([xmin * width, ymin * height, (xmax - xmin) * width,
                         (ymax - ymin) * height], axis=1)
    return yxyx[:, _CORNERS[target]]


def from_features(features: Mapping[str, Any], box_format: str) -> np.ndarray:
    """[N, 4] boxes of one example's features (``{key: values}``) in ``box_format``."""
    if box_format not in FEATURE_KEYS:
        raise ValueError(f"features hold normalized boxes: ask for one of {tuple(FEATURE_KEYS)}")
    missing = [k for k in FEATURE_KEYS[box_format] if k not in features]
    if missing:
        raise KeyError(f"the example lacks the box feature '{missing[0]}'; available: "
                       f"{sorted(features)}")
    columns = [np.asarray(features[k]).reshape(-1) for k in FEATURE_KEYS[box_format]]
    return np.stack(columns, axis=1)
