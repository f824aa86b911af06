"""Reads ``serving.request_log``'s ``PredictionLog`` files back, one image at a time.

The one reader behind ``models compare``, ``monitor``, ``replay`` and ``select``: each
logged request becomes a ``LoggedRequest`` with its Sightline fields (request id, role,
route, latency), the client id, and one ``LoggedImage`` per image in request order with
its SHA-256, size, the image bytes when the server logged them
(``--request_log_include_images``), the ``meta/*`` features of a tf.Example request, and
the detections that were served for it. A file still being written ends in a partial
record: what precedes it is read and the file is listed in ``LogRead.unreadable``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterable, Iterator

import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import prediction_log_pb2

from data import feature_spec as fs
from serving import tensors
from serving.request_log import (
    EXAMPLES_INPUT,
    IMAGE_FEATURE,
    LATENCY_MS,
    REDACTED_FORMAT,
    REQUEST_ID,
    ROLE,
    ROUTE,
)
from serving.tfrecord import read_records

PRIMARY, SHADOW = "primary", "shadow"
_REDACTED_PREFIX = REDACTED_FORMAT.split("{", 1)[0].encode("ascii")


@dataclasses.dataclass
class Detections:
    """One image's served detections, rows past ``num_detections`` dropped."""

    boxes: np.ndarray  # [n, 4] normalized yxyx (detection_boxes), corners in order
    scores: np.ndarray  # [n] float64
    classes: np.ndarray  # [n] int, 1-based

    def above(self, min_score: float) -> Detections:
        keep = self.scores >= min_score
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


@dataclasses.dataclass
class LoggedImage:
    index: int  # position in the request's batch
    digest: str  # SHA-256 hex of the image bytes, "" when the log predates digests
    size: int  # bytes, -1 when unknown
    encoded: bytes | None  # the image itself, None when the server redacted it
    meta: dict[str, str]  # meta/<field> features of a tf.Example request, by field
    detections: Detections


@dataclasses.dataclass
class LoggedRequest:
    model: str
    version: int
    signature: str
    timestamp: int  # seconds since the epoch, as the server logged it
    client_id: str
    request_id: str
    role: str  # PRIMARY or SHADOW
    route: str
    latency_ms: float | None
    images: list[LoggedImage]
    inputs: dict[str, np.ndarray]  # the signature's own inputs (images possibly redacted)


@dataclasses.dataclass
class LogRead:
    """What was read, and what could not be."""

    files: list[str]
    records: int = 0
    unreadable: list[str] = dataclasses.field(default_factory=list)


def log_files(paths: Iterable[str]) -> list[str]:
    """TFRecord files from files, directories, globs or a request-log prefix."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found += glob.glob(os.path.join(path, "*.tfrecord"))
        elif os.path.isfile(path):
            found.append(path)
        else:
            found += glob.glob(path) or glob.glob(f"{path}-*.tfrecord")
    return sorted(set(found))


def _records(path: str, read: LogRead) -> Iterator[prediction_log_pb2.PredictionLog]:
    try:
        with open(path, "rb") as f:
            for data in read_records(f):
                yield prediction_log_pb2.PredictionLog.FromString(data)
    except (OSError, ValueError) as e:  # a file being written ends in a partial record
        read.unreadable.append(f"{path}: {e}")


def read_requests(read: LogRead) -> Iterator[LoggedRequest]:
    """Every request in ``read.files``, file by file, in the order it was logged."""
    for path in read.files:
        for record in _records(path, read):
            read.records += 1
            yield parse_record(record)


def _text(inputs: dict[str, np.ndarray], key: str) -> str:
    value = inputs.get(key)
    return value.ravel()[0].decode() if value is not None and value.size else ""


def parse_record(record: prediction_log_pb2.PredictionLog) -> LoggedRequest:
    spec = record.log_metadata.model_spec
    request = record.predict_log.request
    fields = {k: tensors.from_proto(v) for k, v in request.inputs.items() if ":" in k}
    inputs = {k: tensors.from_proto(v) for k, v in request.inputs.items() if ":" not in k}
    outputs = {k: tensors.from_proto(v) for k, v in record.predict_log.response.outputs.items()}
    latency = fields.get(LATENCY_MS)
    return LoggedRequest(
        model=spec.name, version=spec.version.value, signature=spec.signature_name,
        timestamp=record.log_metadata.timestamp_secs,
        client_id=request.client_id.decode("utf-8", "replace"),
        request_id=_text(fields, REQUEST_ID), role=_text(fields, ROLE) or PRIMARY,
        route=_text(fields, ROUTE),
        latency_ms=float(latency.ravel()[0]) if latency is not None else None,
        images=_images(inputs, fields, outputs), inputs=inputs)


def _images(inputs: dict[str, np.ndarray], fields: dict[str, np.ndarray],
            outputs: dict[str, np.ndarray]) -> list[LoggedImage]:
    name, values = next(((k, v.ravel()) for k, v in sorted(inputs.items())
                         if v.dtype == object), ("", np.array([], dtype=object)))
    digests = fields.get(f"{name}:sha256", np.array([], dtype=object)).ravel()
    sizes = fields.get(f"{name}:bytes", np.array([], dtype=np.int64)).ravel()
    detections = served_detections(outputs)
    images = []
    for i, found in enumerate(detections):
        value = values[i] if i < len(values) else b""
        encoded, meta = _unpack(value) if name == EXAMPLES_INPUT else (value, {})
        if encoded is not None and (not encoded or encoded.startswith(_REDACTED_PREFIX)):
            encoded = None
        images.append(LoggedImage(
            index=i, digest=digests[i].decode() if i < len(digests) else "",
            size=int(sizes[i]) if i < len(sizes) else -1, encoded=encoded, meta=meta,
            detections=found))
    return images


def _unpack(serialized: bytes) -> tuple[bytes | None, dict[str, str]]:
    """A tf.Example request's image bytes and meta/<field> values."""
    features = example_pb2.Example.FromString(serialized).features.feature
    image = features.get(IMAGE_FEATURE)
    encoded = image.bytes_list.value[0] if image is not None and image.bytes_list.value else None
    meta = {key[len(fs.META_PREFIX):]: value.bytes_list.value[0].decode("utf-8", "replace")
            for key, value in features.items()
            if key.startswith(fs.META_PREFIX) and value.bytes_list.value}
    return encoded, meta


def served_detections(outputs: dict[str, np.ndarray]) -> list[Detections]:
    """Per image of a batch, the detection outputs as Detections (rows past the count dropped)."""
    if fs.DETECTION_SCORES not in outputs:
        return []
    scores = np.asarray(outputs[fs.DETECTION_SCORES], np.float64)
    batch = scores.shape[0]
    boxes = np.asarray(outputs[fs.DETECTION_BOXES], np.float64).reshape(batch, -1, 4)
    classes = np.asarray(outputs[fs.DETECTION_CLASSES]).reshape(batch, -1)
    counts = np.asarray(outputs.get(fs.NUM_DETECTIONS, np.full(batch, scores.shape[1])))
    found = []
    for i in range(batch):
        n = int(counts.ravel()[i])
        kept = boxes[i, :n]  # corners put in order: a model's output, not a claim
        kept = np.concatenate([np.minimum(kept[:, :2], kept[:, 2:]),
                               np.maximum(kept[:, :2], kept[:, 2:])], axis=1)
        found.append(Detections(kept, scores[i, :n], np.rint(classes[i, :n]).astype(int)))
    return found
