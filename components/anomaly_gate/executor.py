"""Executor of AnomalyGate: read each gated split's anomalies and fail with all of them.

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

from components.drift_check import executor as drift_executor

ANOMALIES_KEY = "anomalies"
SPLITS_KEY = "splits"
DRIFT_KEY = "drift"
ON_DRIFT_KEY = "on_drift"
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
        anomalies = artifact_utils.get_single_instance(input_dict[ANOMALIES_KEY])
        found = {
            split: describe_anomalies(split_anomalies(anomalies, split))
            for split in exec_properties[SPLITS_KEY].split(",")
        }
        found = {split: lines for split, lines in found.items() if lines}
        message = _message(found) if found else ""
        drift = (input_dict.get(DRIFT_KEY) or [None])[0]
        if drift is not None and exec_properties.get(ON_DRIFT_KEY, "fail") == "fail":
            message = "\n".join(m for m in (message, describe_drift(drift)) if m)
        if not message:
            return None
        return execution_result_pb2.ExecutorOutput(
            execution_result=execution_result_pb2.ExecutionResult(
                code=FAILED_PRECONDITION, result_message=message
            )
        )


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
        f"The data drifted from the previous run's (span {span}, split {report['split']}):\n"
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
