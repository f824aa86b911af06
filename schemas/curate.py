"""The curated TFDV schema: drafting it from data, and reading the label space from it.

The pipeline imports a reviewed schema file (``schemas/schema.pbtxt``) rather than
inferring one per run, so a silent change in the data (a new class, a new camera, boxes
outside the image) is an anomaly instead of a new normal. ``draft_schema`` applies the
feature spec's knowledge to TFDV's inference; a person reviews the diff before commit.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from data import coco
from data import feature_spec as fs
from schemas import DEFAULT_SCHEMA_PATH

TRAINING, SERVING = "TRAINING", "SERVING"

_OBJECT_KEYS = (fs.BBOX_XMIN, fs.BBOX_YMIN, fs.BBOX_XMAX, fs.BBOX_YMAX, fs.CLASS_LABEL,
                fs.CLASS_TEXT, fs.AREA, fs.IS_CROWD)
_UNIQUE_PER_IMAGE = (fs.IMAGE_ENCODED, fs.IMAGE_SOURCE_ID, fs.IMAGE_SHA256, fs.IMAGE_FILENAME)
_UNIT_INTERVAL = (fs.BBOX_XMIN, fs.BBOX_YMIN, fs.BBOX_XMAX, fs.BBOX_YMAX,
                  fs.STATS_BRIGHTNESS, fs.STATS_CONTRAST)
# NaN passes every min/max check: these must be finite (ingestion quarantines such boxes;
# this catches any that reach the statistics another way).
_FINITE = (*_UNIT_INTERVAL, fs.AREA)


def draft_schema(
    stats: statistics_pb2.DatasetFeatureStatisticsList, class_names: Sequence[str]
) -> schema_pb2.Schema:
    """TFDV's inferred schema, tightened with what the feature spec knows."""
    schema = tfdv.infer_schema(stats, infer_feature_shape=False)
    features = {f.name: f for f in schema.feature}
    for key in _OBJECT_KEYS:  # an image may hold no objects: no per-image count rule
        features[key].ClearField("value_count")
    for key in _UNIQUE_PER_IMAGE:  # ids and bytes: a vocabulary of them is meaningless
        features[key].ClearField("domain_info")
    for key in _UNIT_INTERVAL:
        features[key].float_domain.min = 0.0
        features[key].float_domain.max = 1.0
    for key in _FINITE:
        features[key].float_domain.disallow_nan = True
        features[key].float_domain.disallow_inf = True
    label = features[fs.CLASS_LABEL]
    label.int_domain.min, label.int_domain.max = 1, len(class_names)
    label.int_domain.is_categorical = True
    _set_string_domain(schema, features[fs.CLASS_TEXT], "class_names", class_names)
    _set_string_domain(schema, features[fs.IMAGE_FORMAT], "image_formats", ("jpeg", "png"))
    # Labels are absent at serving time: the same schema validates serving requests.
    schema.default_environment.extend([TRAINING, SERVING])
    for key in _OBJECT_KEYS:
        features[key].not_in_environment.append(SERVING)
    return add_drift_comparators(schema)


# Span-over-span drift comparators (TFDV ``drift_comparator``): L∞ on categorical features,
# Jensen–Shannon divergence on numeric ones. Thresholds: measured on the generator's
# scenarios (README, "Data validation and drift"); same-distribution spans stay below them.
CATEGORICAL_DRIFT = {fs.meta_key("camera"): 0.15, fs.meta_key("lighting"): 0.15,
                     fs.CLASS_LABEL: 0.15}
NUMERIC_DRIFT = {fs.STATS_BRIGHTNESS: 0.1, fs.STATS_CONTRAST: 0.1, fs.AREA: 0.1,
                 fs.STATS_NUM_OBJECTS: 0.1}


def add_drift_comparators(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """Sets the curated drift comparators on ``schema`` (in place; returned for chaining)."""
    features = {f.name: f for f in schema.feature}
    for key, threshold in CATEGORICAL_DRIFT.items():
        features[key].drift_comparator.infinity_norm.threshold = threshold
    for key, threshold in NUMERIC_DRIFT.items():
        features[key].drift_comparator.jensen_shannon_divergence.threshold = threshold
    return schema


def _set_string_domain(
    schema: schema_pb2.Schema, feature: schema_pb2.Feature, name: str, values: Sequence[str]
) -> None:
    """Replaces a feature's domain with a named, ordered global string domain."""
    kept = [d for d in schema.string_domain if d.name not in (feature.domain, name)]
    del schema.string_domain[:]
    schema.string_domain.extend(kept)
    schema.string_domain.add(name=name, value=list(values))
    feature.ClearField("string_domain")
    feature.domain = name


def class_names(schema_path: str = DEFAULT_SCHEMA_PATH) -> list[str]:
    """Class names in label order (label i+1 is names[i]): the schema is the label space."""
    return class_names_of(tfdv.load_schema_text(schema_path), schema_path)


def class_names_of(schema: schema_pb2.Schema, schema_path: str = "the schema") -> list[str]:
    """``class_names`` of a loaded schema."""
    domain_name = next(f.domain for f in schema.feature if f.name == fs.CLASS_TEXT)
    names = next((list(d.value) for d in schema.string_domain if d.name == domain_name), None)
    if not names:
        raise ValueError(
            f"{schema_path}: feature {fs.CLASS_TEXT!r} needs a named string domain listing the "
            "class names in label order (`sightline schema infer` writes one)"
        )
    return names


def statistics_of_dataset(
    annotations_path: str, schema: schema_pb2.Schema | None = None,
    examples_dir: str | None = None, images_root: str | None = None,
) -> tuple[statistics_pb2.DatasetFeatureStatisticsList, int]:
    """TFDV statistics of a COCO dataset's tf.Examples, and how many records were quarantined.

    With ``schema``, categorical ints (the class label) get value counts, as in the
    pipeline's StatisticsGen. With ``examples_dir``, the tf.Examples are kept there as an
    ExampleGen-style split (gzipped TFRecords). ``images_root`` is the folder image
    ``file_name`` entries are relative to (default: the annotations file's folder).
    """
    dataset = coco.load_annotations(annotations_path)
    label_map = coco.label_map_of(dataset, annotations_path)
    records, quarantined = coco.plan_records(dataset, label_map)
    image_dir = images_root or os.path.dirname(annotations_path)
    refused: list[coco.RecordError] = []
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = examples_dir or tmp
        os.makedirs(out_dir, exist_ok=True)
        tfrecord = os.path.join(out_dir, "examples.tfrecord.gz")
        with tf.io.TFRecordWriter(tfrecord, options="GZIP") as writer:
            for example in coco.examples_of(records, image_dir, label_map, refused):
                writer.write(example.SerializeToString())
        options = tfdv.StatsOptions(schema=schema) if schema is not None else tfdv.StatsOptions()
        # Beam infers gzip from the ".gz" suffix.
        stats = tfdv.generate_statistics_from_tfrecord(tfrecord, stats_options=options)
    return stats, len(quarantined) + len(refused)


def draft_from_dataset(
    annotations_path: str, images_root: str | None = None
) -> tuple[schema_pb2.Schema, int]:
    """A draft schema for a COCO dataset, and how many of its records were quarantined."""
    dataset = coco.load_annotations(annotations_path)
    names = coco.label_map_of(dataset, annotations_path).names
    stats, quarantined = statistics_of_dataset(annotations_path, images_root=images_root)
    return draft_schema(stats, names), quarantined
