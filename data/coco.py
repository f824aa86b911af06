"""COCO detection datasets -> Sightline tf.Examples, with quarantine and content digests.

Ingestion is split so bad input is caught where it is cheapest and nothing is silently
lost:

* ``load_annotations`` refuses a file whose structure is broken (not JSON, not an object,
  no ``images``/``annotations``/``categories`` lists, a malformed category list): nothing
  in it can be trusted, so the whole ingestion stops with ``CocoFormatError``.
* ``plan_records`` checks every image entry and annotation and returns one
  ``ImageRecord`` per good image plus a ``Quarantined`` row per bad record, listing every
  rule the record broke.
* ``record_to_example`` reads and decodes one image (run in Beam workers), checks
  it against its entry, and builds the tf.Example; it raises ``RecordError`` with the
  quarantine reason when the image cannot be used.

A record is an image with all its annotations: if one annotation is bad the whole
image is quarantined, because training on an image with an unlabelled object teaches
the model that the object is background. Every listed image entry ends up either kept or
in exactly one quarantine row; an annotation that belongs to no listed image gets a row
of its own (``record="annotation"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import posixpath
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from data import boxes
from data import feature_spec as fs

# Quarantine reasons: a stable vocabulary, used in reports, MLMD and tests, explained one
# line each in docs/pipeline.md. The order is the precedence of a row's primary reason
# (the one counted) when a record broke several rules.
IMAGE_ENTRY_MALFORMED = "image_entry_malformed"  # 'images' entry lacks/mistypes a field
DUPLICATE_IMAGE_ID = "duplicate_image_id"
IMAGE_OUTSIDE_ROOT = "image_outside_root"  # file_name leads outside the images root
IMAGE_FILE_MISSING = "image_file_missing"
IMAGE_FILE_UNREADABLE = "image_file_unreadable"  # exists, but is a folder or not permitted
IMAGE_UNDECODABLE = "image_undecodable"  # empty, truncated or corrupt
IMAGE_FORMAT_UNSUPPORTED = "image_format_unsupported"  # decodes, but is not JPEG/PNG
IMAGE_SIZE_MISMATCH = "image_size_mismatch"
ANNOTATION_UNKNOWN_IMAGE = "annotation_unknown_image"  # image_id not in 'images'
ANNOTATION_MALFORMED = "annotation_malformed"  # lacks/mistypes a field (bbox aside)
ANNOTATION_BBOX_MALFORMED = "annotation_bbox_malformed"
ANNOTATION_NONFINITE = "annotation_nonfinite"  # NaN or infinity in bbox or area
ANNOTATION_UNKNOWN_CATEGORY = "annotation_unknown_category"
ANNOTATION_NONPOSITIVE_AREA = "annotation_nonpositive_area"
ANNOTATION_BOX_OUTSIDE_IMAGE = "annotation_box_outside_image"
REASONS = (
    IMAGE_ENTRY_MALFORMED,
    DUPLICATE_IMAGE_ID,
    IMAGE_OUTSIDE_ROOT,
    IMAGE_FILE_MISSING,
    IMAGE_FILE_UNREADABLE,
    IMAGE_UNDECODABLE,
    IMAGE_FORMAT_UNSUPPORTED,
    IMAGE_SIZE_MISMATCH,
    ANNOTATION_UNKNOWN_IMAGE,
    ANNOTATION_MALFORMED,
    ANNOTATION_BBOX_MALFORMED,
    ANNOTATION_NONFINITE,
    ANNOTATION_UNKNOWN_CATEGORY,
    ANNOTATION_NONPOSITIVE_AREA,
    ANNOTATION_BOX_OUTSIDE_IMAGE,
)
# What a quarantine row stands for: a listed image entry, or an annotation of no listed image.
IMAGE_RECORD, ANNOTATION_RECORD = "image", "annotation"

IMAGE_FIELDS = ("id", "file_name", "width", "height")
ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox")
# COCO boxes are often rounded outwards by a pixel; beyond this they are wrong.
BOX_TOLERANCE_PX = 1.0
# More than this fraction of listed files missing: the images root is probably wrong.
MISSING_IMAGES_HINT_FRACTION = 0.5
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
class Problem:
    """One rule a record broke; ``annotation_id`` is None for the image entry's own problems."""

    reason: str
    detail: str
    annotation_id: int | str | None = None


@dataclasses.dataclass(frozen=True)
class Quarantined:
    """One quarantine row: a record kept out of the dataset, with every rule it broke.

    ``reason``, ``detail`` and ``annotation_id`` are the primary problem's, the one counted
    per reason (the first in ``REASONS`` order); ``problems`` lists all of them.
    ``record`` is ``IMAGE_RECORD`` for a listed image entry, ``ANNOTATION_RECORD`` for an
    annotation that belongs to no listed image (it has no image to be part of).
    """

    file: str
    image_id: int | str | None
    annotation_id: int | str | None
    reason: str
    detail: str
    problems: tuple[Problem, ...] = ()
    record: str = IMAGE_RECORD

    @classmethod
    def of(cls, file: str, image_id: int | str | None, problems: Sequence[Problem],
           record: str = IMAGE_RECORD) -> Quarantined:
        """The row of a record that broke ``problems`` (at least one)."""
        primary = min(problems, key=lambda p: REASONS.index(p.reason))  # first of equals
        return cls(file, image_id, primary.annotation_id, primary.reason, primary.detail,
                   tuple(problems), record)

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


# --- the file's structure: broken structure stops the ingestion ---------------------------


def load_annotations(path: str) -> dict[str, Any]:
    """Reads an annotations file, failing with the file name and what is wrong.

    Only the structure is checked here; bad entries inside the lists are
    ``plan_records``'s to quarantine.
    """
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
    # The categories are the label space of every record: one bad entry spoils them all.
    for i, category in enumerate(coco["categories"]):
        if not (isinstance(category, dict) and "id" in category and "name" in category):
            raise CocoFormatError(f"{path}: categories[{i}] must be an object with 'id' and "
                                  f"'name', got {_short(category)}")
        if not _is_int(category["id"]):
            raise CocoFormatError(f"{path}: categories[{i}]: 'id' must be an integer, got "
                                  f"{_short(category['id'])}")
    return coco


def label_map_of(coco: dict[str, Any], path: str = "annotations") -> LabelMap:
    """The label map of a dataset; duplicate category ids are a format error."""
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise CocoFormatError(f"{path}: duplicate category id(s) {duplicates}")
    return LabelMap(tuple(ids), tuple(str(c["name"]) for c in categories))


# --- planning: every entry checked, bad records quarantined with every rule they broke -----


def plan_records(
    coco: dict[str, Any], label_map: LabelMap
) -> tuple[list[ImageRecord], list[Quarantined]]:
    """Checks the dataset as a whole; returns good records and the quarantined ones.

    Records come in the order of the 'images' list; each record's annotations in
    annotation-id order (the objects' order in its tf.Example and in its digest).
    """
    quarantined: list[Quarantined] = []
    id_counts = Counter(_image_id(entry) for entry in coco["images"])
    by_image: dict[int | str, list[dict[str, Any]]] = defaultdict(list)
    for index, ann in enumerate(coco["annotations"]):
        orphan = _orphan_problem(index, ann, id_counts)
        if orphan:
            image_id = ann.get("image_id") if orphan.reason == ANNOTATION_UNKNOWN_IMAGE else None
            quarantined.append(Quarantined.of("", image_id, [orphan], ANNOTATION_RECORD))
        else:
            by_image[ann["image_id"]].append(ann)

    records = []
    for index, entry in enumerate(coco["images"]):
        image_id = _image_id(entry)
        problems = _image_entry_problems(index, entry)
        if not problems and id_counts[image_id] > 1:
            problems.append(Problem(DUPLICATE_IMAGE_ID, (
                f"image id {image_id!r} is used by {id_counts[image_id]} image entries")))
        anns = sorted(by_image[image_id], key=lambda a: _id_order(a.get("id"))) \
            if image_id is not None else []
        problems += [p for ann in anns for p in annotation_problems(entry, ann, label_map)]
        if problems:
            quarantined.append(Quarantined.of(_file_of(entry), image_id, problems))
        else:
            records.append(ImageRecord(entry, tuple(anns)))
    return records, quarantined


def _image_entry_problems(index: int, entry: Any) -> list[Problem]:
    """What is wrong with one 'images' entry itself (its annotations aside)."""
    where = f"images[{index}]"
    if not isinstance(entry, dict):
        return [Problem(IMAGE_ENTRY_MALFORMED, f"{where} is not an object: {_short(entry)}")]
    missing = [f for f in IMAGE_FIELDS if f not in entry]
    wrong = [f"lacks required field(s) {missing}"] if missing else []
    if "id" in entry and not _is_id(entry["id"]):
        wrong.append(f"'id' must be an integer or a string, got {_short(entry['id'])}")
    file_name = entry.get("file_name", "")
    if "file_name" in entry and not (isinstance(file_name, str) and file_name):
        wrong.append(f"'file_name' must be a non-empty string, got {_short(file_name)}")
    for field in ("width", "height"):
        if field in entry and not _is_size(entry[field]):
            wrong.append(f"'{field}' must be a positive number, got {_short(entry[field])}")
    if _is_id(entry.get("id")):
        where += f" (id {entry['id']!r})"
    return [Problem(IMAGE_ENTRY_MALFORMED, f"{where} " + "; ".join(wrong))] if wrong else []


def _orphan_problem(index: int, ann: Any, listed: Counter) -> Problem | None:
    """The problem of an annotation that belongs to no listed image entry, or None."""
    if not isinstance(ann, dict):
        return Problem(ANNOTATION_MALFORMED, f"annotations[{index}] is not an object: "
                       f"{_short(ann)}")
    ann_id = ann.get("id") if _is_id(ann.get("id")) else None
    name = f"annotation {ann_id!r}" if ann_id is not None else f"annotations[{index}]"
    if not _is_id(ann.get("image_id")):
        return Problem(ANNOTATION_MALFORMED, f"{name} has no usable 'image_id' (got "
                       f"{_short(ann.get('image_id'))}), so it belongs to no image", ann_id)
    if not listed[ann["image_id"]]:
        return Problem(ANNOTATION_UNKNOWN_IMAGE, f"{name} refers to image id "
                       f"{ann['image_id']!r}, which is not in 'images'", ann_id)
    return None


def annotation_problems(
    img: dict[str, Any], ann: dict[str, Any], label_map: LabelMap
) -> list[Problem]:
    """Every rule one annotation of ``img`` breaks (an empty list: it is good)."""
    ann_id = ann.get("id") if _is_id(ann.get("id")) else None
    name = f"annotation {ann_id!r}" if ann_id is not None else "an annotation without an id"
    problems = []
    wrong = []
    missing = [f for f in ANNOTATION_FIELDS if f not in ann]
    if missing:
        wrong.append(f"lacks required field(s) {missing}")
    if "id" in ann and ann_id is None:
        wrong.append(f"'id' must be an integer or a string, got {_short(ann['id'])}")
    if "area" in ann and not _is_number(ann["area"]):
        wrong.append(f"'area' must be a number, got {_short(ann['area'])}")
    if ann.get("iscrowd", 0) not in (0, 1):
        wrong.append(f"'iscrowd' must be 0 or 1, got {_short(ann['iscrowd'])}")
    if wrong:
        problems.append(Problem(ANNOTATION_MALFORMED, f"{name}: " + "; ".join(wrong), ann_id))
    category_id = ann.get("category_id")
    if "category_id" in ann and (isinstance(category_id, bool)
                                 or category_id not in label_map.category_ids):
        problems.append(Problem(ANNOTATION_UNKNOWN_CATEGORY, (
            f"{name}: category_id {_short(category_id)} is not in 'categories' "
            f"{list(label_map.category_ids)}"), ann_id))
    if "bbox" in ann:
        bbox = ann["bbox"]
        if isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox):
            problems += _box_problems(img, ann, name, ann_id)
        else:
            problems.append(Problem(ANNOTATION_BBOX_MALFORMED, (
                f"{name}: 'bbox' must be [x, y, width, height] (4 numbers), got "
                f"{_short(bbox)}"), ann_id))
    return problems


def _box_problems(img: dict[str, Any], ann: dict[str, Any], name: str,
                  ann_id: int | str | None) -> list[Problem]:
    """The rules a well-formed bbox (and its area) can break."""
    x, y, w, h = bbox = ann["bbox"]
    given = [*bbox, *([ann["area"]] if _is_number(ann.get("area")) else [])]
    if not all(_is_finite(v) for v in given):
        # NaN compares false with everything, so it would pass every check below.
        return [Problem(ANNOTATION_NONFINITE, (
            f"{name}: bbox {bbox} / area {ann.get('area')} must be finite numbers"), ann_id)]
    problems = []
    area = ann.get("area", w * h)
    if w <= 0 or h <= 0 or (_is_number(area) and area <= 0):
        problems.append(Problem(ANNOTATION_NONPOSITIVE_AREA, (
            f"{name}: bbox {bbox} / area {ann.get('area')} must be > 0"), ann_id))
    t = BOX_TOLERANCE_PX
    if not (_is_size(img.get("width")) and _is_size(img.get("height"))):
        return problems  # a malformed image entry: its own row says so
    if x < -t or y < -t or x + w > img["width"] + t or y + h > img["height"] + t:
        problems.append(Problem(ANNOTATION_BOX_OUTSIDE_IMAGE, (
            f"{name}: bbox {bbox} exceeds the {img['width']}x{img['height']} image by more "
            f"than {t} px"), ann_id))
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    """COCO ids are integers; some exporters write strings, which work as well."""
    return _is_int(value) or (isinstance(value, str) and bool(value))


def _is_size(value: Any) -> bool:
    return _is_number(value) and _is_finite(value) and value > 0


def _is_finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _id_order(value: Any) -> tuple[int, Any]:
    """A sort key for ids: integers in order, then strings, then anything else."""
    if _is_int(value):
        return 0, value
    return (1, value) if isinstance(value, str) else (2, "")


def _image_id(entry: Any) -> int | str | None:
    return entry.get("id") if isinstance(entry, dict) and _is_id(entry.get("id")) else None


def _file_of(entry: Any) -> str:
    file_name = entry.get("file_name") if isinstance(entry, dict) else None
    return file_name if isinstance(file_name, str) else ""


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` of a value from the file, cut short: a detail names it, it does not copy it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- digests -------------------------------------------------------------------------------


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


# --- image files: where they may be read from ------------------------------------------------


def is_uri(path: str) -> bool:
    """A filesystem URI such as ``gs://bucket/x``: no symlinks, no ``os.path`` semantics."""
    return "://" in path


def join_path(base: str, path: str) -> str:
    """``path`` relative to ``base``; an absolute path or URI is kept as it is."""
    if is_uri(path) or os.path.isabs(path):
        return path
    return posixpath.join(base, path) if is_uri(base) else os.path.join(base, path)


def resolve_image_path(file_name: str, images_root: str, allow_absolute_paths: bool = False
                       ) -> str:
    """Where an image entry's file is read from; RecordError if that is outside the root.

    A relative ``file_name`` must stay under ``images_root`` (``../`` may not climb out).
    An absolute one (or a URI) is read only if it lies under the root too, unless
    ``allow_absolute_paths``: then it is read as given (datasets spread over mounts).

    Symlinks: local paths are compared after ``os.path.realpath``, so a symlink inside the
    root that leads outside it is refused like ``../`` is. The root is the boundary of what
    a dataset (perhaps someone else's upload) may make the pipeline read; a root that is
    itself a symlink is resolved first, so reaching the dataset through one works. To read
    images that live elsewhere, point the images root at them. URIs (``gs://``...) have no
    symlinks and are compared after normalising ``..``.
    """
    images_root = images_root or "."
    absolute = is_uri(file_name) or os.path.isabs(file_name)
    if absolute and allow_absolute_paths:
        return file_name
    path = join_path(images_root, file_name)
    if not _within(path, images_root):
        root = _resolved(images_root)
        if absolute:
            raise RecordError(IMAGE_OUTSIDE_ROOT, (
                f"{file_name}: an absolute path outside the images root {root}; set "
                "data.allow_absolute_paths=true to read absolute paths as given"))
        raise RecordError(IMAGE_OUTSIDE_ROOT, (
            f"{file_name}: resolves to {_resolved(path)}, outside the images root {root}"))
    return path


def _resolved(path: str) -> str:
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.realpath(path)


def _within(path: str, root: str) -> bool:
    if is_uri(path) != is_uri(root):
        return False
    path, root = _resolved(path), _resolved(root)
    if is_uri(root):
        (path_scheme, path), (root_scheme, root) = path.split("://", 1), root.split("://", 1)
        if path_scheme != root_scheme:
            return False
        return posixpath.commonpath([root, path]) == root
    return os.path.commonpath([root, path]) == root


# --- one record -> one tf.Example -------------------------------------------------------------


def quarantine_row(record: ImageRecord, error: RecordError) -> Quarantined:
    """The quarantine row of a planned record that ``record_to_example`` refused."""
    return Quarantined.of(record.image["file_name"], record.image["id"],
                          [Problem(error.reason, error.detail)])


def record_to_example(record: ImageRecord, images_root: str, label_map: LabelMap,
                      allow_absolute_paths: bool = False) -> tf.train.Example:
    """Reads one image and builds its tf.Example; raises RecordError if it is unusable.

    Args:
      record: a record ``plan_records`` kept.
      images_root: the folder ``file_name`` is relative to (see ``resolve_image_path``).
      label_map: the dataset's label map.
      allow_absolute_paths: read absolute ``file_name`` entries as given.

    Returns:
      The record's tf.Example, boxes in ``data.boxes.YXYX``.
    """
    img = record.image
    path = resolve_image_path(img["file_name"], images_root, allow_absolute_paths)
    encoded = _read_image(path)
    image_format, pixels = _decode_image(path, encoded)
    height, width = pixels.shape[:2]
    if (height, width) != (img["height"], img["width"]):
        raise RecordError(
            IMAGE_SIZE_MISMATCH,
            f"{path}: image is {width}x{height} but its entry says {img['width']}x{img['height']}",
        )
    coco_boxes = np.asarray([ann["bbox"] for ann in record.annotations], np.float64)
    areas = [float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in record.annotations]
    if not (np.isfinite(coco_boxes).all() and np.isfinite(areas).all()):  # planning's rule
        raise RecordError(ANNOTATION_NONFINITE, f"{path}: a bbox or area is NaN or infinite")
    # Clipped to the image: COCO boxes may overhang by BOX_TOLERANCE_PX.
    normalized = np.clip(boxes.convert(coco_boxes.reshape(-1, 4), boxes.COCO, boxes.YXYX,
                                       height=height, width=width, where=path), 0.0, 1.0)
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
        areas=areas,
        is_crowd=[int(a.get("iscrowd", 0)) for a in record.annotations],
        meta={f: _meta_value(img, f) for f in fs.META_FIELDS},
        stats=image_statistics(pixels),
    )


def examples_of(records: Iterable[ImageRecord], images_root: str, label_map: LabelMap,
                refused: list[RecordError]) -> Iterator[tf.train.Example]:
    """Streams the records' tf.Examples; refused records go to ``refused`` for callers to count."""
    for record in records:
        try:
            yield record_to_example(record, images_root, label_map)
        except RecordError as e:
            refused.append(e)


def _read_image(path: str) -> bytes:
    """The file's bytes; RecordError if it is missing, unreadable or empty.

    Other filesystem errors (a network filesystem's outage) propagate: they say nothing
    about the record, and Beam retries the work.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            encoded = f.read()
    except tf.errors.NotFoundError as e:
        raise RecordError(IMAGE_FILE_MISSING, f"{path}: file not found") from e
    except (tf.errors.PermissionDeniedError, tf.errors.FailedPreconditionError) as e:
        raise RecordError(IMAGE_FILE_UNREADABLE, f"{path}: cannot be read ({e.message})") from e
    if not encoded:
        raise RecordError(IMAGE_UNDECODABLE, f"{path}: file is empty (0 bytes)")
    return encoded


def _decode_image(path: str, encoded: bytes) -> tuple[str, np.ndarray]:
    """(format, RGB pixels) of a JPEG or PNG; RecordError for anything else."""
    try:
        with Image.open(io.BytesIO(encoded)) as pil:
            image_format = _IMAGE_FORMATS.get(pil.format or "")
            if image_format is None:
                raise RecordError(IMAGE_FORMAT_UNSUPPORTED,
                                  f"{path}: format {pil.format} is not JPEG/PNG")
            return image_format, np.asarray(pil.convert("RGB"))
    except RecordError:
        raise
    except UnidentifiedImageError as e:  # its message holds a memory address: not kept
        raise RecordError(IMAGE_UNDECODABLE,
                          f"{path}: cannot decode image (no image format recognised)") from e
    # PIL's errors for truncated, corrupt or absurdly large files.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RecordError(IMAGE_UNDECODABLE, f"{path}: cannot decode image ({e})") from e


def missing_images_hint(missing_files: Sequence[str], listed_images: int,
                        images_root: str) -> str | None:
    """A sentence for when most listed image files are missing: the root is probably wrong."""
    if not listed_images or len(missing_files) <= MISSING_IMAGES_HINT_FRACTION * listed_images:
        return None
    example = min(missing_files)
    return (
        f"{len(missing_files)} of {listed_images} listed image files were not found under the "
        f"images root {images_root} (e.g. {example!r} was looked for at "
        f"{join_path(images_root, example)}); the images root is probably wrong: set "
        "data.images_root (sightline run --images DIR) to the folder the 'file_name' entries "
        "are relative to"
    )


def _meta_value(img: dict[str, Any], field: str) -> str:
    """A metadata field from the image entry, or its ``attributes`` dict, or "unknown"."""
    value = img.get(field, (img.get("attributes") or {}).get(field))
    return fs.META_UNKNOWN if value is None else str(value)
