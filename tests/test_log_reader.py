"""serving.log_reader reads back what serving.request_log wrote, image by image."""

from __future__ import annotations

import hashlib

import numpy as np
from tensorflow.core.example import example_pb2

from data import feature_spec as fs
from serving import log_reader
from serving.metrics import Metrics
from serving.model_config import LoggingSettings
from serving.request_log import RequestLogger

IMAGES = [b"\xff\xd8first-jpeg", b"\x89PNGsecond"]


def outputs(batch: int) -> dict[str, np.ndarray]:
    boxes = np.zeros((batch, 3, 4), np.float32)
    boxes[:, 0] = [0.5, 0.6, 0.1, 0.2]  # corners swapped: the reader orders them
    scores = np.zeros((batch, 3), np.float32)
    scores[:, :2] = [0.9, 0.2]
    classes = np.zeros((batch, 3), np.float32)
    classes[:, :2] = [2, 1]
    return {fs.DETECTION_BOXES: boxes, fs.DETECTION_SCORES: scores,
            fs.DETECTION_CLASSES: classes, fs.NUM_DETECTIONS: np.full(batch, 2, np.int32)}


def example(image: bytes, camera: str) -> bytes:
    ex = example_pb2.Example()
    ex.features.feature[fs.IMAGE_ENCODED].bytes_list.value.append(image)
    ex.features.feature[fs.meta_key("camera")].bytes_list.value.append(camera.encode())
    return ex.SerializeToString()


def write(tmp_path, include_images: bool) -> list[str]:
    prefix = str(tmp_path / "logs" / "det")
    logger = RequestLogger("det", LoggingSettings(prefix, 1.0, include_images=include_images),
                           Metrics())
    images = np.array(IMAGES, dtype=object)
    logger.log(3, "serving_default", {"images": images}, outputs(2), b"camera-07",
               request_id="a" * 32, role="primary", route="stable", latency=0.012)
    examples = np.array([example(IMAGES[0], "north")], dtype=object)
    logger.log(4, "serve_examples", {"examples": examples}, outputs(1), request_id="a" * 32,
               role="shadow", route="shadow")
    logger.close()
    return log_reader.log_files([prefix])


def test_reads_fields_images_meta_and_detections(tmp_path):
    read = log_reader.LogRead(write(tmp_path, include_images=True))
    first, second = list(log_reader.read_requests(read))
    assert read.records == 2 and not read.unreadable
    assert (first.model, first.version, first.client_id, first.role, first.route) == (
        "det", 3, "camera-07", "primary", "stable")
    assert abs(first.latency_ms - 12.0) < 1e-9 and first.request_id == "a" * 32
    assert [i.encoded for i in first.images] == IMAGES
    assert [i.digest for i in first.images] == [hashlib.sha256(i).hexdigest() for i in IMAGES]
    assert [i.size for i in first.images] == [len(i) for i in IMAGES]
    found = first.images[1].detections
    np.testing.assert_allclose(found.boxes[0], [0.1, 0.2, 0.5, 0.6])
    assert found.classes.tolist() == [2, 1] and found.above(0.5).classes.tolist() == [2]
    assert (second.role, second.version, second.latency_ms) == ("shadow", 4, None)
    assert second.images[0].encoded == IMAGES[0]
    assert second.images[0].meta == {"camera": "north"}


def test_redacted_images_read_as_absent_with_digests_kept(tmp_path):
    read = log_reader.LogRead(write(tmp_path, include_images=False))
    first, second = list(log_reader.read_requests(read))
    assert [i.encoded for i in first.images + second.images] == [None, None, None]
    assert first.images[0].digest == hashlib.sha256(IMAGES[0]).hexdigest()
    assert second.images[0].meta == {"camera": "north"}


def test_partial_file_keeps_what_precedes_and_names_the_file(tmp_path):
    files = write(tmp_path, include_images=False)
    with open(files[0], "ab") as f:
        f.write(b"\x10\x00\x00")  # a record cut short while being written
    read = log_reader.LogRead(files)
    assert len(list(log_reader.read_requests(read))) == 2
    assert len(read.unreadable) == 1 and files[0] in read.unreadable[0]
