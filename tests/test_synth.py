"""Tests for the synthetic COCO generator: format, determinism, and that scenarios shift
the distribution the way drift tests downstream rely on."""

from __future__ import annotations

import collections
import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from data import synth

COCO_SMALL, COCO_LARGE = 32**2, 96**2


def _load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def _by_image(coco: dict) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = collections.defaultdict(list)
    for ann in coco["annotations"]:
        grouped[ann["image_id"]].append(ann)
    return grouped


def _mean_brightness(root: pathlib.Path, coco: dict) -> float:
    images = (Image.open(root / im["file_name"]).convert("L") for im in coco["images"])
    return float(np.mean([np.asarray(image).mean() for image in images]))


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """200 default images: enough for the size-range and long-tail statistics."""
    path = synth.generate(tmp_path_factory.mktemp("default"), 200, seed=0)
    return path.parent, _load(path)


def test_writes_valid_coco(default_set):
    root, coco = default_set
    assert set(coco) == {"info", "images", "categories", "annotations"}
    assert coco["info"]["scenario"] == "default" and coco["info"]["seed"] == 0
    assert coco["categories"] == [
        {"id": i, "name": name, "supercategory": "shape"}
        for i, name in enumerate(synth.CLASS_NAMES, start=1)
    ]
    image_ids = [im["id"] for im in coco["images"]]
    assert image_ids == list(range(1, 201))
    for im in coco["images"]:
        assert im["file_name"] == f"images/{im['id']:06d}.jpg"
        with Image.open(root / im["file_name"]) as jpeg:
            assert jpeg.format == "JPEG"
            assert jpeg.size == (im["width"], im["height"])
        assert 256 <= im["width"] <= 384 and 256 <= im["height"] <= 384
        assert im["camera"] in {"cam-a", "cam-b", "cam-c"}
        assert im["lighting"] in {"day", "dusk", "night"}

    ann_ids = [a["id"] for a in coco["annotations"]]
    assert ann_ids == list(range(1, len(ann_ids) + 1))
    category_ids = {c["id"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        assert ann["image_id"] in set(image_ids)
        assert ann["category_id"] in category_ids
        assert ann["iscrowd"] == 0
        assert all(isinstance(v, float) for v in ann["bbox"]) and isinstance(ann["area"], float)
    per_image = collections.Counter(a["image_id"] for a in coco["annotations"])
    assert set(per_image) == set(image_ids)  # every image has objects...
    assert max(per_image.values()) <= 8  # ...and at most 8


def test_boxes_are_inside_their_image_and_hold_their_area(default_set):
    _, coco = default_set
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert w > 0 and h > 0
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        # The area is the object's pixel count: positive, at most the box, and for these
        # filled shapes (even occluded ones) a sizeable part of it.
        assert 0.15 * w * h <= ann["area"] <= w * h


def test_all_coco_size_ranges_appear(default_set):
    _, coco = default_set
    areas = np.array([a["area"] for a in coco["annotations"]])
    shares = [
        np.mean(areas < COCO_SMALL),
        np.mean((areas >= COCO_SMALL) & (areas < COCO_LARGE)),
        np.mean(areas >= COCO_LARGE),
    ]
    assert all(share >= 0.1 for share in shares), shares


def test_class_frequencies_are_long_tailed(default_set):
    _, coco = default_set
    counts = collections.Counter(a["category_id"] for a in coco["annotations"])
    assert set(counts) == set(range(1, 7))
    assert counts[1] > counts[2] > counts[4] > counts[6]
    assert counts[1] > 3 * counts[6]


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    first = synth.generate(tmp_path / "a", 5, seed=7)
    again = synth.generate(tmp_path / "b", 5, seed=7, progress=io.StringIO())
    other = synth.generate(tmp_path / "c", 5, seed=8)
    assert first.read_bytes() == again.read_bytes()
    jpegs = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert len(jpegs) == 5
    for name in jpegs:
        assert (tmp_path / "a/images" / name).read_bytes() == (
            tmp_path / "b/images" / name
        ).read_bytes()
        assert (tmp_path / "a/images" / name).read_bytes() != (
            tmp_path / "c/images" / name
        ).read_bytes()
    assert _load(first)["annotations"] != _load(other)["annotations"]


def test_an_image_depends_only_on_seed_and_id(tmp_path):
    batch = synth.generate(tmp_path / "batch", 3, seed=1)
    alone = synth.generate(tmp_path / "alone", 1, seed=1, first_image_id=3)
    name = "images/000003.jpg"
    assert (batch.parent / name).read_bytes() == (alone.parent / name).read_bytes()
    boxes = [a["bbox"] for a in _load(batch)["annotations"] if a["image_id"] == 3]
    assert boxes == [a["bbox"] for a in _load(alone)["annotations"]]


def test_night_heavy_is_darker(tmp_path):
    default = synth.generate(tmp_path / "day", 40, seed=3)
    night = synth.generate(tmp_path / "night", 40, seed=3, scenario="night_heavy")
    night_coco = _load(night)
    lighting = collections.Counter(im["lighting"] for im in night_coco["images"])
    assert lighting["night"] > 20
    default_brightness = _mean_brightness(default.parent, _load(default))
    night_brightness = _mean_brightness(night.parent, night_coco)
    assert night_brightness < 0.75 * default_brightness, (night_brightness, default_brightness)


def test_new_camera_introduces_cam_d(tmp_path):
    new = _load(synth.generate(tmp_path / "new", 20, seed=0, scenario="new_camera"))
    old = _load(synth.generate(tmp_path / "old", 20, seed=0))
    cameras = collections.Counter(im["camera"] for im in new["images"])
    assert cameras["cam-d"] >= 8
    assert "cam-d" not in {im["camera"] for im in old["images"]}


def test_loose_boxes_pads_only_class_2(tmp_path):
    tight = _load(synth.generate(tmp_path / "tight", 20, seed=5))
    loose = _load(synth.generate(tmp_path / "loose", 20, seed=5, scenario="loose_boxes"))
    assert len(tight["annotations"]) == len(loose["annotations"])
    sizes = {im["id"]: (im["width"], im["height"]) for im in loose["images"]}
    grown = 0
    for t, lo in zip(tight["annotations"], loose["annotations"], strict=True):
        assert (t["image_id"], t["category_id"], t["area"]) == (
            lo["image_id"],
            lo["category_id"],
            lo["area"],
        )
        if t["category_id"] != 2:
            assert lo["bbox"] == t["bbox"]
            continue
        (tx, ty, tw, th), (lx, ly, lw, lh) = t["bbox"], lo["bbox"]
        width, height = sizes[lo["image_id"]]
        assert lx <= tx and ly <= ty and lx + lw >= tx + tw and ly + lh >= ty + th
        assert lx >= 0 and ly >= 0 and lx + lw <= width + 1e-6 and ly + lh <= height + 1e-6
        grown += lw * lh > 1.2 * tw * th
    assert grown >= 3


def test_unknown_class_adds_a_seventh_category(tmp_path):
    known = _load(synth.generate(tmp_path / "known", 60, seed=2))
    unknown = _load(synth.generate(tmp_path / "unknown", 60, seed=2, scenario="unknown_class"))
    assert [c["id"] for c in known["categories"]] == list(range(1, 7))
    assert unknown["categories"][:6] == known["categories"]
    assert unknown["categories"][6] == {"id": 7, "name": "hexagon", "supercategory": "shape"}
    with_new = {a["image_id"] for a in unknown["annotations"] if a["category_id"] == 7}
    assert 1 <= len(with_new) <= 15
    # Images without the new class are exactly the default scenes.
    known_by_image, unknown_by_image = _by_image(known), _by_image(unknown)
    for image_id in {im["id"] for im in known["images"]} - with_new:
        strip = [(a["category_id"], a["bbox"]) for a in known_by_image[image_id]]
        assert strip == [(a["category_id"], a["bbox"]) for a in unknown_by_image[image_id]]


def test_unknown_scenario_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="no_such") as error:
        synth.generate(tmp_path, 1, scenario="no_such")
    for name in synth.SCENARIOS:
        assert name in str(error.value)
    assert set(synth.SCENARIOS) >= {
        "default",
        "night_heavy",
        "new_camera",
        "loose_boxes",
        "unknown_class",
    }
