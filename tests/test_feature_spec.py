"""The feature spec and the curated schema name the same features; boxes name their format."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_data_validation as tfdv

from data import boxes
from data import feature_spec as fs
from schemas import DEFAULT_SCHEMA_PATH


def test_schema_features_are_the_feature_spec_keys():
    schema = tfdv.load_schema_text(DEFAULT_SCHEMA_PATH)
    in_schema = {f.name for f in schema.feature}
    written = set(fs.parsing_spec()) | {fs.IMAGE_FILENAME}
    assert in_schema == written


def test_box_formats_convert_both_ways():
    yxyx = np.array([[0.1, 0.2, 0.5, 0.6]])
    xyxy = boxes.convert(yxyx, boxes.YXYX, boxes.XYXY)
    np.testing.assert_array_equal(xyxy, [[0.2, 0.1, 0.6, 0.5]])
    np.testing.assert_array_equal(boxes.convert(xyxy, boxes.XYXY, boxes.YXYX), yxyx)
    coco = boxes.convert(yxyx, boxes.YXYX, boxes.COCO, height=100, width=200)
    np.testing.assert_allclose(coco, [[40, 10, 80, 40]])
    np.testing.assert_allclose(
        boxes.convert(coco, boxes.COCO, boxes.YXYX, height=100, width=200), yxyx)


@pytest.mark.parametrize("call, message", [
    (lambda: boxes.convert([[0.5, 0.1, 0.2, 0.6]], boxes.YXYX, boxes.XYXY, where="outputs"),
     "outputs: 1 of 1 boxes given as yxyx have min > max corners"),
    (lambda: boxes.convert([[1, 2, -3, 4]], boxes.COCO, boxes.YXYX, height=1, width=1),
     "given as coco have negative width or height"),
    (lambda: boxes.convert([[0, 0, 1, 1]], "xywh", boxes.YXYX), "unknown box format 'xywh'"),
    (lambda: boxes.convert([[0, 0, 1]], boxes.YXYX, boxes.XYXY), "4 coordinates"),
    (lambda: boxes.convert([[0, 0, 1, 1]], boxes.YXYX, boxes.COCO), "needs the image size"),
])
def test_mismatched_boxes_are_rejected_naming_the_format(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_boxes_from_features_follow_the_asked_format():
    features = {fs.BBOX_XMIN: [0.2], fs.BBOX_YMIN: [0.1], fs.BBOX_XMAX: [0.6],
                fs.BBOX_YMAX: [0.5]}
    np.testing.assert_array_equal(boxes.from_features(features, boxes.YXYX),
                                  [[0.1, 0.2, 0.5, 0.6]])
    np.testing.assert_array_equal(boxes.from_features(features, boxes.XYXY),
                                  [[0.2, 0.1, 0.6, 0.5]])
    with pytest.raises(KeyError, match="image/object/bbox/xmax"):
        boxes.from_features({fs.BBOX_XMIN: [0.2], fs.BBOX_YMIN: [0.1]}, boxes.XYXY)
