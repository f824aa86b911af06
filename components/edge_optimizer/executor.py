"""EdgeOptimizer executor: fine-tune with QAT, convert the variants, score every one.

Each variant is written to its own ``sightline.TFLiteModel`` artifact (``model.tflite``)
with its size, input spec and headline metrics as custom properties; the float
SavedModel and every variant are scored by ``components.coco_eval.offline`` (the
Evaluator's metric, the same slices) into the ``edge_evaluation`` artifact.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import tf_keras as keras
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components import release
from components.coco_eval import offline, results
from serving.edge_preprocess import preprocess_image
from serving.tflite_runner import TFLiteDetector
from trainer import qat, tflite
from trainer.config import TrainConfig
from trainer.export import load_detector

MODEL_KEY = "model"
EXAMPLES_KEY = "examples"
EVALUATION_KEY = "edge_evaluation"
QAT_EPOCHS_KEY = "qat_epochs"
QAT_LEARNING_RATE_KEY = "qat_learning_rate"
REPRESENTATIVE_KEY = "representative_examples"
SLICE_KEYS_KEY = "slice_keys"
MIN_SLICE_IMAGES_KEY = "min_slice_images"
TFLITE_FILE = "model.tflite"
EVALUATION_FILE = "edge_evaluation.json"
SAVED_MODEL = "saved_model"  # the float SavedModel's entry in edge_evaluation.json
# The variants' output keys, in the order the executor writes them.
OUTPUT_KEYS = {variant: f"{variant}_model" for variant in tflite.VARIANTS}
T = TypeVar("T")


class Stages:
    """Wall seconds per named stage, in order: the component's own profile.

    The executor is the pipeline's slowest step after the Trainer, so it logs where its
    time goes and keeps the figures in ``edge_evaluation.json`` (``seconds``), which is
    what ``benchmarks.edge_bench --profile`` reads.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        """Adds the block's seconds to stage ``name``."""
        started = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0)
                                   + time.perf_counter() - started, 3)

    def timed(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn``, adding each call's seconds to stage ``name``."""
        def call(*args: Any, **kwargs: Any) -> T:
            with self.time(name):
                return fn(*args, **kwargs)
        return call

    def log(self) -> None:
        for name, seconds in self.seconds.items():
            logging.info("EdgeOptimizer stage %s: %.1f s", name, seconds)


def build_variants(detector: keras.Model, config: TrainConfig, train_files: list[str],
                   run_dir: str, qat_epochs: int, qat_learning_rate: float,
                   representative_count: int, stages: Stages | None = None) -> dict[str, bytes]:
    """The trained detector -> {variant: flatbuffer} for every ``tflite.VARIANTS``."""
    stages = stages or Stages()
    args = (config.input_size, config.max_detections)
    variants = {}
    for variant in (tflite.FLOAT32, tflite.FP16):
        with stages.time(f"convert {variant}"):
            variants[variant] = tflite.convert(detector, variant, *args)
    with stages.time("representative images"):
        images = tflite.representative_images(train_files, config.input_size,
                                               representative_count)
    with stages.time(f"convert {tflite.PTQ_INT8}"):
        variants[tflite.PTQ_INT8] = tflite.convert(detector, tflite.PTQ_INT8, *args, images)
    with stages.time("QAT fine-tune"):
        qat_model = qat.fine_tune(detector, config, train_files, images, run_dir, qat_epochs,
                                  qat_learning_rate)
    with stages.time(f"convert {tflite.QAT_INT8}"):
        variants[tflite.QAT_INT8] = tflite.convert(qat_model, tflite.QAT_INT8, *args)
    return {v: variants[v] for v in tflite.VARIANTS}


def evaluate_variants(serving_dir: str, tflite_paths: dict[str, str], eval_files: list[str],
                      class_names: Sequence[str], slice_keys: Sequence[str],
                      min_images: int, stages: Stages | None = None,
                      ) -> dict[str, dict[str, dict[str, Any]]]:
    """{``SAVED_MODEL`` or variant: {slice: metrics}}, all on the same eval examples.

    One pass over the eval split: each batch is parsed once, and its images decoded and
    preprocessed once for all the TFLite variants (the SavedModel decodes in its graph).
    """
    stages = stages or Stages()
    runners = {v: TFLiteDetector(path, num_threads=os.cpu_count() or 1)
               for v, path in tflite_paths.items()}
    input_sizes = {runner.input_size for runner in runners.values()}
    if len(input_sizes) > 1:
        raise ValueError(f"the variants take different input sizes: {input_sizes}")
    with stages.time("score: load SavedModel"):
        detectors = {SAVED_MODEL: stages.timed(f"score: detect {SAVED_MODEL}",
                                               offline.saved_model_detector(serving_dir))}
    with stages.time("score: all models"):
        scores = offline.evaluate_models(
            offline.read_examples(eval_files), class_names, slice_keys, min_images,
            detectors=detectors,
            image_detectors={v: stages.timed(f"score: detect {v}", r.detect_images)
                             for v, r in runners.items()},
            preprocess=stages.timed("score: decode + preprocess", functools.partial(
                preprocess_image, input_size=input_sizes.pop())))
    for name, slices in scores.items():
        logging.info("%s: mAP %.4f on the eval split", name, slices[results.OVERALL]["mAP"])
    return scores


class Executor(base_executor.BaseExecutor):
    """Writes the four TFLite variants and their evaluation next to the float model's."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        serving_dir = path_utils.serving_model_path(model.uri)
        split_files = {split: [os.path.join(artifact_utils.get_split_uri([examples], split), "*")]
                       for split in ("train", "eval")}

        # --- variants: float32, fp16, PTQ int8 from the float model; QAT int8 ----------
        stages = Stages()
        with stages.time("load model"):
            detector, config = load_detector(serving_dir)
        with tempfile.TemporaryDirectory() as run_dir:
            variants = build_variants(
                detector, config, split_files["train"], run_dir, exec_properties[QAT_EPOCHS_KEY],
                exec_properties[QAT_LEARNING_RATE_KEY], exec_properties[REPRESENTATIVE_KEY],
                stages)
        paths = {}
        for variant, flatbuffer in variants.items():
            artifact = artifact_utils.get_single_instance(output_dict[OUTPUT_KEYS[variant]])
            paths[variant] = os.path.join(artifact.uri, TFLITE_FILE)
            os.makedirs(artifact.uri, exist_ok=True)
            with open(paths[variant], "wb") as f:
                f.write(flatbuffer)
            runner = TFLiteDetector(paths[variant])
            artifact.set_string_custom_property("variant", variant)
            artifact.set_int_custom_property("size_bytes", len(flatbuffer))
            artifact.set_string_custom_property("input_spec", json.dumps(runner.input_spec()))
            artifact.set_string_custom_property("output_types",
                                                json.dumps(runner.output_types()))

        # --- the same metric and slices for the SavedModel and every variant ----------
        scores = evaluate_variants(
            serving_dir, paths, split_files["eval"], config.class_names,
            json.loads(exec_properties[SLICE_KEYS_KEY]), exec_properties[MIN_SLICE_IMAGES_KEY],
            stages)
        stages.log()
        for variant in variants:
            artifact = artifact_utils.get_single_instance(output_dict[OUTPUT_KEYS[variant]])
            overall = scores[variant][results.OVERALL]
            for key, value in release.headline(overall).items():
                artifact.set_float_custom_property(key, value)
            artifact.set_float_custom_property(
                "mAP_change", overall["mAP"] - scores[SAVED_MODEL][results.OVERALL]["mAP"])
        evaluation = artifact_utils.get_single_instance(output_dict[EVALUATION_KEY])
        report = {"model_uri": model.uri, "class_names": list(config.class_names),
                  "sizes": {v: len(b) for v, b in variants.items()},
                  "metrics": scores, "seconds": stages.seconds}
        os.makedirs(evaluation.uri, exist_ok=True)
        with open(os.path.join(evaluation.uri, EVALUATION_FILE), "w") as f:
            json.dump(report, f, indent=1)
