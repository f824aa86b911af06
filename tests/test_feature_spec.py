"""The feature spec and the curated schema name the same features; boxes name their format."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2

from data import boxes
from data import feature_spec as fs
from schemas import DEFAULT_SCHEMA_PATH


def test_schema_features_are_the_feature_spec_keys():
    schema = tfdv.load_schema_text(DEFAULT_SCHEMA_PATH)
    in_schema = {f.name for f in schema.feature}
    written = set(fs.parsing_spec()) | {fs.IMAGE_FILENAME}
    assert in_schema == written


def _example():
    """A tf.Example the curated schema accepts."""
    return fs.build_example(
        encoded=b"jpeg", image_format="jpeg", height=48, width=64, source_id="1",
        boxes=[(0.1, 0.2, 0.5, 0.6)], labels=[1], texts=["circle"], areas=[100.0],
        meta={"camera": "cam-a", "lighting": "day"}, filename="1.jpg", sha256="digest",
        stats={fs.STATS_BRIGHTNESS: 0.5, fs.STATS_CONTRAST: 0.2},
    )


def _statistics(examples, schema=None):
    """TFDV statistics of tf.Examples, in memory (StatisticsGen's generators, without Beam)."""
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder

    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(
        [e.SerializeToString() for e in examples])
    options = tfdv.StatsOptions(schema=schema) if schema else tfdv.StatsOptions()
    return stats_impl.generate_statistics_in_memory(batch, options)


def _anomalies(examples):
    """TFDV's validation of the examples' statistics against the curated schema."""
    schema = tfdv.load_schema_text(DEFAULT_SCHEMA_PATH)
    return tfdv.validate_statistics(_statistics(examples, schema), schema)


@pytest.mark.parametrize(
    "feature, value, anomaly",
    [
        (fs.BBOX_XMAX, float("nan"), "FLOAT_TYPE_HAS_NAN"),
        (fs.BBOX_YMIN, float("-inf"), "FLOAT_TYPE_HAS_INF"),
        (fs.AREA, float("nan"), "FLOAT_TYPE_HAS_NAN"),
        (fs.AREA, float("inf"), "FLOAT_TYPE_HAS_INF"),
        (fs.STATS_BRIGHTNESS, float("nan"), "FLOAT_TYPE_HAS_NAN"),
        (fs.STATS_CONTRAST, float("inf"), "FLOAT_TYPE_HAS_INF"),
    ],
)
def test_the_schema_refuses_nonfinite_boxes_areas_and_stats(feature, value, anomaly):
    """A record that slips past ingestion's check meets ExampleValidator's (TFDV 1.16)."""
    assert not _anomalies([_example()]).anomaly_info  # the control: finite values pass
    bad = _example()
    bad.features.feature[feature].float_list.value[0] = value
    info = _anomalies([_example(), bad]).anomaly_info
    assert feature in info, dict(info)
    types = {anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info[feature].reason}
    assert anomaly in types


def test_a_drafted_schema_keeps_the_finite_rule():
    from schemas import curate

    schema = curate.draft_schema(_statistics([_example()]), ["circle"])
    for key in (*fs.BOX_KEYS, fs.AREA, fs.STATS_BRIGHTNESS, fs.STATS_CONTRAST):
        domain = tfdv.get_feature(schema, key).float_domain
        assert domain.disallow_nan and domain.disallow_inf, key


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


@pytest.mark.slow  # a Beam run (TFDV statistics)
def test_schema_infer_reads_images_from_the_images_root(tmp_path):
    from click.testing import CliRunner

    from pipelines.cli import main
    from tests.coco_fixture import jpeg_bytes, write_coco

    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 16]}
                   for i in (1, 2)]
    write_coco(tmp_path, images, annotations, {f"train/{i}.jpg": jpeg_bytes(64, 48, i)
                                               for i in (1, 2)},
               name="annotations/instances_train.json")
    out = str(tmp_path / "draft.pbtxt")
    result = CliRunner().invoke(main, ["schema", "infer", str(tmp_path), "--pattern",
                                       "annotations/instances_train.json", "--images", "train",
                                       "--out", out])
    assert result.exit_code == 0, result.output
    assert "(0 records quarantined and not used)" in result.output
    assert tfdv.get_feature(tfdv.load_schema_text(out), fs.AREA).float_domain.disallow_nan
