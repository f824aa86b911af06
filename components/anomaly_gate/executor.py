"""Executor of AnomalyGate: fail, naming every problem, when the data is not fit to train on:
too few examples or too many quarantined, schema anomalies, or (if asked) drift.

It fails by returning an ExecutorOutput with a non-zero code rather than raising: TFX
then stores the message on the failed execution in ML Metadata (an exception raised in
process would fail the run but leave MLMD without the reason).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tensorflow_data_validation.utils import anomalies_util
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.proto.orchestration import execution_result_pb2
from tfx.types import artifact_utils

from components import release
from components.coco_example_gen import executor as coco_executor
from components.drift_check import executor as drift_executor

ANOMALIES_KEY = "anomalies"
EXAMPLES_KEY = "examples"
SPLITS_KEY = "splits"
DRIFT_KEY = "drift"
ON_DRIFT_KEY = "on_drift"
MIN_EXAMPLES_KEY = "min_examples_per_split"
MAX_QUARANTINED_KEY = "max_quarantined_fraction"
TOP_REASONS = 3
DRIFT_ACTIONS = ("fail", "warn")
_ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes per split

# google.rpc.Code FAILED_PRECONDITION: the data, not the system, is at fault.
FAILED_PRECONDITION = 9


class Executor(base_executor.BaseExecutor):
    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> execution_result_pb2.ExecutorOutput | None:
        splits = exec_properties[SPLITS_KEY].split(",")
        anomalies = artifact_utils.get_single_instance(input_dict[ANOMALIES_KEY])
        found = {split: describe_anomalies(split_anomalies(anomalies, split)) for split in splits}
        found = {split: lines for split, lines in found.items() if lines}
        messages = [_message(found) if found else ""]
        examples = (input_dict.get(EXAMPLES_KEY) or [None])[0]
        if examples is not None:
            messages.insert(0, describe_data_volume(
                examples, splits, exec_properties.get(MIN_EXAMPLES_KEY, 1),
                exec_properties.get(MAX_QUARANTINED_KEY, 1.0)))
        drift = (input_dict.get(DRIFT_KEY) or [None])[0]
        if drift is not None and exec_properties.get(ON_DRIFT_KEY, "fail") == "fail":
            messages.append(describe_drift(drift))
        message = "\n".join(m for m in messages if m)
        if not message:
            return None
        return execution_result_pb2.ExecutorOutput(
            execution_result=execution_result_pb2.ExecutionResult(
                code=FAILED_PRECONDITION, result_message=message
            )
        )


def describe_data_volume(examples: types.Artifact, splits: list[str], min_examples: int,
                         max_quarantined_fraction: float) -> str:
    """Why the ingested data is too little to train on ("" if it is enough).

    A systematic ingestion error (a wrong images root, a broken export) shows up as most
    records quarantined or a split left empty; the message names the quarantine report,
    its top reasons and CocoExampleGen's hint, so the fix is one read away.
    """
    counts = {split: info["num_examples"] or 0
              for split, info in release.dataset_record(examples.mlmd_artifact).items()}
    lines = [f"  split {split!r} has {counts.get(split, 0)} examples; at least {min_examples} "
             "are needed (data.min_examples_per_split)"
             for split in splits if counts.get(split, 0) < min_examples]
    quarantined = examples.get_int_custom_property(coco_executor.QUARANTINED_IMAGES_PROPERTY)
    listed = examples.get_int_custom_property(coco_executor.LISTED_IMAGES_PROPERTY)
    if listed and quarantined / listed > max_quarantined_fraction:
        lines.append(f"  {quarantined} of {listed} listed images ({quarantined / listed:.0%}) "
                     f"were quarantined; at most {max_quarantined_fraction:.0%} may be "
                     "(data.max_quarantined_fraction)")
    if not lines:
        return ""
    reasons = json.loads(examples.get_string_custom_property(
        coco_executor.QUARANTINE_REASONS_PROPERTY) or "{}")
    top = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:TOP_REASONS]
    hint = examples.get_string_custom_property(coco_executor.INGESTION_HINT_PROPERTY)
    report = os.path.join(examples.uri, coco_executor.QUARANTINE_FILE)
    return "\n".join([
        "Too little usable data to train on:", *lines,
        "Top quarantine reasons: " + (", ".join(f"{r} ({n})" for r, n in top) or "none")
        + f"; every record and its reason: {report}",
        *([hint] if hint else []),
    ])


def split_anomalies(anomalies: types.Artifact, split: str):
    """The tensorflow_metadata Anomalies proto ExampleValidator wrote for one split."""
    split_uri = artifact_utils.get_split_uri([anomalies], split)
    return anomalies_util.load_anomalies_binary(os.path.join(split_uri, _ANOMALIES_FILE))


def describe_anomalies(anomalies) -> list[str]:
    """One line per anomalous feature (and the dataset), e.g. 'meta/camera: Unexpected ...'."""
    lines = [
        f"{feature}: {info.short_description} ({info.description})"
        for feature, info in sorted(anomalies.anomaly_info.items())
    ]
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        lines.append(f"<dataset>: {info.short_description} ({info.description})")
    return lines


def describe_drift(drift: types.Artifact) -> str:
    """What drifted, with the measured distances and thresholds ("" if nothing did)."""
    with open(os.path.join(drift.uri, drift_executor.DRIFT_FILE)) as f:
        report = json.load(f)
    lines = [
        f"  {feature['feature']}: " + ", ".join(
            f"{name} {feature['measurements'][name]:.3f} > {feature['thresholds'][name]}"
            for name in feature["drifted"])
        for feature in report["features"] if feature["drifted"]
    ]
    lines += [
        f"  boxes of class {name!r}: median fit (object area / box area) x{change['fit_ratio']} "
        f"versus the baseline, {'looser' if change['fit_ratio'] < 1 else 'tighter'} labels "
        f"(e.g. {', '.join(change['example_ids'][:5])})"
        for name, change in sorted(report["box_fit_changes"].items())
    ]
    if not lines:
        return ""
    span = report["baseline"]["span"]
    return (
        f"The data drifted from the previous data (span {span}, split {report['split']}):\n"
        + "\n".join(lines) + "\n"
        "If the change is real and intended, rerun with --set drift.on_drift=warn to train on it; "
        "thresholds live in the schema's drift_comparator fields and the run config.\n"
    )


def _message(found: dict[str, list[str]]) -> str:
    details = "\n".join(
        f"  [{split}] {line}" for split, lines in found.items() for line in lines
    )
    return (
        "Data anomalies stop this run before training:\n"
        f"{details}\n"
        "Fix or quarantine the offending data, or, if the change is intended, update the "
        "curated schema (`sightline schema infer` drafts one from the data for review)."
    )
