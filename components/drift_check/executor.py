"""Executor of DriftCheck: TFDV comparators + PSI, per-class box sizes, duplicates, tiny boxes."""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow_data_validation as tfdv
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components.drift_check import annotations, drift
from schemas.curate import class_names_of

STATISTICS_KEY = "statistics"
BASELINE_STATISTICS_KEY = "baseline_statistics"
EXAMPLES_KEY = "examples"
BASELINE_EXAMPLES_KEY = "baseline_examples"
SCHEMA_KEY = "schema"
DRIFT_KEY = "drift"
SPLIT_KEY = "split"
PSI_THRESHOLD_KEY = "psi_threshold"
BOX_FIT_TOLERANCE_KEY = "box_fit_tolerance"
DUPLICATE_IOU_KEY = "duplicate_iou"
MIN_BOX_PIXELS_KEY = "min_box_pixels"
DRIFT_FILE = "drift.json"
# Custom properties of the DataDrift artifact (queryable in MLMD).
DRIFT_DETECTED = "drift_detected"
DRIFTED_FEATURES = "drifted_features"
CHANGED_FIT_CLASSES = "changed_fit_classes"
BASELINE_URI = "baseline_statistics_uri"


def _statistics(artifact: types.Artifact, split: str):
    uri = artifact_utils.get_split_uri([artifact], split)
    return tfdv.load_stats_binary(os.path.join(uri, "FeatureStats.pb"))


def span_of(artifact: types.Artifact) -> int:
    """An artifact's span: ExampleGen's driver records it as a custom property, which the
    ``span`` attribute (the type's property, 0 when unset) does not read."""
    if artifact.has_custom_property("span"):
        return artifact.get_int_custom_property("span")
    return artifact.span


def _optional(input_dict: dict[str, list[types.Artifact]], key: str) -> types.Artifact | None:
    artifacts = input_dict.get(key) or []
    return artifacts[0] if artifacts else None


def check(
    input_dict: dict[str, list[types.Artifact]], exec_properties: dict[str, Any]
) -> dict[str, Any]:
    """The findings as a JSON-able dict (what drift.json holds)."""
    split = exec_properties[SPLIT_KEY]
    schema = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(
        artifact_utils.get_single_uri(input_dict[SCHEMA_KEY])))
    names = class_names_of(schema)
    examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
    images = list(annotations.read_split(artifact_utils.get_split_uri([examples], split)))
    current_boxes = annotations.class_box_stats(images, names)
    report: dict[str, Any] = {
        "split": split,
        "baseline": None,
        "features": [],
        "drifted_features": [],
        "class_boxes": current_boxes,
        "box_fit_changes": {},
        **annotations.quality_findings(images, exec_properties[DUPLICATE_IOU_KEY],
                                       exec_properties[MIN_BOX_PIXELS_KEY]),
    }
    baseline_stats = _optional(input_dict, BASELINE_STATISTICS_KEY)
    if baseline_stats is None:
        return report
    statistics = artifact_utils.get_single_instance(input_dict[STATISTICS_KEY])
    baseline_examples = _optional(input_dict, BASELINE_EXAMPLES_KEY)
    baseline_images = list(annotations.read_split(
        artifact_utils.get_split_uri([baseline_examples], split))) if baseline_examples else []
    features = drift.compare(
        _statistics(statistics, split), _statistics(baseline_stats, split), schema,
        exec_properties[PSI_THRESHOLD_KEY], annotations.feature_values(images),
        annotations.feature_values(baseline_images) if baseline_images else {})
    # StatisticsGen's artifacts carry span 0; the span is the baseline examples' own.
    span = span_of(baseline_examples if baseline_examples is not None else baseline_stats)
    report["baseline"] = {"statistics_uri": baseline_stats.uri, "span": span}
    report["features"] = [f.to_dict() for f in features]
    report["drifted_features"] = [f.feature for f in features if f.drifted]
    if baseline_images:
        before = annotations.class_box_stats(baseline_images, names)
        changes = annotations.box_fit_changes(
            current_boxes, before, exec_properties[BOX_FIT_TOLERANCE_KEY])
        report["box_fit_changes"] = {
            name: {"fit_ratio": ratio, "example_ids": [
                image.source_id for image in images
                if names.index(name) + 1 in image.labels][:annotations.MAX_IDS]}
            for name, ratio in changes.items()
        }
    return report


class Executor(base_executor.BaseExecutor):
    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        report = check(input_dict, exec_properties)
        output = artifact_utils.get_single_instance(output_dict[DRIFT_KEY])
        with open(os.path.join(output.uri, DRIFT_FILE), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        detected = bool(report["drifted_features"] or report["box_fit_changes"])
        output.set_int_custom_property(DRIFT_DETECTED, int(detected))
        output.set_string_custom_property(DRIFTED_FEATURES,
                                          json.dumps(report["drifted_features"]))
        output.set_string_custom_property(CHANGED_FIT_CLASSES,
                                          json.dumps(sorted(report["box_fit_changes"])))
        if report["baseline"]:
            output.set_string_custom_property(BASELINE_URI, report["baseline"]["statistics_uri"])
        for feature in report["features"]:
            for name, value in feature["measurements"].items():
                output.set_float_custom_property(f"{name}:{feature['feature']}", value)
        for kind in ("duplicate_boxes", "tiny_boxes"):
            output.set_int_custom_property(kind, report[kind]["count"])
