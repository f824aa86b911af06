"""Sampled request logs: TF Serving ``PredictionLog`` records in size-rotated TFRecord files.

What a record holds (``tensorflow_serving.apis.prediction_log_pb2.PredictionLog``):

- ``log_metadata``: ``model_spec`` (name, the version that answered, signature_name),
  ``sampling_config.sampling_rate``, ``timestamp_secs``.
- ``predict_log.request``: the request's inputs as TensorProtos, its ``model_spec`` and
  ``client_id``; ``predict_log.response``: the outputs and ``model_spec``.
- Client metadata: a gRPC request's own ``PredictRequest.client_id``, or the
  ``sightline-client-id`` gRPC metadata key / ``Sightline-Client-Id`` HTTP header
  (e.g. a camera id), lands in ``predict_log.request.client_id`` (at most 256 bytes).

Images. A DT_STRING input named ``examples`` holds serialized tf.Examples whose
``image/encoded`` bytes are the images; any other DT_STRING input's elements are
encoded images. Unless the operator passes ``--request_log_include_images``, each image
is replaced, in place, by the ASCII string ``sightline-redacted;sha256=<64 lowercase hex
digits>;bytes=<decimal size>`` (``REDACTED_FORMAT``), inside the re-serialized Example
for ``examples``. Always, with or without images, the request gets two more inputs
per such input ``<name>``: ``<name>:sha256`` (DT_STRING [batch], the hex digests) and
``<name>:bytes`` (DT_INT64 [batch], the sizes), in request order. Signature input names
never contain ':', so a replay tool drops inputs whose name does.

Request-level fields (Sightline's; absent from records written before them), as more
inputs whose names contain ':' (``REQUEST_FIELDS``), each a [1] tensor:
``sightline:request_id`` (DT_STRING, 32 hex digits; a request and its shadow copy share
it), ``sightline:role`` (``primary`` or ``shadow``), ``sightline:route`` (how the
version was chosen: ``version``, ``label:<label>``, ``stable``, ``canary``, ``latest``,
or ``shadow``) and ``sightline:latency_ms`` (DT_DOUBLE: arrival to answer for a primary,
queueing to answer for a shadow copy). ``log_metadata.model_spec.version`` is the version
that answered.

Files are ``<filename_prefix>-<UTC start time>-<sequence>.tfrecord``; a file is closed
and a new one started before it would pass ``max_bytes``. Writing happens on one
background thread fed by a bounded queue: a request never waits for the disk, and
when the queue is full the record is dropped and counted
(``sightline_serving_request_log_records{outcome="dropped"}``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass

import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving import tensors
from serving.metrics import Metrics
from serving.model_config import LoggingSettings
from serving.tfrecord import frame

REDACTED_FORMAT = "sightline-redacted;sha256={sha256};bytes={size}"
EXAMPLES_INPUT = "examples"
IMAGE_FEATURE = "image/encoded"
CLIENT_ID_HEADER = "sightline-client-id"  # HTTP header and gRPC metadata key
MAX_CLIENT_ID = 256
QUEUE_SIZE = 1024
REQUEST_ID, ROLE, ROUTE, LATENCY_MS = ("sightline:request_id", "sightline:role",
                                       "sightline:route", "sightline:latency_ms")
REQUEST_FIELDS = (REQUEST_ID, ROLE, ROUTE, LATENCY_MS)
log = logging.getLogger("sightline.serving")


@dataclass
class _Entry:
    version: int
    signature: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    client_id: bytes
    timestamp: float
    request_id: str = ""
    role: str = ""
    route: str = ""
    latency: float | None = None  # seconds


def _image_stats(image: bytes) -> tuple[str, int]:
    return hashlib.sha256(image).hexdigest(), len(image)


def _redacted(image: bytes) -> bytes:
    digest, size = _image_stats(image)
    return REDACTED_FORMAT.format(sha256=digest, size=size).encode("ascii")


def prepare_inputs(inputs: dict[str, np.ndarray], include_images: bool
                   ) -> dict[str, np.ndarray]:
    """The logged inputs: images redacted unless asked, plus digest and size tensors."""
    out = dict(inputs)
    for name, array in inputs.items():
        if array.dtype != object:
            continue
        flat = array.ravel()
        digests, sizes, kept = [], [], []
        for value in flat:
            if name == EXAMPLES_INPUT:
                example = example_pb2.Example.FromString(value)
                feature = example.features.feature.get(IMAGE_FEATURE)
                images = list(feature.bytes_list.value) if feature is not None else []
                image = images[0] if images else b""
                if not include_images and images:
                    del feature.bytes_list.value[:]
                    feature.bytes_list.value.extend(_redacted(i) for i in images)
                    value = example.SerializeToString()
            else:
                image = value
                if not include_images:
                    value = _redacted(image)
            digest, size = _image_stats(image)
            digests.append(digest.encode("ascii"))
            sizes.append(size)
            kept.append(value)
        redacted = np.empty(len(kept), dtype=object)
        redacted[:] = kept
        out[name] = redacted.reshape(array.shape)
        digest_array = np.empty(len(digests), dtype=object)
        digest_array[:] = digests
        out[f"{name}:sha256"] = digest_array.reshape(array.shape)
        out[f"{name}:bytes"] = np.asarray(sizes, dtype=np.int64).reshape(array.shape)
    return out


class RequestLogger:
    """One model's request log writer."""

    def __init__(self, model: str, settings: LoggingSettings, metrics: Metrics,
                 seed: int | None = None):
        self.model = model
        self.settings = settings
        self._metrics = metrics
        self._random = random.Random(seed)
        self._queue: queue.Queue[_Entry | None] = queue.Queue(QUEUE_SIZE)
        self._file = None
        self._file_bytes = 0
        self._sequence = 0
        self._started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        directory = os.path.dirname(settings.filename_prefix)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name=f"reqlog-{model}", daemon=True)
        self._thread.start()

    def sample(self) -> bool:
        return self._random.random() < self.settings.sampling_rate

    def log(self, version: int, signature: str, inputs: dict[str, np.ndarray],
            outputs: dict[str, np.ndarray], client_id: bytes = b"", *, request_id: str = "",
            role: str = "", route: str = "", latency: float | None = None) -> None:
        """Queues one answered request; never blocks, never raises."""
        entry = _Entry(version, signature, inputs, outputs, client_id[:MAX_CLIENT_ID],
                       time.time(), request_id, role, route, latency)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._metrics.log_records.labels(self.model, "dropped").inc()

    def record(self, entry: _Entry) -> prediction_log_pb2.PredictionLog:
        record = prediction_log_pb2.PredictionLog()
        meta = record.log_metadata
        meta.model_spec.name = self.model
        meta.model_spec.version.value = entry.version
        meta.model_spec.signature_name = entry.signature
        meta.sampling_config.sampling_rate = self.settings.sampling_rate
        meta.timestamp_secs = int(entry.timestamp)
        request = record.predict_log.request
        request.model_spec.CopyFrom(meta.model_spec)
        if entry.client_id:
            request.client_id = entry.client_id
        for name, array in prepare_inputs(entry.inputs, self.settings.include_images).items():
            request.inputs[name].CopyFrom(tensors.to_proto(array))
        for name, value in ((REQUEST_ID, entry.request_id), (ROLE, entry.role),
                            (ROUTE, entry.route)):
            if value:
                request.inputs[name].CopyFrom(tensors.to_proto(
                    np.array([value.encode()], dtype=object)))
        if entry.latency is not None:
            request.inputs[LATENCY_MS].CopyFrom(tensors.to_proto(
                np.array([entry.latency * 1000.0], dtype=np.float64)))
        response = record.predict_log.response
        response.model_spec.CopyFrom(meta.model_spec)
        for name, array in entry.outputs.items():
            response.outputs[name].CopyFrom(tensors.to_proto(array))
        return record

    def _loop(self) -> None:
        while (entry := self._queue.get()) is not None:
            try:
                self._write(frame(self.record(entry).SerializeToString()))
                self._metrics.log_records.labels(self.model, "written").inc()
            except Exception:
                log.exception("request log: cannot write a record for %s", self.model)
                self._metrics.log_records.labels(self.model, "error").inc()
            if self._queue.empty() and self._file is not None:
                self._file.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, data: bytes) -> None:
        if self._file is not None and self._file_bytes + len(data) > self.settings.max_bytes:
            self._file.close()
            self._file = None
        if self._file is None:
            self._sequence += 1
            path = (f"{self.settings.filename_prefix}-{self._started}-"
                    f"{self._sequence:05d}.tfrecord")
            self._file = open(path, "ab")
            self._file_bytes = 0
        self._file.write(data)
        self._file_bytes += len(data)

    def close(self, timeout: float = 30.0) -> None:
        """Writes what is queued, closes the file and stops the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("request log for %s: queue did not drain; records lost", self.model)
            return
        self._thread.join(timeout)
