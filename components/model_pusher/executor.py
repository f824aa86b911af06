"""ModelPusher executor: push a blessed model with ``assets.extra/release.json`` inside.

TFX's Pusher names versions by the Unix second and, when that directory already exists,
skips the copy yet records the push: two pushes in one second would share a version. This
executor keeps TFX's blessing check and MLMD record, and pushes through
``components.versions`` instead: a unique, increasing version, staged and renamed into
place (``saved_model.pb`` copied last within the stage, as TFX does).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components import release, versions
from components.coco_eval import results as eval_results
from data import boxes

EVALUATION_KEY = "evaluation"
EXAMPLES_KEY = "examples"
RELEASE_FILE = "release.json"
ASSETS_EXTRA = "assets.extra"  # TF Serving's place for files beside the graph
SAVED_MODEL_FILE = "saved_model.pb"  # a server loads a version once this file is there
THRESHOLDS_PROPERTY = "score_thresholds"  # on the PushedModel artifact, as JSON


def release_metadata(
    evaluation_uri: str, examples: types.Artifact, model_uri: str
) -> dict[str, Any]:
    """What serving needs beside the graph, from the evaluation and the Examples artifact."""
    overall = eval_results.load_metrics(evaluation_uri)[eval_results.CANDIDATE].get(
        eval_results.OVERALL, {})
    return {
        "score_thresholds": release.score_thresholds(overall),
        "box_format": boxes.YXYX,  # of detection_boxes: normalized ymin, xmin, ymax, xmax
        "metrics": release.headline(overall),
        "dataset": release.dataset_record(examples.mlmd_artifact),
        "model_uri": model_uri,
        "evaluation_uri": evaluation_uri,
        release.CODE_VERSION_PROPERTY: release.code_version(),
    }


def write_model_version(model_path: str, release_record: dict[str, Any], target: str) -> None:
    """Copies the model into ``target`` with the release file, ``saved_model.pb`` last."""
    io_utils.copy_dir(model_path, target, deny_regex_patterns=[SAVED_MODEL_FILE])
    fileio.makedirs(os.path.join(target, ASSETS_EXTRA))
    with fileio.open(os.path.join(target, ASSETS_EXTRA, RELEASE_FILE), "w") as f:
        f.write(json.dumps(release_record, indent=2, sort_keys=True))
    io_utils.copy_file(os.path.join(model_path, SAVED_MODEL_FILE),
                       os.path.join(target, SAVED_MODEL_FILE))


class Executor(pusher_executor.Executor):
    """TFX's Pusher executor with unique versions, staged pushes and the release file."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        pushed = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(pushed)
            return
        model_path = self.GetModelPath(input_dict)
        evaluation = artifact_utils.get_single_instance(input_dict[EVALUATION_KEY])
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        release_record = release_metadata(evaluation.uri, examples, model_path)

        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise ValueError("ModelPusher pushes to a filesystem destination only, got "
                             f"{destination.WhichOneof('destination')!r}")
        version, serving_path = versions.push_version(
            destination.filesystem.base_directory,
            lambda staging, _: write_model_version(model_path, release_record, staging))

        io_utils.copy_dir(model_path, pushed.uri)  # archived with the artifact, as TFX does
        self._MarkPushed(pushed, pushed_destination=serving_path, pushed_version=version)
        pushed.set_string_custom_property(
            THRESHOLDS_PROPERTY, json.dumps(release_record["score_thresholds"]))
        pushed.set_string_custom_property(
            release.CODE_VERSION_PROPERTY, release_record[release.CODE_VERSION_PROPERTY])
