"""CocoExampleGen's executor on real artifacts: splits, quarantine report, MLMD properties."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components.coco_example_gen import CocoExampleGen
from components.coco_example_gen import executor as coco_executor
from data import coco
from data import feature_spec as fs
from tests.coco_fixture import ANNOTATION_ROWS, BAD_RECORDS, GOOD_IMAGES, jpeg_bytes, write_coco


def _run_executor(input_base: str, output_uri: str, pattern: str = "annotations.json",
                  **component_args):
    component = CocoExampleGen(input_base=input_base, annotations_pattern=pattern,
                               **component_args)
    exec_properties = {
        key: proto_utils.proto_to_json(value) if hasattr(value, "DESCRIPTOR") else value
        for key, value in component.exec_properties.items()
    }
    # As in a pipeline run: the driver resolves the span (and '{SPAN}' in the pattern).
    exec_properties = example_gen_driver.FileBasedDriver(None).resolve_exec_properties(
        exec_properties, None, None)
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
    assert examples.get_string_custom_property("images_root") == str(bad_coco.parent)
    assert not examples.has_custom_property("ingestion_hint")  # 1 missing file of 27


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
    with pytest.raises(ValueError, match="pass None to read images relative to the annotations"):
        CocoExampleGen(input_base="/data", images_root="")
    with pytest.raises(ValueError, match="has a span but annotations_pattern 'a.json' has none"):
        CocoExampleGen(input_base="/data", annotations_pattern="a.json", images_root="s-{SPAN}")


def test_component_carries_the_image_parameters():
    component = CocoExampleGen(input_base="/data", images_root="train", allow_absolute_paths=True)
    assert component.exec_properties[coco_executor.IMAGES_ROOT_KEY] == "train"
    assert component.exec_properties[coco_executor.ALLOW_ABSOLUTE_PATHS_KEY] == 1
    default = CocoExampleGen(input_base="/data")
    assert coco_executor.IMAGES_ROOT_KEY not in default.exec_properties
    assert default.exec_properties[coco_executor.ALLOW_ABSOLUTE_PATHS_KEY] == 0


def test_images_root_is_resolved_against_the_span_and_the_data_root():
    def root(images_root, span=None, base="/data"):
        props = {"input_base": base, coco_executor.IMAGES_ROOT_KEY: images_root}
        if span is not None:
            props[example_gen_utils.SPAN_PROPERTY_NAME] = span
        return coco_executor.images_root_of(props, f"{base}/annotations/instances.json")

    assert root(None) == "/data/annotations"  # unset: the annotations file's folder
    assert root("train") == "/data/train"
    assert root("/mnt/images") == "/mnt/images"
    assert root("span-{SPAN}/images", span=3) == "/data/span-3/images"
    assert root("span-{SPAN:3}/images", span=3) == "/data/span-003/images"
    assert root("images", base="gs://b/data") == "gs://b/data/images"
    with pytest.raises(ValueError, match="no span was resolved"):
        root("span-{SPAN}/images")


def _standard_layout(root, span: int = 0):
    """annotations/instances_train.json with its images in train/ (file_name 'N.jpg')."""
    ids = [10 * span + i for i in range(1, 5)]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in ids]
    files = {f"train/{i}.jpg": jpeg_bytes(64, 48, i) for i in ids}
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 16]}
                   for i in ids]
    return write_coco(root, images, annotations, files, name="annotations/instances_train.json")


def _source_ids(examples) -> set[bytes]:
    return {e.features.feature[fs.IMAGE_SOURCE_ID].bytes_list.value[0]
            for split in ("train", "eval") for e in _read_split(examples, split)}


@pytest.mark.slow  # two Beam pipeline runs
def test_standard_layout_needs_the_images_root_and_says_so(tmp_path):
    _standard_layout(tmp_path / "coco")
    pattern = "annotations/instances_train.json"
    lost = _run_executor(str(tmp_path / "coco"), str(tmp_path / "lost"), pattern)
    assert json.loads(lost.get_string_custom_property("quarantine_reasons")) == {
        "image_file_missing": 4}
    hint = lost.get_string_custom_property("ingestion_hint")
    searched = str(tmp_path / "coco" / "annotations")
    assert f"4 of 4 listed image files were not found under the images root {searched}" in hint
    assert "'1.jpg'" in hint and "images root is probably wrong" in hint
    with open(os.path.join(lost.uri, coco_executor.SUMMARY_FILE)) as f:
        assert json.load(f)["ingestion_hint"] == hint

    found = _run_executor(str(tmp_path / "coco"), str(tmp_path / "found"), pattern,
                          images_root="train")
    assert found.get_int_custom_property("quarantined") == 0
    assert _source_ids(found) == {b"1", b"2", b"3", b"4"}
    assert found.get_string_custom_property("images_root") == str(tmp_path / "coco" / "train")
    assert not found.has_custom_property("ingestion_hint")


@pytest.mark.slow  # a Beam pipeline run
def test_images_root_follows_the_span_of_the_annotations(tmp_path):
    for span in (1, 2):
        _standard_layout(tmp_path / f"span-{span}", span)
    examples = _run_executor(str(tmp_path), str(tmp_path / "out"),
                             "span-{SPAN}/annotations/instances_train.json",
                             images_root="span-{SPAN}/train")
    assert examples.get_int_custom_property("quarantined") == 0
    assert _source_ids(examples) == {b"21", b"22", b"23", b"24"}  # span 2's images


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
