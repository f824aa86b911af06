"""Annotation-quality checks on a split's boxes: looser/tighter classes, duplicates, tiny boxes.

Labelling policy problems hide from feature-level statistics: one class whose annotators
started drawing looser boxes barely moves the overall box-size distribution. Box *size*
per class is no help either (objects come in all sizes; its median is noise), but box
*fit* is: the object's own area (COCO ``area``: its segmentation's pixels) over its box's
area. A looser box lowers it whatever the object's size. Each class's median fit is
compared with the baseline span's, and each span is scanned for duplicate boxes (same
class, IoU > 0.9 in one image) and boxes too small to be a real label. Findings name
example ids.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from components.drift_check.drift import BOX_ASPECT
from data import boxes as box_formats
from data import feature_spec as fs

MAX_IDS = 20  # example ids listed per finding; the counts are complete
_BOX_KEYS = box_formats.FEATURE_KEYS[box_formats.XYXY]  # ImageBoxes.boxes' column order


# Per-image values read besides the boxes: what PSI is computed on (drift.py).
SCALAR_FEATURES = (fs.STATS_BRIGHTNESS, fs.STATS_CONTRAST, fs.STATS_NUM_OBJECTS)
CATEGORY_FEATURES = fs.META_KEYS


@dataclasses.dataclass(frozen=True)
class ImageBoxes:
    source_id: str
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] data.boxes.XYXY
    labels: np.ndarray  # [N] 1-based class
    areas: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))  # [N] pixels
    values: dict = dataclasses.field(default_factory=dict)  # SCALAR/CATEGORY_FEATURES


def feature_values(images: Sequence[ImageBoxes]) -> dict[str, np.ndarray]:
    """Every value of each drift-checked feature over the images (object features flattened)."""
    values = {key: np.array([image.values[key] for image in images])
              for key in SCALAR_FEATURES + CATEGORY_FEATURES}
    values[fs.CLASS_LABEL] = np.concatenate([image.labels for image in images]).astype(str)
    values[fs.AREA] = np.concatenate([image.areas for image in images])
    values[BOX_ASPECT] = np.concatenate([_log2_aspect(image) for image in images])
    return values


def _log2_aspect(image: ImageBoxes) -> np.ndarray:
    wh = (image.boxes[:, 2:] - image.boxes[:, :2]) * [image.width, image.height]
    return np.log2(np.maximum(wh[:, 0], 1e-6) / np.maximum(wh[:, 1], 1e-6))


def read_split(split_uri: str) -> Iterator[ImageBoxes]:
    """Boxes and drift-checked values of every tf.Example in a split (gzipped TFRecords)."""
    files = sorted(glob.glob(os.path.join(split_uri, "*")))
    spec = {k: tf.io.VarLenFeature(tf.float32) for k in _BOX_KEYS}
    spec[fs.CLASS_LABEL] = tf.io.VarLenFeature(tf.int64)
    spec[fs.AREA] = tf.io.VarLenFeature(tf.float32)
    for key in (fs.IMAGE_WIDTH, fs.IMAGE_HEIGHT, fs.STATS_NUM_OBJECTS):
        spec[key] = tf.io.FixedLenFeature([], tf.int64)
    for key in (fs.STATS_BRIGHTNESS, fs.STATS_CONTRAST):
        spec[key] = tf.io.FixedLenFeature([], tf.float32)
    for key in (fs.IMAGE_SOURCE_ID, *CATEGORY_FEATURES):
        spec[key] = tf.io.FixedLenFeature([], tf.string, default_value="")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256)
    for batch in dataset:
        parsed = tf.io.parse_example(batch, spec)
        dense = {k: tf.RaggedTensor.from_sparse(v).to_list() if isinstance(v, tf.SparseTensor)
                 else v.numpy() for k, v in parsed.items()}
        for i in range(len(dense[fs.IMAGE_WIDTH])):
            yield ImageBoxes(
                source_id=dense[fs.IMAGE_SOURCE_ID][i].decode(),
                width=int(dense[fs.IMAGE_WIDTH][i]),
                height=int(dense[fs.IMAGE_HEIGHT][i]),
                boxes=np.array([dense[k][i] for k in _BOX_KEYS], np.float64).T.reshape(-1, 4),
                labels=np.array(dense[fs.CLASS_LABEL][i], np.int64),
                areas=np.array(dense[fs.AREA][i], np.float64),
                values={key: _plain(dense[key][i]) for key in SCALAR_FEATURES + CATEGORY_FEATURES},
            )


def _plain(value: Any) -> float | str:
    return value.decode() if isinstance(value, bytes) else float(value)


def class_box_stats(images: Sequence[ImageBoxes], class_names: Sequence[str]) -> dict:
    """Per class: box count, median fit (object area / box area) and median box size."""
    rows: dict[int, list[tuple[float, float, float]]] = {}
    for image in images:
        wh = image.boxes[:, 2:] - image.boxes[:, :2]
        box_pixels = wh[:, 0] * wh[:, 1] * image.width * image.height
        fit = image.areas / np.maximum(box_pixels, 1e-9)
        for label, (w, h), f in zip(image.labels, wh, fit, strict=True):
            rows.setdefault(int(label), []).append((w, h, f))
    stats = {}
    for label, values in sorted(rows.items()):
        w, h, fit = np.array(values).T
        name = class_names[label - 1] if 1 <= label <= len(class_names) else str(label)
        stats[name] = {"boxes": len(fit), "median_fit": float(np.median(fit)),
                       "median_width": float(np.median(w)),
                       "median_height": float(np.median(h))}
    return stats


def box_fit_changes(current: dict, baseline: dict, tolerance: float, min_boxes: int = 30
                    ) -> dict[str, float]:
    """Classes whose median box fit changed by more than ``tolerance`` (0.3: ±30 %).

    Returns class -> current / baseline ratio of the median fit (< 1: looser boxes).
    Classes with fewer than ``min_boxes`` boxes in either span are not judged.
    """
    changes = {}
    for name, now in current.items():
        before = baseline.get(name)
        if not before or min(now["boxes"], before["boxes"]) < min_boxes:
            continue
        ratio = now["median_fit"] / before["median_fit"]
        if abs(np.log(ratio)) > np.log1p(tolerance):
            changes[name] = round(ratio, 3)
    return changes


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def quality_findings(images: Sequence[ImageBoxes], duplicate_iou: float, min_box_pixels: float
                     ) -> dict[str, dict]:
    """Duplicate boxes (same class, IoU > duplicate_iou) and boxes under min_box_pixels a side.

    Returns {"duplicate_boxes": {"count", "example_ids"}, "tiny_boxes": {...}}.
    """
    found: dict[str, list[str]] = {"duplicate_boxes": [], "tiny_boxes": []}
    counts = {"duplicate_boxes": 0, "tiny_boxes": 0}
    for image in images:
        pixels = (image.boxes[:, 2:] - image.boxes[:, :2]) * [image.width, image.height]
        tiny = int(np.sum(pixels.min(axis=1, initial=np.inf) < min_box_pixels)) if len(
            pixels) else 0
        iou = _iou(image.boxes, image.boxes)
        same = image.labels[:, None] == image.labels[None, :]
        duplicates = int(np.sum(np.triu((iou > duplicate_iou) & same, k=1)))
        for kind, count in (("duplicate_boxes", duplicates), ("tiny_boxes", tiny)):
            if count:
                counts[kind] += count
                found[kind].append(image.source_id)
    return {kind: {"count": counts[kind], "example_ids": ids[:MAX_IDS]}
            for kind, ids in found.items()}
