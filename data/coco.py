"""COCO detection datasets -> Sightline tf.Examples, with quarantine and content digests.

Ingestion is split in two so bad input is caught where it is cheapest and nothing is
silently lost:

* ``plan_records`` checks the annotations file as a whole (duplicate ids, annotations
  for missing images, unknown categories, impossible boxes) and returns one
  ``ImageRecord`` per good image plus a ``Quarantined`` row per bad record.
* ``record_to_example`` reads and decodes one image (run in Beam workers), checks
  it against its entry, and builds the tf.Example; it raises ``RecordError`` with the
  quarantine reason when the image cannot be used.

A record is an image with all its annotations: if one annotation is bad the whole
image is quarantined, because training on an image with an unlabelled object teaches
the model that the object is background.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from data import boxes
from data import feature_spec as fs

# Quarantine reasons: a stable vocabulary, used in reports, MLMD and tests.
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_SIZE_MISMATCH = "image_size_mismatch"
BOX_OUTSIDE_IMAGE = "box_outside_image"
NONPOSITIVE_AREA = "nonpositive_area"
UNKNOWN_CATEGORY = "unknown_category"
DUPLICATE_IMAGE_ID = "duplicate_image_id"
MISSING_IMAGE = "missing_image"
REASONS = (
    UNREADABLE_IMAGE,
    IMAGE_SIZE_MISMATCH,
    BOX_OUTSIDE_IMAGE,
    NONPOSITIVE_AREA,
    UNKNOWN_CATEGORY,
    DUPLICATE_IMAGE_ID,
    MISSING_IMAGE,
)

# COCO boxes are often rounded outwards by a pixel; beyond this they are wrong.
BOX_TOLERANCE_PX = 1.0
_IMAGE_FORMATS = {"JPEG": "jpeg", "PNG": "png"}


class CocoFormatError(ValueError):
    """The annotations file itself is malformed: the whole ingestion must stop."""


class RecordError(ValueError):
    """One image record cannot be used; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Quarantined:
    """One record kept out of the dataset, with the rule it broke."""

    file: str
    image_id: int | None
    annotation_id: int | None
    reason: str
    detail: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """COCO category ids -> contiguous 1-based labels, in category-id order."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    def label(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1

    def name(self, category_id: int) -> str:
        return self.names[self.category_ids.index(category_id)]


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """A COCO image entry with its annotations: the unit that is kept or quarantined."""

    image: dict[str, Any]
    annotations: tuple[dict[str, Any], ...]


def load_annotations(path: str) -> dict[str, Any]:
    """Reads an annotations file, failing with the file name and what is wrong."""
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            coco = json.load(f)
    except tf.errors.NotFoundError as e:
        raise CocoFormatError(f"{path}: annotations file not found") from e
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(coco, dict):
        raise CocoFormatError(f"{path}: top level must be a JSON object, got {type(coco).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise CocoFormatError(f"{path}: '{key}' must be a list (COCO detection format)")
    _require_fields(path, "images", coco["images"], ("id", "file_name", "width", "height"))
    _require_fields(
        path, "annotations", coco["annotations"], ("id", "image_id", "category_id", "bbox")
    )
    _require_fields(path, "categories", coco["categories"], ("id", "name"))
    for ann in coco["annotations"]:
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise CocoFormatError(
                f"{path}: annotation {ann['id']}: 'bbox' must be [x, y, width, height], "
                f"got {bbox!r}"
            )
    return coco


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_fields(path: str, section: str, entries: list, fields: Iterable[str]) -> None:
    for i, entry in enumerate(entries):
        missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise CocoFormatError(f"{path}: {section}[{i}] lacks required field(s) {missing}")


def label_map_of(coco: dict[str, Any], path: str = "annotations") -> LabelMap:
    """The label map of a dataset; duplicate category ids are a format error."""
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise CocoFormatError(f"{path}: duplicate category id(s) {duplicates}")
    return LabelMap(tuple(ids), tuple(str(c["name"]) for c in categories))


def plan_records(
    coco: dict[str, Any], label_map: LabelMap
) -> tuple[list[ImageRecord], list[Quarantined]]:
    """Checks the dataset as a whole; returns good records and the quarantined ones."""
    quarantined: list[Quarantined] = []
    id_counts = Counter(img["id"] for img in coco["images"])
    images: dict[int, dict[str, Any]] = {}
    for img in coco["images"]:
        if id_counts[img["id"]] > 1:
            quarantined.append(
                Quarantined(
                    img["file_name"], img["id"], None, DUPLICATE_IMAGE_ID,
                    f"image id {img['id']} is used by {id_counts[img['id']]} image entries",
                )
            )
        else:
            images[img["id"]] = img

    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        if ann["image_id"] in images:
            by_image[ann["image_id"]].append(ann)
        elif id_counts[ann["image_id"]] == 0:
            quarantined.append(
                Quarantined(
                    "", ann["image_id"], ann["id"], MISSING_IMAGE,
                    f"annotation {ann['id']} refers to image id {ann['image_id']}, "
                    "which is not in 'images'",
                )
            )

    records = []
    for image_id in sorted(images):
        img, anns = images[image_id], tuple(by_image[image_id])
        problems = (_annotation_problem(img, a, label_map) for a in anns)
        problem = next((p for p in problems if p), None)
        if problem:
            quarantined.append(Quarantined(img["file_name"], image_id, *problem))
        else:
            records.append(ImageRecord(img, anns))
    return records, quarantined


def _annotation_problem(
    img: dict[str, Any], ann: dict[str, Any], label_map: LabelMap
) -> tuple[int, str, str] | None:
    """(annotation id, reason, detail) of the first rule an annotation breaks, or None."""
    x, y, w, h = ann["bbox"]
    if ann["category_id"] not in label_map.category_ids:
        return ann["id"], UNKNOWN_CATEGORY, (
            f"annotation {ann['id']}: category_id {ann['category_id']} is not in 'categories' "
            f"{list(label_map.category_ids)}"
        )
    if w <= 0 or h <= 0 or ann.get("area", w * h) <= 0:
        return ann["id"], NONPOSITIVE_AREA, (
            f"annotation {ann['id']}: bbox {ann['bbox']} / area {ann.get('area')} must be > 0"
        )
    t = BOX_TOLERANCE_PX
    if x < -t or y < -t or x + w > img["width"] + t or y + h > img["height"] + t:
        return ann["id"], BOX_OUTSIDE_IMAGE, (
            f"annotation {ann['id']}: bbox {ann['bbox']} exceeds the "
            f"{img['width']}x{img['height']} image by more than {t} px"
        )
    return None


def record_digest(image_bytes: bytes, record: ImageRecord, label_map: LabelMap) -> str:
    """SHA-256 of an image's bytes and its annotations: one changed pixel or box changes it."""
    annotations = [
        {
            "bbox": [float(v) for v in a["bbox"]],
            "category": label_map.name(a["category_id"]),
            "area": float(a.get("area", a["bbox"][2] * a["bbox"][3])),
            "iscrowd": int(a.get("iscrowd", 0)),
        }
        for a in record.annotations
    ]
    h = hashlib.sha256(hashlib.sha256(image_bytes).digest())
    h.update(json.dumps(annotations, sort_keys=True).encode())
    return h.hexdigest()


def content_hash(digests: Iterable[str]) -> str:
    """A split's content hash: SHA-256 over its sorted per-image digests (order-free)."""
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def image_statistics(pixels: np.ndarray) -> dict[str, float]:
    """Cheap statistics that give TFDV something to see drift in."""
    gray = pixels.astype(np.float32).mean(axis=-1) / 255.0
    return {fs.STATS_BRIGHTNESS: float(gray.mean()), fs.STATS_CONTRAST: float(gray.std())}


def record_to_example(record: ImageRecord, image_dir: str, label_map: LabelMap) -> tf.train.Example:
    """Reads one image and builds its tf.Example; raises RecordError if it is unusable."""
    img = record.image
    path = os.path.join(image_dir, img["file_name"])
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            encoded = f.read()
        if not encoded:
            raise RecordError(UNREADABLE_IMAGE, f"{path}: file is empty (0 bytes)")
        with Image.open(io.BytesIO(encoded)) as pil:
            image_format = _IMAGE_FORMATS.get(pil.format or "")
            if image_format is None:
                raise RecordError(UNREADABLE_IMAGE, f"{path}: format {pil.format} is not JPEG/PNG")
            pixels = np.asarray(pil.convert("RGB"))
    except tf.errors.NotFoundError as e:
        raise RecordError(UNREADABLE_IMAGE, f"{path}: file not found") from e
    except (OSError, SyntaxError) as e:  # PIL's errors for truncated or corrupt files
        raise RecordError(UNREADABLE_IMAGE, f"{path}: cannot decode image ({e})") from e
    height, width = pixels.shape[:2]
    if (height, width) != (img["height"], img["width"]):
        raise RecordError(
            IMAGE_SIZE_MISMATCH,
            f"{path}: image is {width}x{height} but its entry says {img['width']}x{img['height']}",
        )
    coco_boxes = [ann["bbox"] for ann in record.annotations]
    # Clipped to the image: COCO boxes may overhang by BOX_TOLERANCE_PX.
    normalized = np.clip(boxes.convert(np.asarray(coco_boxes, np.float64).reshape(-1, 4),
                                       boxes.COCO, boxes.YXYX, height=height, width=width,
                                       where=path), 0.0, 1.0)
    return fs.build_example(
        encoded=encoded,
        image_format=image_format,
        height=height,
        width=width,
        source_id=str(img["id"]),
        filename=img["file_name"],
        sha256=record_digest(encoded, record, label_map),
        boxes=normalized.tolist(),
        labels=[label_map.label(a["category_id"]) for a in record.annotations],
        texts=[label_map.name(a["category_id"]) for a in record.annotations],
        areas=[float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in record.annotations],
        is_crowd=[int(a.get("iscrowd", 0)) for a in record.annotations],
        meta={f: _meta_value(img, f) for f in fs.META_FIELDS},
        stats=image_statistics(pixels),
    )


def _meta_value(img: dict[str, Any], field: str) -> str:
    """A metadata field from the image entry, or its ``attributes`` dict, or "unknown"."""
    value = img.get(field, (img.get("attributes") or {}).get(field))
    return fs.META_UNKNOWN if value is None else str(value)
