"""CocoExampleGen's executor on real artifacts: splits, quarantine report, MLMD properties."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf
from tfx.components.example_gen import utils as example_gen_utils
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components.coco_example_gen import CocoExampleGen
from components.coco_example_gen import executor as coco_executor
from data import coco
from data import feature_spec as fs
from tests.coco_fixture import ANNOTATION_ROWS, BAD_RECORDS, GOOD_IMAGES


def _run_executor(input_base: str, output_uri: str, pattern: str = "annotations.json"):
    component = CocoExampleGen(input_base=input_base, annotations_pattern=pattern)
    exec_properties = {
        key: proto_utils.proto_to_json(value) if hasattr(value, "DESCRIPTOR") else value
        for key, value in component.exec_properties.items()
    }
    examples = standard_artifacts.Examples()
    examples.uri = output_uri
    coco_executor.Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]},
                                exec_properties)
    return examples


def _read_split(examples, split: str) -> list[tf.train.Example]:
    uri = artifact_utils.get_split_uri([examples], split)
    files = tf.io.gfile.glob(os.path.join(uri, "*"))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in dataset]


@pytest.mark.slow  # a Beam pipeline run
def test_executor_writes_splits_quarantine_and_hashes(bad_coco, tmp_path):
    examples = _run_executor(str(bad_coco.parent), str(tmp_path / "out"))

    splits = {name: _read_split(examples, name) for name in ("train", "eval")}
    assert sum(len(s) for s in splits.values()) == GOOD_IMAGES
    for name, split in splits.items():
        digests = [e.features.feature[fs.IMAGE_SHA256].bytes_list.value[0].decode()
                   for e in split]
        assert examples.get_string_custom_property(f"content_hash_{name}") == (
            coco.content_hash(digests)
        )
        assert examples.get_int_custom_property(f"num_examples_{name}") == len(split)

    # One row per bad image (or annotation of no image), counted by its primary reason.
    assert examples.get_int_custom_property("quarantined") == sum(BAD_RECORDS.values())
    assert json.loads(examples.get_string_custom_property("quarantine_reasons")) == BAD_RECORDS
    assert json.loads(examples.get_string_custom_property("label_map")) == ["circle", "square"]
    with open(os.path.join(examples.uri, coco_executor.QUARANTINE_FILE)) as f:
        rows = [json.loads(line) for line in f]
    assert {r["reason"] for r in rows} == set(BAD_RECORDS)
    assert all(r["detail"] and r["problems"] for r in rows)
    # Nothing is lost: kept + quarantined images = listed images.
    listed = len(json.loads(bad_coco.read_text())["images"])
    assert examples.get_int_custom_property("listed_images") == listed
    assert examples.get_int_custom_property("quarantined_images") == (
        sum(BAD_RECORDS.values()) - ANNOTATION_ROWS)
    assert GOOD_IMAGES + examples.get_int_custom_property("quarantined_images") == listed


@pytest.mark.slow  # a Beam pipeline run
def test_splits_are_decided_by_image_id(bad_coco, tmp_path):
    """The same image lands in the same split on every run."""
    first = _run_executor(str(bad_coco.parent), str(tmp_path / "first"))
    second = _run_executor(str(bad_coco.parent), str(tmp_path / "second"))
    for split in ("train", "eval"):
        ids = [{e.features.feature[fs.IMAGE_SOURCE_ID].bytes_list.value[0]
                for e in _read_split(run, split)} for run in (first, second)]
        assert ids[0] == ids[1]


def test_malformed_annotations_fail_the_component(tmp_path):
    (tmp_path / "annotations.json").write_text('{"images": []}')
    with pytest.raises(coco.CocoFormatError, match="'annotations' must be a list"):
        _run_executor(str(tmp_path), str(tmp_path / "out"))


def test_component_arguments_are_checked():
    with pytest.raises(ValueError, match="must name the COCO annotations JSON file"):
        CocoExampleGen(input_base="/data", annotations_pattern="images/*.jpg")
    with pytest.raises(ValueError, match="positive bucket counts"):
        CocoExampleGen(input_base="/data", split_buckets={"train": 4, "test": 1})


def test_spans_resolve_to_the_latest(tmp_path):
    """``span-{SPAN}`` patterns select the newest span, as TFX's FileBasedDriver does."""
    for span in (1, 2):
        (tmp_path / f"span-{span}").mkdir()
        (tmp_path / f"span-{span}" / "annotations.json").write_text("{}")
    _, span, _ = example_gen_utils.calculate_splits_fingerprint_span_and_version(
        str(tmp_path), [example_gen_utils.example_gen_pb2.Input.Split(
            name="coco", pattern="span-{SPAN}/annotations.json")]
    )
    assert span == 2
