"""COCO -> tf.Example: validation, quarantine reasons, digests, the feature spec."""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections import Counter

import pytest
import tensorflow as tf

from data import coco
from data import feature_spec as fs
from tests.coco_fixture import (
    ANNOTATION_ROWS,
    BAD_RECORDS,
    GOOD_IMAGES,
    MANY_PROBLEMS,
    MANY_PROBLEMS_FILE,
    OUTSIDE_FILE,
    jpeg_bytes,
    make_bad_coco,
    write_coco,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
# record_digest of the record in test_digests_of_good_records_are_unchanged, computed with
# the code before ingestion was hardened (commit 1485afa).
DIGEST_BEFORE_HARDENING = "cf35a08fda459304fcd82b5bb232afed241bc7f9cd65ea73bfd0a9723f7d8782"


def _convert_all(path, images_root=None, allow_absolute_paths=False):
    dataset = coco.load_annotations(str(path))
    label_map = coco.label_map_of(dataset)
    records, quarantined = coco.plan_records(dataset, label_map)
    examples = []
    for record in records:
        try:
            examples.append(coco.record_to_example(
                record, images_root or os.path.dirname(path), label_map, allow_absolute_paths))
        except coco.RecordError as e:
            quarantined.append(coco.quarantine_row(record, e))
    return dataset, examples, quarantined


def _by_reason(quarantined):
    return dict(Counter(q.reason for q in quarantined))


def test_every_bad_record_is_quarantined_with_its_reason(bad_coco):
    dataset, examples, quarantined = _convert_all(bad_coco)
    assert _by_reason(quarantined) == BAD_RECORDS
    assert len(examples) == GOOD_IMAGES
    # Nothing is lost: every image entry is either kept or in exactly one quarantine row.
    image_rows = [q for q in quarantined if q.record == coco.IMAGE_RECORD]
    assert len(examples) + len(image_rows) == len(dataset["images"])
    assert len(quarantined) - len(image_rows) == ANNOTATION_ROWS
    by_reason = {q.reason: q for q in quarantined}
    assert by_reason["annotation_box_outside_image"].file == "images/outside.jpg"
    assert "exceeds the 64x48 image" in by_reason["annotation_box_outside_image"].detail
    assert by_reason["annotation_unknown_image"].image_id == 999
    assert by_reason["annotation_unknown_image"].record == coco.ANNOTATION_RECORD
    assert "0 bytes" in " ".join(q.detail for q in quarantined if q.reason == "image_undecodable")
    assert "category_id 9" in by_reason["annotation_unknown_category"].detail
    assert by_reason["image_file_missing"].file == "images/not_there.jpg"
    assert "format GIF is not JPEG/PNG" in by_reason["image_format_unsupported"].detail
    for q in quarantined:  # every row names its file or ids, and lists its primary problem
        assert q.file or q.image_id is not None or q.annotation_id is not None or \
            "is not an object" in q.detail, q
        assert (q.reason, q.detail) in {(p.reason, p.detail) for p in q.problems}, q


def test_quarantine_rows_are_json_with_every_problem(bad_coco):
    _, _, quarantined = _convert_all(bad_coco)
    row = json.loads(next(q for q in quarantined if q.file == MANY_PROBLEMS_FILE).to_json())
    assert row["reason"] == "annotation_bbox_malformed"  # the primary reason, counted once
    first = row["annotation_id"]
    assert [(p["annotation_id"] - first, p["reason"]) for p in row["problems"]] == MANY_PROBLEMS
    assert all(p["detail"].startswith(f"annotation {p['annotation_id']}")
               for p in row["problems"])
    assert row["record"] == "image" and row["image_id"] == 113


def test_example_round_trips_through_the_parsing_spec(bad_coco):
    _, examples, _ = _convert_all(bad_coco)
    example = examples[0]
    parsed = tf.io.parse_single_example(example.SerializeToString(), fs.parsing_spec())
    assert parsed[fs.IMAGE_SOURCE_ID].numpy() == b"1"
    assert parsed[fs.IMAGE_WIDTH].numpy() == 64 and parsed[fs.IMAGE_HEIGHT].numpy() == 48
    box = [tf.sparse.to_dense(parsed[k]).numpy()[0] for k in fs.BOX_KEYS]
    assert box == pytest.approx([4 / 48, 4 / 64, 20 / 48, 24 / 64])
    assert tf.sparse.to_dense(parsed[fs.CLASS_LABEL]).numpy().tolist() == [2]
    assert tf.sparse.to_dense(parsed[fs.CLASS_TEXT]).numpy().tolist() == [b"square"]
    assert parsed[fs.meta_key("camera")].numpy() == b"cam-a"
    assert parsed[fs.STATS_NUM_OBJECTS].numpy() == 1
    assert 0.0 < parsed[fs.STATS_BRIGHTNESS].numpy() < 1.0
    decoded = tf.io.decode_jpeg(parsed[fs.IMAGE_ENCODED])
    assert decoded.shape == (48, 64, 3)


def test_missing_metadata_becomes_unknown(bad_coco):
    dataset = coco.load_annotations(str(bad_coco))
    label_map = coco.label_map_of(dataset)
    record = coco.ImageRecord({**dataset["images"][0], "camera": None}, ())
    example = coco.record_to_example(record, os.path.dirname(bad_coco), label_map)
    value = example.features.feature[fs.meta_key("camera")].bytes_list.value[0]
    assert value == fs.META_UNKNOWN.encode()


def _split_hash(path):
    _, examples, _ = _convert_all(path)
    return coco.content_hash(
        e.features.feature[fs.IMAGE_SHA256].bytes_list.value[0].decode() for e in examples
    )


def test_content_hash_is_stable_and_sees_one_pixel_and_one_box(tmp_path):
    first = _split_hash(make_bad_coco(tmp_path / "a"))
    assert first == _split_hash(make_bad_coco(tmp_path / "b"))  # same data, new files

    pixel = make_bad_coco(tmp_path / "pixel")
    from PIL import Image

    image_path = pixel.parent / "images/good3.jpg"
    pixels = Image.open(image_path).convert("RGB")
    pixels.putpixel((10, 10), (0, 0, 0) if pixels.getpixel((10, 10)) != (0, 0, 0) else (9, 9, 9))
    pixels.save(image_path, format="PNG")  # lossless, so exactly one pixel differs
    assert _split_hash(pixel) != first

    box = make_bad_coco(tmp_path / "box")
    dataset = json.loads(box.read_text())
    dataset["annotations"][0]["bbox"][0] += 1.0
    box.write_text(json.dumps(dataset))
    assert _split_hash(box) != first


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level must be a JSON object"),
        ('{"images": [], "annotations": []}', "'categories' must be a list"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}]}',
         "categories[0] must be an object with 'id' and 'name'"),
        ('{"images": [], "annotations": [], "categories": [{"id": "1", "name": "a"}]}',
         "categories[0]: 'id' must be an integer, got '1'"),
    ],
)
def test_malformed_annotations_fail_with_the_file_and_the_rule(tmp_path, content, message):
    path = tmp_path / "annotations.json"
    path.write_text(content)
    with pytest.raises(coco.CocoFormatError) as error:
        coco.load_annotations(str(path))
    assert str(path) in str(error.value) and message in str(error.value)


def test_duplicate_category_ids_are_a_format_error():
    with pytest.raises(coco.CocoFormatError, match=r"duplicate category id\(s\) \[1\]"):
        coco.label_map_of({"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]})


def test_build_example_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="img-1: 1 boxes but 0 labels"):
        fs.build_example(encoded=b"", image_format="jpeg", height=1, width=1,
                         source_id="img-1", boxes=[(0, 0, 1, 1)], labels=[], texts=[])


GOOD_BOX = {"category_id": 1, "bbox": [4.0, 4.0, 20.0, 16.0]}


def _two_images(root, bad_annotation):
    """Image 1 with a good box, image 2 with ``bad_annotation``."""
    images = [{"id": i, "file_name": f"images/{i}.jpg", "width": 64, "height": 48}
              for i in (1, 2)]
    files = {img["file_name"]: jpeg_bytes(64, 48, img["id"]) for img in images}
    annotations = [{"id": 1, "image_id": 1, **GOOD_BOX},
                   {"id": 2, "image_id": 2, **bad_annotation}]
    return write_coco(root, images, annotations, files)


def _source_ids(examples):
    return [e.features.feature[fs.IMAGE_SOURCE_ID].bytes_list.value[0] for e in examples]


@pytest.mark.parametrize(
    "bbox, area",
    [
        ([5.0, float("nan"), 10.0, 10.0], None),
        ([5.0, 5.0, float("inf"), 10.0], None),
        ([float("-inf"), 5.0, 10.0, 10.0], None),
        ([5.0, 5.0, 10.0, 10.0], float("nan")),
        ([5.0, 5.0, 10.0, 10.0], float("inf")),
    ],
)
def test_nonfinite_boxes_and_areas_are_quarantined(tmp_path, bbox, area):
    annotation = {"category_id": 1, "bbox": bbox, **({} if area is None else {"area": area})}
    path = _two_images(tmp_path, annotation)
    assert "NaN" in path.read_text() or "Infinity" in path.read_text()  # as JSON writes them
    _, examples, quarantined = _convert_all(path)
    assert _source_ids(examples) == [b"1"]
    [row] = quarantined
    assert (row.reason, row.image_id, row.annotation_id) == (coco.ANNOTATION_NONFINITE, 2, 2)
    assert "must be finite numbers" in row.detail


def test_record_to_example_refuses_nonfinite_boxes_it_is_handed(bad_coco):
    dataset = coco.load_annotations(str(bad_coco))
    record = coco.ImageRecord(dataset["images"][0], (
        {"id": 1, "category_id": 1, "bbox": [4.0, float("nan"), 20.0, 16.0]},))
    with pytest.raises(coco.RecordError) as error:
        coco.record_to_example(record, os.path.dirname(bad_coco), coco.label_map_of(dataset))
    assert error.value.reason == coco.ANNOTATION_NONFINITE


def test_examples_of_streams_the_examples_and_collects_the_refused(bad_coco):
    dataset = coco.load_annotations(str(bad_coco))
    label_map = coco.label_map_of(dataset)
    records, planned = coco.plan_records(dataset, label_map)
    pulled = []

    def lazily():
        for record in records:
            pulled.append(record)
            yield record

    refused = []
    stream = coco.examples_of(lazily(), os.path.dirname(bad_coco), label_map, refused)
    assert pulled == []  # nothing is read before the caller asks
    first = next(stream)
    assert len(pulled) == 1 + len(refused)  # one example at a time, not the whole list
    examples = [first, *stream]
    _, expected, quarantined = _convert_all(bad_coco)
    assert examples == expected and len(examples) == GOOD_IMAGES
    assert refused and all(isinstance(error, coco.RecordError) for error in refused)
    assert dict(Counter(e.reason for e in refused)) == _by_reason(quarantined[len(planned):])
    assert len(examples) + len(refused) == len(records)


@pytest.mark.parametrize(
    "bbox", [[1, 2], [1, 2, 3, 4, 5], ["a", 1, 2, 3], "1,2,3,4", None, [1, 2, True, 4], {"x": 1}]
)
def test_a_malformed_bbox_quarantines_its_image_not_the_file(tmp_path, bbox):
    _, examples, quarantined = _convert_all(_two_images(tmp_path, {"category_id": 1, "bbox": bbox}))
    assert _source_ids(examples) == [b"1"]
    [row] = quarantined
    assert (row.reason, row.image_id, row.annotation_id) == (
        coco.ANNOTATION_BBOX_MALFORMED, 2, 2)
    assert f"'bbox' must be [x, y, width, height] (4 numbers), got {bbox!r}" in row.detail


def test_entries_lacking_fields_are_quarantined_naming_what_they_lack(tmp_path):
    def entry(i, **fields):
        return {"id": i, "file_name": f"images/{i}.jpg", "width": 64, "height": 48, **fields}

    images = [entry(1), entry(2), entry(3), "images/4.jpg", entry(5, width="64"), entry(6)]
    del images[1]["width"], images[2]["file_name"]
    files = {f"images/{i}.jpg": jpeg_bytes(64, 48, i) for i in range(1, 7)}
    annotations = [
        {"id": 1, "image_id": 1, **GOOD_BOX},
        {"id": 2, "image_id": 6, "bbox": [4.0, 4.0, 20.0, 16.0]},  # lacks category_id
        {"id": 3, **GOOD_BOX},  # no image_id: a row of its own
        {"id": 4, "image_id": [1], **GOOD_BOX},  # an unusable image_id
        [5, 1, 1, [4.0, 4.0, 20.0, 16.0]],  # not an object
    ]
    path = write_coco(tmp_path, images, annotations, files)
    dataset, examples, quarantined = _convert_all(path)
    assert _source_ids(examples) == [b"1"]
    rows = {(q.record, q.image_id, q.annotation_id, q.reason): q.detail for q in quarantined}
    expected = {
        ("image", 2, None, "image_entry_malformed"): "lacks required field(s) ['width']",
        ("image", 3, None, "image_entry_malformed"): "lacks required field(s) ['file_name']",
        ("image", None, None, "image_entry_malformed"):
            "images[3] is not an object: 'images/4.jpg'",
        ("image", 5, None, "image_entry_malformed"): "'width' must be a positive number, got '64'",
        ("image", 6, 2, "annotation_malformed"): "annotation 2: lacks required field(s) "
                                                 "['category_id']",
        ("annotation", None, 3, "annotation_malformed"): "annotation 3 has no usable 'image_id'",
        ("annotation", None, 4, "annotation_malformed"): "(got [1])",
        ("annotation", None, None, "annotation_malformed"): "annotations[4] is not an object",
    }
    assert set(rows) == set(expected)
    for key, fragment in expected.items():
        assert fragment in rows[key], (key, rows[key])
    image_rows = [q for q in quarantined if q.record == coco.IMAGE_RECORD]
    assert len(examples) + len(image_rows) == len(dataset["images"])


def test_allow_absolute_paths_reads_absolute_file_names_only(bad_coco):
    _, examples, quarantined = _convert_all(bad_coco, allow_absolute_paths=True)
    assert len(examples) == GOOD_IMAGES + 1  # the absolute one
    assert [q.file for q in quarantined if q.reason == coco.IMAGE_OUTSIDE_ROOT] == [OUTSIDE_FILE]


def test_the_images_root_is_where_file_names_are_read(tmp_path):
    """The usual COCO layout: annotations/instances_train.json, images in train/."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2)]
    files = {f"train/{i}.jpg": jpeg_bytes(64, 48, i) for i in (1, 2)}
    annotations = [{"id": i, "image_id": i, **GOOD_BOX} for i in (1, 2)]
    path = write_coco(tmp_path, images, annotations, files, name="annotations/instances.json")
    _, examples, quarantined = _convert_all(path)
    assert not examples and {q.reason for q in quarantined} == {coco.IMAGE_FILE_MISSING}
    _, examples, quarantined = _convert_all(path, images_root=str(tmp_path / "train"))
    assert len(examples) == 2 and not quarantined


def test_missing_images_hint_names_the_root_and_a_file():
    assert coco.missing_images_hint(["b.jpg"], 2, "/data/annotations") is None  # half: no hint
    hint = coco.missing_images_hint(["b.jpg", "a.jpg"], 3, "/data/annotations")
    assert "2 of 3 listed image files were not found under the images root " \
        "/data/annotations" in hint
    assert "'a.jpg' was looked for at /data/annotations/a.jpg" in hint
    assert "the images root is probably wrong" in hint and "--images" in hint
    assert coco.missing_images_hint([], 0, "/x") is None


@pytest.mark.parametrize(
    "file_name", ["../outside.jpg", "../../outside.jpg", "images/../../outside.jpg", ".."]
)
def test_file_names_may_not_climb_out_of_the_images_root(tmp_path, file_name):
    root = tmp_path / "data" / "root"
    (root / "images").mkdir(parents=True)
    for allow_absolute_paths in (False, True):  # relative names never leave the root
        with pytest.raises(coco.RecordError) as error:
            coco.resolve_image_path(file_name, str(root), allow_absolute_paths)
        assert error.value.reason == coco.IMAGE_OUTSIDE_ROOT
        assert f"outside the images root {os.path.realpath(root)}" in error.value.detail
    assert coco.resolve_image_path("images/../a.jpg", str(root)) == str(root / "images/../a.jpg")


def test_absolute_file_names_need_allow_absolute_paths(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "mnt" / "a.jpg"
    root.mkdir()
    with pytest.raises(coco.RecordError) as error:
        coco.resolve_image_path(str(elsewhere), str(root))
    assert error.value.reason == coco.IMAGE_OUTSIDE_ROOT
    assert "set data.allow_absolute_paths=true" in error.value.detail
    assert coco.resolve_image_path(str(elsewhere), str(root), True) == str(elsewhere)
    inside = str(root / "images" / "a.jpg")  # absolute, but under the root: always fine
    assert coco.resolve_image_path(inside, str(root)) == inside


def test_symlinks_are_resolved_before_the_root_check(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(8, 8, 0))
    (root / "images" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(coco.RecordError) as error:
        coco.resolve_image_path("images/link.jpg", str(root))
    assert f"resolves to {os.path.realpath(tmp_path / 'secret.jpg')}" in error.value.detail
    (tmp_path / "root_link").symlink_to(root)  # a root reached through a symlink is fine
    (root / "images" / "a.jpg").write_bytes(jpeg_bytes(8, 8, 1))
    assert coco.resolve_image_path("images/a.jpg", str(tmp_path / "root_link")) == \
        str(tmp_path / "root_link" / "images" / "a.jpg")


def test_uris_are_checked_after_normalising_dot_dots():
    assert coco.resolve_image_path("images/a.jpg", "gs://b/data") == "gs://b/data/images/a.jpg"
    for name in ("../x.jpg", "images/../../x.jpg", "gs://other/x.jpg", "/etc/passwd"):
        with pytest.raises(coco.RecordError, match="outside the images root gs://b/data"):
            coco.resolve_image_path(name, "gs://b/data")
    assert coco.resolve_image_path("gs://other/x.jpg", "gs://b/data", True) == "gs://other/x.jpg"


def test_digests_of_good_records_are_unchanged():
    """Split hashes are built from these: existing datasets must keep their hashes."""
    label_map = coco.LabelMap((1, 3), ("circle", "star"))
    record = coco.ImageRecord({"id": 7, "file_name": "a.jpg", "width": 64, "height": 48}, (
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2.5, 10, 20], "iscrowd": 1},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 17.5},
    ))
    assert coco.record_digest(b"image bytes", record, label_map) == DIGEST_BEFORE_HARDENING


def test_every_reason_is_documented_one_line_each():
    docs = (REPO / "docs" / "pipeline.md").read_text()
    section = docs.split("## Ingestion and quarantine")[1].split("\n## ")[0]
    assert re.findall(r"^- `([a-z_]+)`: \S", section, re.M) == list(coco.REASONS)
