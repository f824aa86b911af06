"""Accuracy and calibration in production, from a labelled sample of logged images.

A labelled sample is a COCO file whose images are files someone labelled after they were
served. They are matched to logged images by the **SHA-256 of the image file's bytes**:
the request logs always carry each image's digest (even when the server redacted the
bytes) but never a file name, so the digest is the one key both sides have. Labelled
images go through the pipeline's own ingestion (``data.coco``: the same quarantine rules
and tf.Example) and are scored with the Evaluator's metric code
(``components.coco_eval.metric``: COCOeval mAP, D-ECE) on the detections that were
actually served, per slice, and compared with the Evaluator's numbers in ML Metadata.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.coco_eval import metric, offline
from components.coco_eval import results as eval_results
from data import coco
from data import feature_spec as fs
from pipelines.monitoring.traffic import ServedImage
from pipelines.settings import MonitorSettings

HEADLINE = (metric.MAP, metric.DECE)


@dataclasses.dataclass
class LabelledSample:
    """The matched labelled images and what did not match."""

    path: str
    images: dict[str, list[Any]]  # slice name -> cocoeval.ImageData
    listed: int
    matched: int
    quarantined: int


def match(labels_path: str, served: Sequence[ServedImage], class_names: Sequence[str],
          images_root: str | None = None) -> LabelledSample:
    """The labelled images that were served, as the Evaluator's ImageData, per slice.

    Raises:
      data.coco.CocoFormatError: the file is not a COCO detection file (names the file).
      ValueError: its categories are not the model's classes.
    """
    data = coco.load_annotations(labels_path)
    label_map = coco.label_map_of(data, labels_path)
    if list(label_map.names) != list(class_names):
        raise ValueError(f"{labels_path}: categories {list(label_map.names)} are not the "
                         f"model's classes {list(class_names)} (label i+1 is the i-th)")
    root = images_root or os.path.dirname(os.path.abspath(labels_path))
    records, quarantined = coco.plan_records(data, label_map)
    by_digest = {image.digest: image for image in served if image.digest}
    images: dict[str, list[Any]] = collections.defaultdict(list)
    matched = 0
    refused: list[coco.RecordError] = []
    for example in coco.examples_of(records, root, label_map, refused):
        features = offline.example_features(example.SerializeToString())
        served_image = by_digest.get(hashlib.sha256(features[fs.IMAGE_ENCODED][0]).hexdigest())
        if served_image is None:
            continue
        matched += 1
        found = served_image.detections
        outputs = {fs.DETECTION_BOXES: found.boxes, fs.DETECTION_SCORES: found.scores,
                   fs.DETECTION_CLASSES: found.classes.astype(np.float32),
                   fs.NUM_DETECTIONS: np.array([len(found.scores)])}
        image = metric.image_data(features, outputs)
        images[eval_results.OVERALL].append(image)
        for key in fs.META_KEYS:
            field = key.removeprefix(fs.META_PREFIX)
            value = served_image.meta.get(field) or features.get(key, [b""])[0].decode()
            if value:
                images[f"{key}={value}"].append(image)
    return LabelledSample(labels_path, dict(images), len(data["images"]), matched,
                          len(quarantined) + len(refused))


def compare(sample: LabelledSample, class_names: Sequence[str],
            evaluation: Mapping[str, Mapping[str, Any]], settings: MonitorSettings
            ) -> list[dict[str, Any]]:
    """Per slice: production mAP / D-ECE, the Evaluator's, and whether either moved too far.

    ``evaluation``: the Evaluator's candidate metrics by slice (``results.load_metrics``).
    Slices with fewer than ``min_slice_images`` labelled images are shown, not judged.
    """
    rows = []
    for name, images in sorted(sample.images.items(),
                               key=lambda kv: (kv[0] != eval_results.OVERALL, kv[0])):
        values = metric.coco_metrics(images, class_names, settings.min_slice_images)
        evaluated = evaluation.get(name, {})
        row: dict[str, Any] = {"slice": name, "images": len(images),
                               "enough_images": bool(values[metric.ENOUGH_IMAGES]),
                               "problems": []}
        for key in HEADLINE:
            row[key] = float(values[key])
            row[f"eval_{key}"] = float(evaluated[key]) if key in evaluated else None
        if row["enough_images"] and row[f"eval_{metric.MAP}"] is not None:
            drop = row[f"eval_{metric.MAP}"] - row[metric.MAP]
            if drop > settings.max_map_drop:
                row["problems"].append(f"mAP {row[metric.MAP]:.3f} is {drop:.3f} below the "
                                       f"evaluation's (max drop {settings.max_map_drop})")
        if (row["enough_images"] and row[f"eval_{metric.DECE}"] is not None
                and row[metric.DECE] >= 0 and row[f"eval_{metric.DECE}"] >= 0):
            rise = row[metric.DECE] - row[f"eval_{metric.DECE}"]
            if rise > settings.max_dece_rise:
                row["problems"].append(f"D-ECE {row[metric.DECE]:.3f} is {rise:.3f} above the "
                                       f"evaluation's (max rise {settings.max_dece_rise})")
        bins = (metric.RELIABILITY_SCORE, metric.RELIABILITY_PRECISION, metric.RELIABILITY_COUNT)
        row["reliability"] = {k: np.asarray(values[k]).tolist() for k in bins}
        row["eval_reliability"] = ({k: np.asarray(evaluated[k]).tolist() for k in bins}
                                   if all(k in evaluated for k in bins) else None)
        rows.append(row)
    return rows
