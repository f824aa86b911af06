"""Version lifecycle on a real server: complete-only loads, hot swap, failures, policies."""

from __future__ import annotations

import http.client
import json
import pathlib
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.model_config import parse_model_server_config
from tests import serving_fixture as sf

POLL = 0.1


def rest_status(server, name: str = "det") -> dict[int, tuple[str, str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    conn.request("GET", f"/v1/models/{name}")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return {int(s["version"]): (s["state"], s["status"]["error_code"], s["status"]["error_message"])
            for s in body["model_version_status"]}


def grpc_predict(stub, image: bytes, **spec) -> predict_pb2.PredictResponse:
    import tensorflow as tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "det"
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([image]))
    return stub.Predict(request, timeout=30)


def rest_predict(server, image: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    conn.request("POST", "/v1/models/det:predict",
                 json.dumps({"instances": [sf.b64(image)]}))
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, body


@pytest.fixture
def base(tmp_path) -> pathlib.Path:
    path = tmp_path / "det"
    sf.copy_version(sf.exported_model(0), path, 1)
    return path


def test_half_written_version_waits_for_saved_model_pb_then_swaps_in(base):
    server = sf.make_server([sf.model("det", base)], file_system_poll_seconds=POLL)
    try:
        half = base / "2"
        shutil.copytree(sf.exported_model(1), half,
                        ignore=shutil.ignore_patterns("saved_model.pb"))
        shutil.copytree(sf.exported_model(1), base / ".3.incomplete")  # a staging dir
        shutil.copytree(sf.exported_model(1), base / "4.incomplete")
        time.sleep(10 * POLL)
        assert server.core.manager("det").available_versions() == [1]
        assert rest_status(server) == {1: ("AVAILABLE", "OK", "")}
        shutil.copyfile(pathlib.Path(sf.exported_model(1)) / "saved_model.pb",
                        half / "saved_model.pb")
        sf.wait_for(lambda: server.core.manager("det").available_versions() == [2])
        assert rest_status(server) == {2: ("AVAILABLE", "OK", ""), 1: ("END", "OK", "")}
        image = sf.encode_image(11)
        status, body = rest_predict(server, image)
        want = sf.reference_outputs(sf.exported_model(1), [image])
        assert status == 200
        got = np.array(body["predictions"][0]["detection_scores"], dtype=np.float32)
        assert got.tobytes() == want["detection_scores"][0].tobytes()  # version 2's weights
    finally:
        server.stop()


def test_hot_swap_under_concurrent_load_loses_no_request(base):
    new_export = sf.exported_model(1)  # export before the load starts, not during it
    server = sf.make_server([sf.model("det", base)], file_system_poll_seconds=POLL)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    image = sf.encode_image(12)
    failures, versions, stop = [], [], threading.Event()

    def client(use_grpc: bool) -> None:
        deadline = time.monotonic() + 60  # bounded even if the swap never happens
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if use_grpc:
                    sent = time.monotonic()
                    version = grpc_predict(stub, image).model_spec.version.value
                    versions.append((sent, time.monotonic(), version))
                else:
                    status, body = rest_predict(server, image)
                    if status != 200:
                        failures.append((status, body))
            except grpc.RpcError as e:
                failures.append((e.code(), e.details()))

    threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        sf.copy_version(new_export, base, 2)
        sf.wait_for(lambda: rest_status(server).get(1, ("",))[0] == "END")
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        assert failures == []
        answered = [v for _, _, v in versions]
        assert answered.count(1) > 0 and answered.count(2) > 0
        first_new = min(done for _, done, v in versions if v == 2)
        # Once version 2 has answered, no request sent afterwards goes to version 1.
        assert {v for sent, _, v in versions if sent > first_new} == {2}
        want = sf.reference_outputs(sf.exported_model(1), [image])
        got = grpc_predict(stub, image)
        import tensorflow as tf

        assert tf.make_ndarray(got.outputs["detection_boxes"]).tobytes() == \
            want["detection_boxes"].tobytes()
    finally:
        stop.set()
        channel.close()
        server.stop()


def test_broken_version_is_reported_and_the_old_one_keeps_serving(base):
    server = sf.make_server([sf.model("det", base)], file_system_poll_seconds=POLL)
    try:
        broken = base / "5"
        shutil.copytree(sf.exported_model(0), broken)
        (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        sf.wait_for(lambda: rest_status(server).get(5, ("",))[0] == "END")
        status = rest_status(server)
        state, code, message = status[5]
        assert code != "OK" and "DecodeError" in message, status
        assert status[1] == ("AVAILABLE", "OK", "")
        assert server.core.manager("det").available_versions() == [1]
        assert rest_predict(server, sf.encode_image(13))[0] == 200
        text = server.metrics.render().decode()
        assert 'sightline_serving_model_loads_total{model="det",outcome="failure"} 1.0' in text
        # Fixing the version (a new saved_model.pb) loads it.
        shutil.copyfile(pathlib.Path(sf.exported_model(1)) / "saved_model.pb",
                        broken / "saved_model.pb")
        sf.wait_for(lambda: server.core.manager("det").available_versions() == [5])
    finally:
        server.stop()


def test_version_policies_and_labels_resolve_like_tf_serving(base):
    for version in (2, 3):
        sf.copy_version(sf.exported_model(version % 2), base, version)
    config = f"""
    model_config_list {{
      config {{
        name: "det"
        base_path: "{base}"
        model_platform: "tensorflow"
        model_version_policy {{ specific {{ versions: 1 versions: 3 }} }}
        version_labels {{ key: "stable" value: 1 }}
        version_labels {{ key: "canary" value: 3 }}
      }}
    }}"""
    server = sf.make_server(parse_model_server_config(config), file_system_poll_seconds=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    image = sf.encode_image(14)
    try:
        manager = server.core.manager("det")
        assert manager.available_versions() == [1, 3]
        # Sightline routes a request naming no version or label to "stable" when that
        # label exists (TF Serving: the latest available version, here 3).
        assert grpc_predict(stub, image).model_spec.version.value == 1
        assert grpc_predict(stub, image, label="stable").model_spec.version.value == 1
        assert grpc_predict(stub, image, label="canary").model_spec.version.value == 3
        with pytest.raises(grpc.RpcError) as error:
            grpc_predict(stub, image, version=2)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        latest_two = config.replace("specific { versions: 1 versions: 3 }",
                                    "latest { num_versions: 2 }")
        latest_two = latest_two.replace('key: "stable" value: 1', 'key: "stable" value: 2')
        server.core.reload(parse_model_server_config(latest_two))
        assert manager.available_versions() == [2, 3]
        assert grpc_predict(stub, image, label="stable").model_spec.version.value == 2
        every = latest_two.replace("latest { num_versions: 2 }", "all {}")
        server.core.reload(parse_model_server_config(every))
        assert manager.available_versions() == [1, 2, 3]
        assert rest_status(server) == {v: ("AVAILABLE", "OK", "") for v in (1, 2, 3)}
    finally:
        channel.close()
        server.stop()


def test_model_config_file_is_polled(base, tmp_path):
    config_file = tmp_path / "models.config"
    text = f'model_config_list {{ config {{ name: "det" base_path: "{base}" }} }}'
    config_file.write_text(text)
    models = parse_model_server_config(text)
    server = sf.make_server(models, model_config_file=str(config_file),
                            model_config_poll_seconds=POLL, file_system_poll_seconds=0)
    try:
        assert server.core.manager("det").label_version("stable") is None
        config_file.write_text(text.replace('" }', '" version_labels { key: "stable" value: 1 } }'))
        sf.wait_for(lambda: server.core.manager("det").label_version("stable") == 1)
        config_file.write_text("model_config_list { config { nonsense: 1 } }")  # bad: kept old
        time.sleep(5 * POLL)
        assert server.core.manager("det").label_version("stable") == 1
        config_file.write_text("")  # caught mid-write: not "no models"
        time.sleep(5 * POLL)
        assert server.core.model_names() == ["det"]
    finally:
        server.stop()


def write_warmup(version_dir: pathlib.Path, images: list[bytes]) -> None:
    """TF Serving's assets.extra/tf_serving_warmup_requests: PredictionLog TFRecords."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.tfrecord import frame

    (version_dir / "assets.extra").mkdir(exist_ok=True)
    with open(version_dir / "assets.extra" / "tf_serving_warmup_requests", "wb") as f:
        for image in images:
            log = prediction_log_pb2.PredictionLog()
            request = log.predict_log.request
            request.model_spec.name = "det"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto([image]))
            f.write(frame(log.SerializeToString()))


def test_warmup_file_runs_and_a_failing_warmup_keeps_the_version_out(base):
    from serving import backends

    write_warmup(base / "1", [sf.encode_image(15), sf.encode_image(16, "PNG")])
    assert backends.warmup(backends.load_saved_model(str(base / "1"))) == 2
    broken = pathlib.Path(sf.copy_version(sf.exported_model(1), base, 2))
    write_warmup(broken, [b"not an image"])
    server = sf.make_server([sf.model("det", base, policy="all")], file_system_poll_seconds=0)
    try:
        status = rest_status(server)
        assert status[1] == ("AVAILABLE", "OK", "")
        state, code, message = status[2]
        assert (state, code) == ("END", "INVALID_ARGUMENT")
        assert "Unknown image file format" in message
        assert server.core.manager("det").available_versions() == [1]
    finally:
        server.stop()
