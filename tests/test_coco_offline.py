"""Offline scoring (used for the TFLite variants): the Evaluator's metric, per slice."""

from __future__ import annotations

import numpy as np
import pytest

from components.coco_eval import offline
from data import feature_spec as fs
from tests.detection_outputs import outputs_from_rows

CLASSES = ["square", "bar"]


def _example(index: int, camera: str) -> bytes:
    boxes = [(0.1, 0.1, 0.5, 0.6), (0.4, 0.3, 0.9, 0.8)]
    return fs.build_example(
        encoded=f"image-{index}".encode(), image_format="jpeg", height=100, width=100,
        source_id=str(index), boxes=boxes, labels=[1, 2], texts=CLASSES,
        areas=[1000.0, 1500.0], meta={"camera": camera},
    ).SerializeToString()


def _detector(examples: list[bytes], wrong_on: str):
    """Detects every GT box exactly, except on images of camera ``wrong_on``."""
    by_image = {}
    for serialized in examples:
        features = offline.example_features(serialized)
        ymin, xmin, ymax, xmax = (features[k] for k in (
            fs.BBOX_YMIN, fs.BBOX_XMIN, fs.BBOX_YMAX, fs.BBOX_XMAX))
        boxes = np.stack([xmin, ymin, xmax, ymax], axis=1)
        if features[fs.meta_key("camera")][0].decode() == wrong_on:
            boxes = boxes[::-1]  # each box labelled with the other's class
        labels = features[fs.CLASS_LABEL].astype(np.float32)
        rows = np.concatenate([boxes, labels[:, None], np.full((2, 1), 0.9)], axis=1)
        by_image[features[fs.IMAGE_ENCODED][0]] = rows

    def detect(encoded):
        return outputs_from_rows(np.stack([by_image[e] for e in encoded]).astype(np.float32),
                                 np.full(len(encoded), 2, np.int32))
    return detect


def test_slices_are_scored_separately_with_tfma_style_names():
    examples = [_example(i, "cam-a" if i % 3 else "cam-b") for i in range(30)]
    scores = offline.evaluate(_detector(examples, wrong_on="cam-b"), examples, CLASSES,
                              slice_keys=[fs.meta_key("camera")], min_images=5, batch_size=7)
    assert list(scores) == ["overall", "meta/camera=cam-a", "meta/camera=cam-b"]
    assert scores["meta/camera=cam-a"]["mAP"] == pytest.approx(1.0)
    assert scores["meta/camera=cam-b"]["mAP"] == pytest.approx(0.0)
    assert scores["meta/camera=cam-a"]["num_images"] == 20
    assert 0.0 < scores["overall"]["mAP"] < 1.0
    assert scores["overall"]["enough_images"] == 1.0


def test_no_examples_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        offline.evaluate(lambda encoded: {}, [], CLASSES)


def test_evaluate_models_scores_each_model_as_evaluate_does_alone():
    examples = [_example(i, ("cam-a", "cam-b", "cam-c")[i % 3]) for i in range(40)]
    keys = [fs.meta_key("camera")]
    detect_b, detect_c = (_detector(examples, wrong_on=cam) for cam in ("cam-b", "cam-c"))
    # An "image model": the same detections, from a preprocessed input (here the bytes'
    # index into the list, so the test sees exactly which images it was given).
    index = {e: i for i, e in enumerate(
        offline.example_features(s)[fs.IMAGE_ENCODED][0] for s in examples)}
    encoded = list(index)
    scores = offline.evaluate_models(
        iter(examples), CLASSES, keys, 5, detectors={"b": detect_b},
        image_detectors={"c": lambda images: detect_c([encoded[int(i)] for i in images])},
        preprocess=lambda e: np.float32(index[e]), batch_size=7)
    assert list(scores) == ["b", "c"]
    for name, detect in (("b", detect_b), ("c", detect_c)):
        alone = offline.evaluate(detect, examples, CLASSES, keys, min_images=5, batch_size=32)
        assert scores[name] == alone  # exactly: the same images, matches and sums
    assert scores["b"]["meta/camera=cam-b"]["mAP"] == pytest.approx(0.0)
    assert scores["c"]["meta/camera=cam-b"]["mAP"] == pytest.approx(1.0)


def test_evaluate_models_needs_preprocess_for_image_models():
    with pytest.raises(ValueError, match="need preprocess"):
        offline.evaluate_models([_example(0, "cam-a")], CLASSES,
                                image_detectors={"m": lambda images: {}})
