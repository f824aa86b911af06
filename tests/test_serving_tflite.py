"""``--backend tflite``: an edge bundle served with the SavedModel's signature and outputs."""

from __future__ import annotations

import http.client
import json
import shutil

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.tflite_runner import TFLiteDetector
from tests import serving_fixture as sf


def start(tmp_path_factory, bundle: str):
    base = tmp_path_factory.mktemp("edge") / "sightline"
    base.mkdir()
    shutil.copytree(bundle, base / "1")
    return sf.make_server([sf.model("det", base)], backend="tflite", file_system_poll_seconds=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start(tmp_path_factory, sf.tiny_tflite_bundle())
    yield srv
    srv.stop()


def check_equals_detect(server, bundle: str) -> None:
    import tensorflow as tf

    images = [sf.encode_image(41), sf.encode_image(42, "PNG", (90, 60))]
    want = TFLiteDetector(f"{bundle}/model.tflite").detect(images)
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    conn.request("POST", "/v1/models/det:predict",
                 json.dumps({"inputs": {"images": [sf.b64(i) for i in images]}}))
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200, body
    assert sorted(body["outputs"]) == sorted(want)
    for key in want:
        got = np.array(body["outputs"][key], dtype=want[key].dtype)
        assert got.tobytes() == want[key].tobytes(), key

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "det"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    channel.close()
    for key in want:
        assert tf.make_ndarray(reply.outputs[key]).tobytes() == want[key].tobytes(), key


def test_rest_and_grpc_equal_tflite_detector_detect(server):
    check_equals_detect(server, sf.tiny_tflite_bundle())


@pytest.mark.slow  # converting the real detector to TFLite takes ~30 s
def test_the_converted_detector_serves_exactly_what_detect_returns(tmp_path_factory):
    srv = start(tmp_path_factory, sf.tflite_bundle())
    try:
        check_equals_detect(srv, sf.tflite_bundle())
    finally:
        srv.stop()


def test_metadata_and_bad_image(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    conn.request("GET", "/v1/models/det/metadata")
    body = json.loads(conn.getresponse().read())
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["images"]["dtype"] == "DT_STRING"
    detector = TFLiteDetector(f"{sf.tiny_tflite_bundle()}/model.tflite")
    assert sorted(signature["outputs"]) == sorted(detector.output_types())
    conn.request("POST", "/v1/models/det:predict",
                 json.dumps({"instances": [sf.b64(b"GIF89a not really")]}))
    response = conn.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 400 and "cannot decode image" in error
    # A real GIF: refused by this backend as by the SavedModel's (test_serving_rest).
    conn.request("POST", "/v1/models/det:predict",
                 json.dumps({"instances": [sf.b64(sf.encode_image(4, "GIF"))]}))
    response = conn.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 400 and "expected JPEG or PNG" in error
    conn.close()
