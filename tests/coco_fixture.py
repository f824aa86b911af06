"""A small COCO dataset with one record of every bad kind, shared by several tests."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
from PIL import Image

GOOD_IMAGES = 8
# Bad records in the fixture, by primary quarantine reason: reason -> number of rows.
BAD_RECORDS = {
    "image_entry_malformed": 2,  # an entry without 'width', and one that is not an object
    "duplicate_image_id": 2,  # both entries sharing the id
    "image_outside_root": 2,  # '../outside.jpg' (the file exists) and an absolute path
    "image_file_missing": 1,
    "image_undecodable": 2,  # a corrupt file and a zero-byte file
    "image_format_unsupported": 1,  # a GIF
    "image_size_mismatch": 1,
    "annotation_unknown_image": 1,  # its image id is not in 'images' (a row of its own)
    # one without 'category_id'; one without 'image_id' (a row of its own)
    "annotation_malformed": 2,
    # 'bbox' of 2 values; and MANY_PROBLEMS_FILE's, whose other annotations break 3 more rules
    "annotation_bbox_malformed": 2,
    "annotation_nonfinite": 2,  # a NaN bbox value and an infinite area
    "annotation_unknown_category": 1,
    "annotation_nonpositive_area": 1,
    "annotation_box_outside_image": 1,
}
ANNOTATION_ROWS = 2  # rows that are annotations of no listed image, not images
MANY_PROBLEMS_FILE = "images/many_problems.jpg"
# Its problems in annotation order: (annotation id offset from its first, reason).
MANY_PROBLEMS = [
    (0, "annotation_bbox_malformed"),
    (1, "annotation_nonfinite"),
    (2, "annotation_unknown_category"),
    (2, "annotation_box_outside_image"),
]
OUTSIDE_FILE = "../outside.jpg"  # relative to the dataset folder, which holds the annotations
ABSOLUTE_FILE = "elsewhere/absolute.jpg"  # beside the dataset folder, named by absolute path
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]


def jpeg_bytes(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def gif_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 30, 200)).save(buf, format="GIF")
    return buf.getvalue()


def write_coco(root: pathlib.Path, images: list, annotations: list, files: dict,
               name: str = "annotations.json") -> pathlib.Path:
    """Writes the files (paths relative to root) and the annotations file (NaN allowed)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for file_name, payload in files.items():
        path = root / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return path


def make_bad_coco(root: pathlib.Path) -> pathlib.Path:
    """GOOD_IMAGES good images plus the BAD_RECORDS; returns the annotations path."""
    images, annotations, files = [], [], {}

    def add_image(image_id, name, size=(64, 48), payload=None, **meta):
        w, h = size
        images.append({"id": image_id, "file_name": name, "width": w, "height": h, **meta})
        files[name] = jpeg_bytes(w, h, image_id) if payload is None else payload

    def add_box(image_id, bbox, category_id=1, **fields):
        area = bbox[2] * bbox[3] if isinstance(bbox, list) and len(bbox) == 4 else 1.0
        annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                            "category_id": category_id, "bbox": bbox, "area": area,
                            "iscrowd": 0, **fields})

    for i in range(1, GOOD_IMAGES + 1):
        add_image(i, f"images/good{i}.jpg", camera="cam-a", lighting="day")
        add_box(i, [4.0, 4.0, 20.0, 16.0], category_id=1 + i % 2)
    add_image(101, "images/corrupt.jpg", payload=b"not a jpeg at all")
    add_box(101, [1, 1, 5, 5])
    add_image(102, "images/empty.jpg", payload=b"")
    add_box(102, [1, 1, 5, 5])
    add_image(103, "images/mismatch.jpg", size=(64, 48), payload=jpeg_bytes(32, 32, 103))
    add_box(103, [1, 1, 5, 5])
    add_image(104, "images/outside.jpg")
    add_box(104, [50.0, 10.0, 30.0, 10.0])  # x + w = 80 > 64
    add_image(105, "images/zero_area.jpg")
    add_box(105, [5.0, 5.0, 0.0, 10.0])
    add_image(106, "images/unknown_cat.jpg")
    add_box(106, [5.0, 5.0, 10.0, 10.0], category_id=9)
    add_image(107, "images/dup_a.jpg")
    add_image(107, "images/dup_b.jpg")
    add_box(107, [5, 5, 10, 10])
    add_box(999, [5, 5, 10, 10])  # image 999 does not exist
    add_image(108, "images/not_there.jpg")
    del files["images/not_there.jpg"]
    add_box(108, [1, 1, 5, 5])
    add_image(109, "images/animated.gif", payload=gif_bytes(64, 48))
    add_box(109, [1, 1, 5, 5])
    add_image(110, "images/nan_box.jpg")
    add_box(110, [5.0, float("nan"), 10.0, 10.0])
    add_image(111, "images/inf_area.jpg")
    add_box(111, [5.0, 5.0, 10.0, 10.0], area=float("inf"))
    add_image(112, "images/short_bbox.jpg")
    add_box(112, [5.0, 5.0])
    add_image(113, MANY_PROBLEMS_FILE)
    add_box(113, ["5", 5, 10, 10])
    add_box(113, [5.0, 5.0, float("-inf"), 10.0])
    add_box(113, [60.0, 5.0, 10.0, 10.0], category_id=7)
    add_image(114, "images/no_category.jpg")
    add_box(114, [5.0, 5.0, 10.0, 10.0])
    del annotations[-1]["category_id"]
    add_box(114, [5.0, 5.0, 10.0, 10.0])
    del annotations[-1]["image_id"]  # belongs to no image: a row of its own
    add_image(115, "images/no_width.jpg")
    del images[-1]["width"]
    add_box(115, [5.0, 5.0, 10.0, 10.0])
    images.append(None)  # an entry that is not an object
    # Names leading outside the dataset folder; the files exist, so only the rule stops them.
    (root.parent / "elsewhere").mkdir(parents=True, exist_ok=True)
    (root.parent / OUTSIDE_FILE.removeprefix("../")).write_bytes(jpeg_bytes(64, 48, 116))
    add_image(116, OUTSIDE_FILE, payload=b"")
    del files[OUTSIDE_FILE]
    add_box(116, [5.0, 5.0, 10.0, 10.0])
    absolute = root.parent / ABSOLUTE_FILE
    absolute.write_bytes(jpeg_bytes(64, 48, 117))
    add_image(117, str(absolute), payload=b"")
    del files[str(absolute)]
    add_box(117, [5.0, 5.0, 10.0, 10.0])
    return write_coco(root, images, annotations, files)
