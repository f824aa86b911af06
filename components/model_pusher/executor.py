"""ModelPusher executor: stage the model with ``assets.extra/release.json``, then push it."""

from __future__ import annotations

import json
import os
from typing import Any

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components.coco_eval import metric as coco_metric
from components.coco_eval import results as eval_results
from components.coco_example_gen import executor as coco_executor

EVALUATION_KEY = "evaluation"
EXAMPLES_KEY = "examples"
RELEASE_FILE = "release.json"
ASSETS_EXTRA = "assets.extra"  # TF Serving's place for files beside the graph
THRESHOLDS_PROPERTY = "score_thresholds"  # on the PushedModel artifact, as JSON
_HEADLINE = ("mAP", "mAP50", "mAP75", "AR100", coco_metric.DECE, coco_metric.NUM_IMAGES)


def release_metadata(
    evaluation_uri: str, examples: types.Artifact, model_uri: str
) -> dict[str, Any]:
    """What serving needs beside the graph, from the evaluation and the Examples artifact."""
    overall = eval_results.load_metrics(evaluation_uri)[eval_results.CANDIDATE].get(
        eval_results.OVERALL, {})
    prefix = coco_metric.THRESHOLD_PREFIX
    return {
        # Keep a class's detections scoring at least this (max F1 on the eval split); a
        # class without eval objects has no entry: apply no class-specific threshold.
        "score_thresholds": {k.removeprefix(prefix): v for k, v in sorted(overall.items())
                             if k.startswith(prefix)},
        "metrics": {k: overall[k] for k in _HEADLINE if k in overall},
        "dataset": dataset_record(examples),
        "model_uri": model_uri,
        "evaluation_uri": evaluation_uri,
    }


def dataset_record(examples: types.Artifact) -> dict[str, dict[str, Any]]:
    """{split: {num_examples, content_hash}} as CocoExampleGen recorded them in MLMD."""
    return {
        split: {
            "num_examples": examples.get_int_custom_property(
                coco_executor.NUM_EXAMPLES_PROPERTY.format(split=split)),
            "content_hash": examples.get_string_custom_property(
                coco_executor.CONTENT_HASH_PROPERTY.format(split=split)),
        }
        for split in artifact_utils.decode_split_names(examples.split_names)
    }


class Executor(pusher_executor.Executor):
    """TFX's Pusher executor, pushing a staged copy that includes the release file."""

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        self._release: dict[str, Any] = {}
        super().Do(input_dict, output_dict, exec_properties)
        if self._release:
            pushed = artifact_utils.get_single_instance(output_dict["pushed_model"])
            pushed.set_string_custom_property(
                THRESHOLDS_PROPERTY, json.dumps(self._release["score_thresholds"]))

    def GetModelPath(self, input_dict: dict[str, list[types.Artifact]]) -> str:
        """The model to push: a copy of the trained one with ``assets.extra/release.json``."""
        model_path = super().GetModelPath(input_dict)
        evaluation = artifact_utils.get_single_instance(input_dict[EVALUATION_KEY])
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        self._release = release_metadata(evaluation.uri, examples, model_path)
        staged = os.path.join(self._get_tmp_dir(), "model")
        io_utils.copy_dir(model_path, staged)
        fileio.makedirs(os.path.join(staged, ASSETS_EXTRA))
        with fileio.open(os.path.join(staged, ASSETS_EXTRA, RELEASE_FILE), "w") as f:
            f.write(json.dumps(self._release, indent=2, sort_keys=True))
        return staged
