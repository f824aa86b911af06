"""The one feature spec: every tf.Example key Sightline reads or writes, and the names of
the detection outputs every exported signature returns.

Keys follow the TF Object Detection API convention so existing TFRecords and tools
interoperate. Code imports these names; the curated schema (``schemas/schema.pbtxt``) is
the one other place that spells them, and ``tests/test_feature_spec.py`` keeps the two in
step. TensorFlow is imported only by the functions that build specs and examples, so the
names are cheap to import (configs, the server).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

# --- image-level keys -------------------------------------------------------------
IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_SOURCE_ID = "image/source_id"
IMAGE_FILENAME = "image/filename"
# Per-image content digest (image bytes + annotations); split hashes are built from it.
IMAGE_SHA256 = "image/key/sha256"

# --- object-level keys (one value per box) -----------------------------------------
# Boxes are normalized to [0, 1] by the image size, in the ODAPI's corner format.
BBOX_XMIN = "image/object/bbox/xmin"
BBOX_YMIN = "image/object/bbox/ymin"
BBOX_XMAX = "image/object/bbox/xmax"
BBOX_YMAX = "image/object/bbox/ymax"
CLASS_LABEL = "image/object/class/label"  # 1-based contiguous class index
CLASS_TEXT = "image/object/class/text"
AREA = "image/object/area"  # pixels of the original image, for COCO size ranges
IS_CROWD = "image/object/is_crowd"

# --- per-image metadata for slicing, taken from COCO image attributes --------------
META_PREFIX = "meta/"
META_FIELDS: tuple[str, ...] = ("camera", "lighting")
META_UNKNOWN = "unknown"

# --- cheap image statistics computed at ingestion, for drift detection -------------
STATS_BRIGHTNESS = "stats/brightness"
STATS_CONTRAST = "stats/contrast"
STATS_NUM_OBJECTS = "stats/num_objects"

# The features' box order, ``data.boxes.YXYX``.
BOX_KEYS: tuple[str, str, str, str] = (BBOX_YMIN, BBOX_XMIN, BBOX_YMAX, BBOX_XMAX)

# --- detection outputs of every exported signature (SavedModel and TFLite) ----------
DETECTION_BOXES = "detection_boxes"  # float32 [B, K, 4], data.boxes.YXYX (the ODAPI's order)
DETECTION_SCORES = "detection_scores"  # float32 [B, K], best first; rows past the count are 0
DETECTION_CLASSES = "detection_classes"  # float32 [B, K], 1-based labels (0 in empty rows)
NUM_DETECTIONS = "num_detections"  # int32 [B]: how many rows are real detections
DETECTION_OUTPUTS = (DETECTION_BOXES, DETECTION_SCORES, DETECTION_CLASSES, NUM_DETECTIONS)


def meta_key(field: str) -> str:
    """The tf.Example key of a metadata field, e.g. ``meta/camera``."""
    return META_PREFIX + field


META_KEYS: tuple[str, ...] = tuple(meta_key(f) for f in META_FIELDS)


def parsing_spec() -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """The tf.io parsing spec for a Sightline tf.Example (training and evaluation)."""
    import tensorflow as tf

    spec: dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature] = {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=""),
        IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        IMAGE_SHA256: tf.io.FixedLenFeature([], tf.string, default_value=""),
        STATS_BRIGHTNESS: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
        STATS_CONTRAST: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
        STATS_NUM_OBJECTS: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    }
    for key in (BBOX_XMIN, BBOX_YMIN, BBOX_XMAX, BBOX_YMAX, AREA):
        spec[key] = tf.io.VarLenFeature(tf.float32)
    for key in (CLASS_LABEL, IS_CROWD):
        spec[key] = tf.io.VarLenFeature(tf.int64)
    spec[CLASS_TEXT] = tf.io.VarLenFeature(tf.string)
    for key in META_KEYS:
        spec[key] = tf.io.FixedLenFeature([], tf.string, default_value=META_UNKNOWN)
    return spec


def serving_spec() -> dict[str, tf.io.FixedLenFeature]:
    """The subset of the spec a model needs at serving time: only the image."""
    import tensorflow as tf

    return {IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values: Sequence[float]) -> tf.train.Feature:
    import tensorflow as tf

    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def build_example(
    *,
    encoded: bytes,
    image_format: str,
    height: int,
    width: int,
    source_id: str,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    texts: Sequence[str],
    areas: Sequence[float] | None = None,
    is_crowd: Sequence[int] | None = None,
    meta: Mapping[str, str] | None = None,
    stats: Mapping[str, float] | None = None,
    filename: str = "",
    sha256: str = "",
) -> tf.train.Example:
    """Builds a tf.Example in the Sightline format.

    Args:
      boxes: per object, ``data.boxes.YXYX`` (normalized ymin, xmin, ymax, xmax).
      labels: 1-based class index per object; ``texts`` the class names.
      areas: object area in original-image pixels (defaults to the box area).
      meta: metadata fields by name (``camera``...); absent fields become "unknown".
      stats: values for ``stats/brightness`` and ``stats/contrast``.

    Returns:
      The tf.Example; ``stats/num_objects`` is derived from ``boxes``.
    """
    import tensorflow as tf

    n = len(boxes)
    if not len(labels) == len(texts) == n:
        raise ValueError(f"{source_id}: {n} boxes but {len(labels)} labels, {len(texts)} texts")
    if areas is None:
        areas = [(b[2] - b[0]) * height * (b[3] - b[1]) * width for b in boxes]
    is_crowd = list(is_crowd) if is_crowd is not None else [0] * n
    meta = meta or {}
    stats = stats or {}
    feature = {
        IMAGE_ENCODED: _bytes([encoded]),
        IMAGE_FORMAT: _bytes([image_format.encode()]),
        IMAGE_HEIGHT: _ints([height]),
        IMAGE_WIDTH: _ints([width]),
        IMAGE_SOURCE_ID: _bytes([source_id.encode()]),
        IMAGE_FILENAME: _bytes([filename.encode()]),
        IMAGE_SHA256: _bytes([sha256.encode()]),
        BBOX_YMIN: _floats([b[0] for b in boxes]),
        BBOX_XMIN: _floats([b[1] for b in boxes]),
        BBOX_YMAX: _floats([b[2] for b in boxes]),
        BBOX_XMAX: _floats([b[3] for b in boxes]),
        CLASS_LABEL: _ints(labels),
        CLASS_TEXT: _bytes([t.encode() for t in texts]),
        AREA: _floats(areas),
        IS_CROWD: _ints(is_crowd),
        STATS_BRIGHTNESS: _floats([stats.get(STATS_BRIGHTNESS, 0.0)]),
        STATS_CONTRAST: _floats([stats.get(STATS_CONTRAST, 0.0)]),
        STATS_NUM_OBJECTS: _ints([n]),
    }
    for field in META_FIELDS:
        feature[meta_key(field)] = _bytes([str(meta.get(field, META_UNKNOWN)).encode()])
    return tf.train.Example(features=tf.train.Features(feature=feature))
