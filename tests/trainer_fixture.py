"""Tiny GZIP TFRecord splits of Sightline tf.Examples, shared by the trainer tests."""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from data import feature_spec as fs

CLASS_NAMES = ["square", "bar"]


def _encode(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format.upper())
    return buffer.getvalue()


def make_example(rng: np.random.Generator, index: int) -> tf.train.Example:
    """A noisy image with 1-2 filled rectangles; every other image is PNG."""
    height, width = int(rng.integers(80, 120)), int(rng.integers(80, 120))
    pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 3))):
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        label = int(rng.integers(1, 3))
        pixels[y : y + h, x : x + w] = (230, 40, 40) if label == 1 else (40, 40, 230)
        boxes.append((y / height, x / width, (y + h) / height, (x + w) / width))
        labels.append(label)
    image_format = "png" if index % 2 else "jpeg"
    return fs.build_example(
        encoded=_encode(pixels, image_format), image_format=image_format, height=height,
        width=width, source_id=str(index), boxes=boxes, labels=labels,
        texts=[CLASS_NAMES[i - 1] for i in labels],
    )


def write_split(directory: str, examples: list[tf.train.Example]) -> str:
    """Writes one GZIP TFRecord file; returns the split's glob, as TFX passes it."""
    os.makedirs(directory)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(directory, "data.gz"), options) as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    return os.path.join(directory, "*")
