"""COCO -> tf.Example: validation, quarantine reasons, digests, the feature spec."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

from data import coco
from data import feature_spec as fs
from tests.coco_fixture import BAD_RECORDS, GOOD_IMAGES, make_bad_coco


def _convert_all(path):
    dataset = coco.load_annotations(str(path))
    label_map = coco.label_map_of(dataset)
    records, quarantined = coco.plan_records(dataset, label_map)
    examples = []
    for record in records:
        try:
            examples.append(coco.record_to_example(record, os.path.dirname(path), label_map))
        except coco.RecordError as e:
            quarantined.append(coco.Quarantined(record.image["file_name"], record.image["id"],
                                                None, e.reason, e.detail))
    return dataset, examples, quarantined


def test_every_bad_record_is_quarantined_with_its_reason(bad_coco):
    dataset, examples, quarantined = _convert_all(bad_coco)
    reasons = {}
    for q in quarantined:
        reasons[q.reason] = reasons.get(q.reason, 0) + 1
    assert reasons == BAD_RECORDS
    assert len(examples) == GOOD_IMAGES
    # Nothing is lost: every image entry is either kept or quarantined.
    quarantined_images = [q for q in quarantined if q.reason != coco.MISSING_IMAGE]
    assert len(examples) + len(quarantined_images) == len(dataset["images"])
    by_reason = {q.reason: q for q in quarantined}
    assert by_reason["box_outside_image"].file == "images/outside.jpg"
    assert "exceeds the 64x48 image" in by_reason["box_outside_image"].detail
    assert by_reason["missing_image"].image_id == 999
    assert "0 bytes" in " ".join(q.detail for q in quarantined if q.reason == "unreadable_image")
    assert "category_id 9" in by_reason["unknown_category"].detail


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
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}',
         "images[0] lacks required field(s) ['file_name', 'width', 'height']"),
        ('{"images": [], "categories": [], "annotations": '
         '[{"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 2]}]}',
         "annotation 4: 'bbox' must be [x, y, width, height]"),
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
