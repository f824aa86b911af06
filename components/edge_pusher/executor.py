"""EdgePusher executor: choose the variant, write the bundle, record why.

Variants are tried smallest first (QAT int8, PTQ int8, float16, float32); the first whose
mAP is within ``tolerance`` of the float SavedModel's on the same eval split ships. A
bundle gets a unique, increasing version and is staged and renamed into place
(``components.versions``), so an edge sync never sees half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components import release, versions
from components.coco_eval import results
from components.edge_optimizer import executor as edge_executor
from data import boxes
from serving.tflite_runner import TFLiteDetector
from trainer.tflite import FLOAT32, FP16, PTQ_INT8, QAT_INT8

BLESSING_KEY = "model_blessing"
EXAMPLES_KEY = "examples"
BUNDLE_KEY = "edge_bundle"
BASE_DIRECTORY_KEY = "base_directory"
TOLERANCE_KEY = "map_tolerance"
PREFERENCE = (QAT_INT8, PTQ_INT8, FP16, FLOAT32)  # smallest and fastest first
LABELS_FILE = "labels.txt"
THRESHOLDS_FILE = "thresholds.json"
INPUT_SPEC_FILE = "input_spec.json"
METADATA_FILE = "metadata.json"
# detection_boxes' order, stated in input_spec.json (normalized ymin, xmin, ymax, xmax).
BOX_FORMAT = boxes.YXYX
# How an image becomes the model input; ``serving.edge_preprocess`` implements it.
NORMALIZATION = {
    "color": "RGB",
    "layout": "NHWC",
    "resize": "stretch to the input side (no letterbox), bilinear with antialiasing "
              "(TensorFlow's tf.image.resize(antialias=True))",
    "scale": "pixel / 255, float32 in [0, 1]; uint8 inputs then take "
             "round(x / scale) + zero_point",
}


def choose_variant(evaluation: dict[str, Any], tolerance: float
                   ) -> tuple[str | None, list[str]]:
    """The first variant in ``PREFERENCE`` within ``tolerance`` mAP of the float model.

    Returns:
      (variant or None if none passes, one line per variant tried saying why or why not)
    """
    overall = {name: scores[results.OVERALL]
               for name, scores in evaluation["metrics"].items()}
    reference = overall[edge_executor.SAVED_MODEL]["mAP"]
    reasons = []
    for variant in PREFERENCE:
        value = overall[variant]["mAP"]
        change = value - reference
        verdict = "passes" if change >= -tolerance else "fails"
        reasons.append(f"{variant}: mAP {value:.4f} vs the float model's {reference:.4f} "
                       f"({100 * change:+.2f} points; tolerance -{100 * tolerance:.2f}): "
                       f"{verdict}")
        if change >= -tolerance:
            return variant, reasons
    return None, reasons


def bundle_metadata(variant: str, evaluation: dict[str, Any], examples: types.Artifact,
                    tflite: types.Artifact, reasons: list[str], version: str
                    ) -> dict[str, Any]:
    """metadata.json: what shipped, why, how it scored, and what data it came from."""
    metrics = evaluation["metrics"]
    float_model = metrics[edge_executor.SAVED_MODEL][results.OVERALL]
    return {
        "version": version,
        "variant": variant,
        "selection": reasons,
        "size_bytes": evaluation["sizes"][variant],
        "metrics": release.headline(metrics[variant][results.OVERALL]),
        "float_model_metrics": release.headline(float_model),
        "slices_mAP": {name: values["mAP"] for name, values in metrics[variant].items()},
        "dataset": release.dataset_record(examples.mlmd_artifact),
        "model_uri": evaluation["model_uri"],
        "tflite_uri": tflite.uri,
    }


def write_bundle(directory: str, tflite_path: str, class_names: list[str],
                 thresholds: dict[str, float], metadata: dict[str, Any]) -> None:
    """Writes the bundle's files into ``directory`` (which must not exist yet)."""
    runner = TFLiteDetector(tflite_path)
    os.makedirs(directory)
    shutil.copyfile(tflite_path, os.path.join(directory, edge_executor.TFLITE_FILE))
    files = {
        LABELS_FILE: "".join(f"{name}\n" for name in class_names),
        THRESHOLDS_FILE: json.dumps(thresholds, indent=2, sort_keys=True),
        INPUT_SPEC_FILE: json.dumps({**runner.input_spec(), "normalization": NORMALIZATION,
                                     "outputs": runner.output_types(),
                                     "box_format": BOX_FORMAT}, indent=2),
        METADATA_FILE: json.dumps(metadata, indent=2, sort_keys=True),
    }
    for name, content in files.items():
        with open(os.path.join(directory, name), "w") as f:
            f.write(content)


class Executor(base_executor.BaseExecutor):
    """Pushes the chosen variant of a blessed model as a versioned edge bundle."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        bundle = artifact_utils.get_single_instance(output_dict[BUNDLE_KEY])
        blessing = artifact_utils.get_single_instance(input_dict[BLESSING_KEY])
        if not blessing.get_int_custom_property("blessed"):
            self._record(bundle, None, "the float model was not blessed by the Evaluator")
            return
        evaluation_artifact = artifact_utils.get_single_instance(
            input_dict[edge_executor.EVALUATION_KEY])
        with fileio.open(os.path.join(evaluation_artifact.uri,
                                      edge_executor.EVALUATION_FILE)) as f:
            evaluation = json.load(f)
        variant, reasons = choose_variant(evaluation, exec_properties[TOLERANCE_KEY])
        for line in reasons:
            logging.info("EdgePusher: %s", line)
        if variant is None:
            self._record(bundle, None, "no variant is within the mAP tolerance: "
                         + "; ".join(reasons))
            return

        tflite = artifact_utils.get_single_instance(
            input_dict[edge_executor.OUTPUT_KEYS[variant]])
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        thresholds = release.score_thresholds(evaluation["metrics"][variant][results.OVERALL])
        tflite_path = os.path.join(tflite.uri, edge_executor.TFLITE_FILE)

        def write(staging: str, version: str) -> None:
            metadata = bundle_metadata(variant, evaluation, examples, tflite, reasons, version)
            with tempfile.TemporaryDirectory() as local:
                files = os.path.join(local, "bundle")
                write_bundle(files, tflite_path, evaluation["class_names"], thresholds, metadata)
                io_utils.copy_dir(files, staging)

        version, destination = versions.push_version(exec_properties[BASE_DIRECTORY_KEY], write)
        self._record(bundle, variant, "; ".join(reasons), destination, version)

    @staticmethod
    def _record(bundle: types.Artifact, variant: str | None, reason: str,
                destination: str = "", version: str = "") -> None:
        logging.info("EdgePusher: %s", f"pushed {variant} to {destination}" if variant
                     else f"not pushed: {reason}")
        bundle.set_int_custom_property("pushed", int(variant is not None))
        bundle.set_string_custom_property("variant", variant or "")
        bundle.set_string_custom_property("reason", reason)
        bundle.set_string_custom_property("pushed_destination", destination)
        bundle.set_string_custom_property("pushed_version", version)
