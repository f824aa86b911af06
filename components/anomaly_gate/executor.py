"""Executor of AnomalyGate: read each gated split's anomalies and fail with all of them.

It fails by returning an ExecutorOutput with a non-zero code rather than raising: TFX
then stores the message on the failed execution in ML Metadata (an exception raised in
process would fail the run but leave MLMD without the reason).
"""

from __future__ import annotations

import os
from typing import Any

from tensorflow_data_validation.utils import anomalies_util
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.proto.orchestration import execution_result_pb2
from tfx.types import artifact_utils

ANOMALIES_KEY = "anomalies"
SPLITS_KEY = "splits"
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
        if not found:
            return None
        return execution_result_pb2.ExecutorOutput(
            execution_result=execution_result_pb2.ExecutionResult(
                code=FAILED_PRECONDITION, result_message=_message(found)
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
