"""Edge variants: QAT builds and converts, the runner matches the SavedModel, the push gate.

The fixture trains the real detector on easy tiny data (coloured rectangles, 400 steps at
64 px) so that it makes confident detections, then builds every TFLite variant with the
EdgeOptimizer's own code.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from components.coco_eval import offline, results
from components.edge_optimizer import EdgeEvaluation, TFLiteModel
from components.edge_optimizer import executor as edge_executor
from components.edge_pusher import EdgeBundle
from components.edge_pusher import executor as pusher
from data import feature_spec as fs
from serving.tflite_runner import TFLiteDetector
from tests.trainer_fixture import CLASS_NAMES, make_example, write_split
from trainer import qat, tflite
from trainer.config import TrainConfig
from trainer.decode import BOXES, CLASSES, NUM_DETECTIONS, SCORES
from trainer.export import SERVING_DEFAULT, export_saved_model, load_detector
from trainer.train import train

INPUT_SIZE = 64
MAX_DETECTIONS = 20
# fp16 weights, float32 compute: measured max differences on this fixture were ~1e-4
# for scores and boxes; the bound leaves room for other CPUs' kernels.
FP16_TOLERANCE = 2e-3
CLEAR_SCORE = 0.5  # a float detection this confident is a "clear case"
INT8_MIN_IOU = 0.7  # the int8 model's detection of a clear case overlaps it at least this
SLICE_KEYS = [fs.IMAGE_FORMAT]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory):
    root = str(tmp_path_factory.mktemp("edge"))
    rng = np.random.default_rng(0)
    examples = [make_example(rng, i) for i in range(160)]
    train_files = [write_split(os.path.join(root, "Split-train"), examples[:128])]
    eval_files = [write_split(os.path.join(root, "Split-eval"), examples[128:])]
    config = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=INPUT_SIZE, epochs=4,
                         batch_size=16, learning_rate=2e-2, max_detections=MAX_DETECTIONS)
    result = train(config, train_files, eval_files, os.path.join(root, "run"),
                   train_steps=400, eval_steps=2)
    serving_dir = os.path.join(root, "serving")
    export_saved_model(result.detector, serving_dir, INPUT_SIZE, MAX_DETECTIONS,
                       config.to_dict(), list(CLASS_NAMES))
    detector, loaded_config = load_detector(serving_dir)
    variants = edge_executor.build_variants(detector, loaded_config, train_files,
                                            os.path.join(root, "qat"), qat_epochs=1,
                                            qat_learning_rate=1e-4, representative_count=32)
    paths = {}
    for variant, flatbuffer in variants.items():
        paths[variant] = os.path.join(root, variant, edge_executor.TFLITE_FILE)
        os.makedirs(os.path.dirname(paths[variant]))
        with open(paths[variant], "wb") as f:
            f.write(flatbuffer)
    images = [e.features.feature["image/encoded"].bytes_list.value[0] for e in examples[128:]]
    serve = tf.saved_model.load(serving_dir).signatures[SERVING_DEFAULT]
    float_outputs = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
    return {"root": root, "serving_dir": serving_dir, "paths": paths, "images": images,
            "float": float_outputs, "eval_files": eval_files, "train_files": train_files,
            "detector": detector, "config": loaded_config}


def test_converting_with_only_the_weights_is_byte_identical(edge, monkeypatch):
    """The converter given just the variables (fast) writes what it writes given the
    Keras model (TF's documented use, ~10x slower), for each kind of conversion."""
    detector, config = edge["detector"], edge["config"]
    args = (config.input_size, config.max_detections)
    images = tflite.representative_images(edge["train_files"], config.input_size, 8)
    cases = [(detector, tflite.FLOAT32), (detector, tflite.PTQ_INT8),
             (qat.quantize_detector(detector), tflite.QAT_INT8)]
    fast = [tflite.convert(model, variant, *args, images) for model, variant in cases]
    monkeypatch.setattr(tflite, "_weights_only", lambda model: model)
    for (model, variant), flatbuffer in zip(cases, fast, strict=True):
        assert flatbuffer == tflite.convert(model, variant, *args, images), variant


def test_one_pass_scoring_equals_scoring_each_model_alone(edge):
    # The fixture has no meta features; its JPEG/PNG mix gives two slices.
    scores = edge_executor.evaluate_variants(edge["serving_dir"], edge["paths"],
                                             edge["eval_files"], CLASS_NAMES, SLICE_KEYS, 4)
    detectors = {edge_executor.SAVED_MODEL: offline.saved_model_detector(edge["serving_dir"]),
                 **{v: TFLiteDetector(p).detect for v, p in edge["paths"].items()}}
    assert list(scores) == list(detectors)
    for name, detect in detectors.items():
        alone = offline.evaluate(detect, offline.read_examples(edge["eval_files"]),
                                 CLASS_NAMES, SLICE_KEYS, 4)
        assert len(alone) > 1 and scores[name] == alone, name  # slices too, exactly


def test_qat_int8_uses_builtin_ops_and_integer_convolutions(edge):
    path = edge["paths"][tflite.QAT_INT8]
    interpreter = TFLiteDetector(path)._interpreter  # noqa: SLF001
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001
    names = {op["op_name"] for op in ops}
    assert not {n for n in names if n.startswith("Flex") or n == "CUSTOM"}, names
    convs = {tensors[op["outputs"][0]]["name"]: [tensors[i]["dtype"] for i in op["inputs"][:2]]
             for op in ops if op["op_name"] == "CONV_2D"}
    head = {name: types for name, types in convs.items() if "_logits" in name}
    body = {name: types for name, types in convs.items() if name not in head}
    assert len(head) == 3 and len(body) == 19  # the `small` detector: 22 convs
    # Body convs: int8 activations and weights; the 1x1 output convs stay float by design.
    assert all(types == [np.int8, np.int8] for types in body.values()), body
    assert all(types[0] == np.float32 for types in head.values()), head


def test_variant_sizes_shrink_as_expected(edge):
    sizes = {v: os.path.getsize(p) for v, p in edge["paths"].items()}
    assert sizes[tflite.FP16] < 0.6 * sizes[tflite.FLOAT32]
    for variant in tflite.INT8_VARIANTS:
        assert sizes[variant] < 0.4 * sizes[tflite.FLOAT32], sizes


def test_fp16_runner_matches_the_saved_model(edge):
    outputs = TFLiteDetector(edge["paths"][tflite.FP16]).detect(edge["images"])
    expected = edge["float"]
    confident = expected[SCORES] > 0.05
    assert confident.sum() >= 20  # enough detections for the comparison to mean something
    np.testing.assert_allclose(outputs[SCORES][confident], expected[SCORES][confident],
                               atol=FP16_TOLERANCE)
    np.testing.assert_allclose(outputs[BOXES][confident], expected[BOXES][confident],
                               atol=FP16_TOLERANCE)
    np.testing.assert_array_equal(outputs[CLASSES][confident], expected[CLASSES][confident])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    top_left, bottom_right = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None))
    area = lambda box: np.prod(box[2:] - box[:2])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


@pytest.mark.parametrize("variant", tflite.INT8_VARIANTS)
def test_int8_finds_the_clear_detections(edge, variant):
    outputs = TFLiteDetector(edge["paths"][variant]).detect(edge["images"])
    expected = edge["float"]
    clear = np.argwhere(expected[SCORES] >= CLEAR_SCORE)
    assert len(clear) >= 10, "the fixture model should make confident detections"
    for image, row in clear:
        box, label = expected[BOXES][image, row], expected[CLASSES][image, row]
        count = outputs[NUM_DETECTIONS][image]
        same_class = outputs[CLASSES][image, :count] == label
        ious = [_iou(box, b) for b in outputs[BOXES][image, :count][same_class]]
        assert ious and max(ious) >= INT8_MIN_IOU, (image, row, ious)


def test_runner_reports_uint8_input_for_int8_and_float_outputs(edge):
    for variant in tflite.VARIANTS:
        runner = TFLiteDetector(edge["paths"][variant])
        spec = runner.input_spec()
        assert spec["shape"] == [1, INPUT_SIZE, INPUT_SIZE, 3]
        if variant in tflite.INT8_VARIANTS:
            assert spec["dtype"] == "uint8" and spec["quantization"]["scale"] > 0
        else:
            assert spec["dtype"] == "float32" and spec["quantization"] is None
        assert runner.output_types() == {"detection_boxes": "float32",
                                         "detection_classes": "float32",
                                         "detection_scores": "float32",
                                         "num_detections": "int32"}


# --- EdgePusher --------------------------------------------------------------------------
def _evaluation(map_by_variant: dict[str, float]) -> dict:
    def slices(value: float) -> dict:
        return {results.OVERALL: {"mAP": value, "mAP50": value, "mAP75": value,
                                  "AR100": value, "D-ECE": 0.1, "num_images": 32,
                                  "score_threshold/square": 0.4}}
    return {"model_uri": "/models/1", "class_names": CLASS_NAMES,
            "sizes": {v: 1000 for v in tflite.VARIANTS},
            "metrics": {name: slices(value) for name, value in map_by_variant.items()}}


def test_choose_variant_prefers_qat_int8_within_tolerance():
    evaluation = _evaluation({edge_executor.SAVED_MODEL: 0.300, tflite.QAT_INT8: 0.292,
                              tflite.PTQ_INT8: 0.250, tflite.FP16: 0.300,
                              tflite.FLOAT32: 0.300})
    variant, reasons = pusher.choose_variant(evaluation, tolerance=0.01)
    assert variant == tflite.QAT_INT8 and len(reasons) == 1


def test_choose_variant_says_why_int8_was_blocked():
    evaluation = _evaluation({edge_executor.SAVED_MODEL: 0.300, tflite.QAT_INT8: 0.285,
                              tflite.PTQ_INT8: 0.250, tflite.FP16: 0.2995,
                              tflite.FLOAT32: 0.2990})
    variant, reasons = pusher.choose_variant(evaluation, tolerance=0.01)
    assert variant == tflite.FP16
    assert reasons[0].startswith("qat_int8: mAP 0.2850") and "-1.50 points" in reasons[0]
    assert reasons[0].endswith("fails") and reasons[1].endswith("fails")
    assert reasons[2].endswith("passes")
    assert pusher.choose_variant(evaluation, tolerance=0.0001)[0] is None


def _artifact(kind, uri: str):
    artifact = kind()
    artifact.uri = uri
    return artifact


def _push(edge, tmp_path, map_by_variant: dict[str, float], blessed: int = 1):
    evaluation = _artifact(EdgeEvaluation, str(tmp_path / "evaluation"))
    os.makedirs(evaluation.uri)
    with open(os.path.join(evaluation.uri, edge_executor.EVALUATION_FILE), "w") as f:
        json.dump(_evaluation(map_by_variant), f)
    blessing = _artifact(standard_artifacts.ModelBlessing, str(tmp_path / "blessing"))
    blessing.set_int_custom_property("blessed", blessed)
    examples = _artifact(standard_artifacts.Examples, str(tmp_path / "examples"))
    examples.split_names = '["train", "eval"]'
    for split in ("train", "eval"):
        examples.set_int_custom_property(f"num_examples_{split}", 10)
        examples.set_string_custom_property(f"content_hash_{split}", f"sha256-{split}")
    inputs = {pusher.BLESSING_KEY: [blessing], pusher.EXAMPLES_KEY: [examples],
              edge_executor.EVALUATION_KEY: [evaluation]}
    for variant, key in edge_executor.OUTPUT_KEYS.items():
        inputs[key] = [_artifact(TFLiteModel, os.path.dirname(edge["paths"][variant]))]
    bundle = _artifact(EdgeBundle, str(tmp_path / "bundle"))
    base = str(tmp_path / "edge")
    pusher.Executor().Do(inputs, {pusher.BUNDLE_KEY: [bundle]},
                         {pusher.BASE_DIRECTORY_KEY: base, pusher.TOLERANCE_KEY: 0.01})
    return bundle, base


def test_int8_below_tolerance_is_not_pushed_and_the_bundle_says_what_shipped(edge, tmp_path):
    bundle, base = _push(edge, tmp_path, {
        edge_executor.SAVED_MODEL: 0.300, tflite.QAT_INT8: 0.280, tflite.PTQ_INT8: 0.270,
        tflite.FP16: 0.300, tflite.FLOAT32: 0.300})
    assert bundle.get_int_custom_property("pushed") == 1
    assert bundle.get_string_custom_property("variant") == tflite.FP16
    reason = bundle.get_string_custom_property("reason")
    assert "qat_int8: mAP 0.2800" in reason and "-2.00 points" in reason
    destination = bundle.get_string_custom_property("pushed_destination")
    assert os.listdir(base) == [os.path.basename(destination)]  # no staging dir left
    with open(os.path.join(destination, edge_executor.TFLITE_FILE), "rb") as f:
        shipped = f.read()
    with open(edge["paths"][tflite.FP16], "rb") as f:
        assert shipped == f.read()
    with open(os.path.join(destination, pusher.LABELS_FILE)) as f:
        assert f.read().splitlines() == CLASS_NAMES
    with open(os.path.join(destination, pusher.THRESHOLDS_FILE)) as f:
        assert json.load(f) == {"square": 0.4}
    with open(os.path.join(destination, pusher.METADATA_FILE)) as f:
        metadata = json.load(f)
    assert metadata["variant"] == tflite.FP16 and metadata["metrics"]["mAP"] == 0.300
    assert metadata["dataset"]["train"] == {"num_examples": 10, "content_hash": "sha256-train"}


def test_bundle_input_spec_is_what_the_int8_model_takes(edge, tmp_path):
    bundle, _ = _push(edge, tmp_path, {
        edge_executor.SAVED_MODEL: 0.300, tflite.QAT_INT8: 0.295, tflite.PTQ_INT8: 0.270,
        tflite.FP16: 0.300, tflite.FLOAT32: 0.300})
    assert bundle.get_string_custom_property("variant") == tflite.QAT_INT8
    destination = bundle.get_string_custom_property("pushed_destination")
    with open(os.path.join(destination, pusher.INPUT_SPEC_FILE)) as f:
        spec = json.load(f)
    runner = TFLiteDetector(os.path.join(destination, edge_executor.TFLITE_FILE))
    details = runner._runner.get_input_details()["images"]  # noqa: SLF001
    assert spec["dtype"] == "uint8" == np.dtype(details["dtype"]).name
    assert spec["shape"] == details["shape"].tolist() == [1, INPUT_SIZE, INPUT_SIZE, 3]
    scale, zero_point = details["quantization"]
    assert spec["quantization"] == {"scale": pytest.approx(scale), "zero_point": zero_point}
    outputs = {k: np.dtype(d["dtype"]).name
               for k, d in runner._runner.get_output_details().items()}  # noqa: SLF001
    assert spec["outputs"] == outputs


def test_unblessed_model_is_not_pushed(edge, tmp_path):
    bundle, base = _push(edge, tmp_path, {name: 0.3 for name in (
        edge_executor.SAVED_MODEL, *tflite.VARIANTS)}, blessed=0)
    assert bundle.get_int_custom_property("pushed") == 0
    assert "not blessed" in bundle.get_string_custom_property("reason")
    assert not os.path.exists(base)
