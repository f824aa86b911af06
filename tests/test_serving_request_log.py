"""Request logs: PredictionLog TFRecords, sampling, image redaction, rotation, never blocking."""

from __future__ import annotations

import glob
import hashlib
import http.client
import json
import threading
import time

import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving import request_log
from serving.metrics import Metrics
from serving.model_config import LoggingSettings
from tests import serving_fixture as sf


def read_logs(prefix: str) -> list[prediction_log_pb2.PredictionLog]:
    import tensorflow as tf

    files = sorted(glob.glob(f"{prefix}-*.tfrecord"))
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files)]


def redacted(image: bytes) -> bytes:
    return (f"sightline-redacted;sha256={hashlib.sha256(image).hexdigest()};"
            f"bytes={len(image)}").encode()


def test_server_logs_readable_prediction_logs_with_images_redacted(tmp_path):
    import tensorflow as tf

    base = tmp_path / "det"
    sf.copy_version(sf.exported_model(0), base, 1)
    prefix = str(tmp_path / "logs" / "det")
    server = sf.make_server([sf.model("det", base, logging=LoggingSettings(prefix, 1.0))])
    images = [sf.encode_image(31), sf.encode_image(32, "PNG")]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        conn.request("POST", "/v1/models/det:predict",
                     json.dumps({"instances": [sf.b64(i) for i in images]}),
                     {"Sightline-Client-Id": "camera-07"})
        response = conn.getresponse()
        assert response.status == 200
        body = json.loads(response.read())
        conn.request("POST", "/v1/models/det:predict", json.dumps({"instances": [1]}))
        assert conn.getresponse().status == 400  # errors are not logged
        conn.close()
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest(client_id=b"camera-09")
        request.model_spec.name = "det"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images[:1]))
        stub.Predict(request, timeout=30)
        request.ClearField("client_id")
        stub.Predict(request, timeout=30, metadata=[("sightline-client-id", "camera-03")])
        channel.close()
    finally:
        server.stop()  # flushes the log
    record, *grpc_records = read_logs(prefix)
    assert [r.predict_log.request.client_id for r in grpc_records] == [b"camera-09",
                                                                       b"camera-03"]
    spec = record.log_metadata.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("det", 1, "serving_default")
    assert record.log_metadata.sampling_config.sampling_rate == 1.0
    assert abs(record.log_metadata.timestamp_secs - time.time()) < 120
    request = record.predict_log.request
    assert request.client_id == b"camera-07"
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    assert sorted(inputs) == ["images", "images:bytes", "images:sha256",
                              "sightline:latency_ms", "sightline:request_id",
                              "sightline:role", "sightline:route"]
    assert inputs["sightline:role"].tolist() == [b"primary"]
    assert inputs["sightline:route"].tolist() == [b"latest"]  # no stable label here
    assert len(inputs["sightline:request_id"][0]) == 32
    assert 0 < inputs["sightline:latency_ms"][0] < 30000
    assert inputs["images"].tolist() == [redacted(i) for i in images]
    assert inputs["images:sha256"].tolist() == [hashlib.sha256(i).hexdigest().encode()
                                                for i in images]
    assert inputs["images:bytes"].tolist() == [len(i) for i in images]
    outputs = {k: tf.make_ndarray(v) for k, v in record.predict_log.response.outputs.items()}
    scores = np.array([row["detection_scores"] for row in body["predictions"]], np.float32)
    assert outputs["detection_scores"].tobytes() == scores.tobytes()
    assert record.predict_log.response.model_spec.version.value == 1


def entry_inputs(images: list[bytes], name: str = "images") -> dict[str, np.ndarray]:
    array = np.empty(len(images), dtype=object)
    array[:] = images
    return {name: array}


def test_include_images_keeps_bytes_and_still_records_digests(tmp_path):
    metrics = Metrics()
    prefix = str(tmp_path / "m")
    logger = request_log.RequestLogger("m", LoggingSettings(prefix, 1.0, include_images=True),
                                       metrics)
    image = sf.encode_image(33)
    logger.log(4, "serving_default", entry_inputs([image]), {"y": np.zeros((1, 2), np.float32)})
    logger.close()
    (record,) = read_logs(prefix)
    inputs = record.predict_log.request.inputs
    assert inputs["images"].string_val == [image]
    assert inputs["images:sha256"].string_val == [hashlib.sha256(image).hexdigest().encode()]
    assert inputs["images:bytes"].int64_val == [len(image)]


def test_tf_examples_have_their_image_redacted_inside(tmp_path):
    from data import feature_spec as fs

    image = sf.encode_image(34)
    example = fs.build_example(encoded=image, image_format="jpeg", height=40, width=48,
                               source_id="7", boxes=[], labels=[], texts=[])
    logged = request_log.prepare_inputs(entry_inputs([example.SerializeToString()],
                                                     "examples"), include_images=False)
    kept = example_pb2.Example.FromString(logged["examples"][0])
    assert kept.features.feature["image/encoded"].bytes_list.value == [redacted(image)]
    assert kept.features.feature["image/source_id"].bytes_list.value == [b"7"]
    assert logged["examples:bytes"].tolist() == [len(image)]


def test_sampling_rate_is_respected():
    logger = request_log.RequestLogger.__new__(request_log.RequestLogger)
    import random

    logger._random = random.Random(5)
    logger.settings = LoggingSettings("unused", 0.2)
    rate = sum(logger.sample() for _ in range(5000)) / 5000
    assert 0.18 < rate < 0.22
    logger.settings = LoggingSettings("unused", 0.0)
    assert not any(logger.sample() for _ in range(1000))


def test_files_rotate_by_size_and_every_record_survives(tmp_path):
    metrics = Metrics()
    prefix = str(tmp_path / "r")
    logger = request_log.RequestLogger("r", LoggingSettings(prefix, 1.0, max_bytes=4000),
                                       metrics)
    for i in range(30):
        logger.log(1, "serving_default", entry_inputs([bytes([i]) * 50]),
                   {"y": np.full((1, 20), i, np.float32)})
    logger.close()
    files = sorted(glob.glob(f"{prefix}-*.tfrecord"))
    assert len(files) > 3
    import os

    assert all(os.path.getsize(f) <= 4000 for f in files)
    records = read_logs(prefix)
    import tensorflow as tf

    assert [int(tf.make_ndarray(r.predict_log.response.outputs["y"])[0, 0]) for r in records] \
        == list(range(30))


def test_a_stuck_disk_drops_and_counts_instead_of_blocking(tmp_path, monkeypatch):
    metrics = Metrics()
    logger = request_log.RequestLogger("s", LoggingSettings(str(tmp_path / "s"), 1.0), metrics)
    stuck = threading.Event()
    monkeypatch.setattr(logger, "_write", lambda data: stuck.wait(10))
    started = time.monotonic()
    for _ in range(request_log.QUEUE_SIZE + 50):
        logger.log(1, "serving_default", entry_inputs([b"x"]), {})
    assert time.monotonic() - started < 2.0
    dropped = metrics.log_records.labels("s", "dropped")._value.get()
    assert dropped >= 49
    stuck.set()
    logger.close()


@pytest.mark.parametrize("rate", [0.0])
def test_zero_rate_config_writes_nothing(tmp_path, rate):
    from serving.model_config import parse_model_server_config

    models = parse_model_server_config(f"""model_config_list {{ config {{
        name: "det" base_path: "{tmp_path}"
        logging_config {{ log_collector_config {{ filename_prefix: "{tmp_path}/x" }}
                          sampling_config {{ sampling_rate: {rate} }} }} }} }}""")
    assert models[0].logging is None
