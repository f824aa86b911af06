"""A small COCO dataset with one record of every bad kind, shared by several tests."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
from PIL import Image

GOOD_IMAGES = 8
# Bad records in the fixture, by quarantine reason: reason -> number of quarantine rows.
BAD_RECORDS = {
    "unreadable_image": 2,  # a corrupt file and a zero-byte file
    "image_size_mismatch": 1,
    "box_outside_image": 1,
    "nonpositive_area": 1,
    "unknown_category": 1,
    "duplicate_image_id": 2,  # both entries sharing the id
    "missing_image": 1,  # an annotation whose image id is not in 'images'
}
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]


def jpeg_bytes(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_coco(root: pathlib.Path, images: list, annotations: list, files: dict) -> pathlib.Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (root / name).write_bytes(payload)
    path = root / "annotations.json"
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

    def add_box(image_id, bbox, category_id=1):
        annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                            "category_id": category_id, "bbox": bbox,
                            "area": bbox[2] * bbox[3], "iscrowd": 0})

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
    return write_coco(root, images, annotations, files)
