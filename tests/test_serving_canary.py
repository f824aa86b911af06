"""Release traffic on a real server: canary routing, shadow copies, label moves under load."""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.model_config import LoggingSettings, parse_model_server_config
from serving.request_log import LATENCY_MS, REQUEST_ID, ROLE, ROUTE
from tests import serving_fixture as sf
from tests.test_serving_request_log import read_logs
from tests.test_serving_versions import grpc_predict

POLL = 0.05


def config_text(base, stable: int | None, canary: int | None, log_prefix: str = "") -> str:
    """The models.config the release registry writes: stable and canary loaded, labelled."""
    versions = sorted({v for v in (stable, canary) if v is not None})
    labels = "".join(f'version_labels {{ key: "{k}" value: {v} }}'
                     for k, v in (("stable", stable), ("canary", canary)) if v is not None)
    logging = (f'logging_config {{ log_collector_config {{ filename_prefix: "{log_prefix}" }} '
               f"sampling_config {{ sampling_rate: 0.0001 }} }}" if log_prefix else "")
    return (f'model_config_list {{ config {{ name: "det" base_path: "{base}" '
            f"model_version_policy {{ specific {{ {' '.join(f'versions: {v}' for v in versions)}"
            f" }} }} {labels} {logging} }} }}")


def replace_config(path, text: str) -> None:
    """As the registry writes models.config: whole or not at all (a server polling it
    must never read a half-written file)."""
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(text)
    os.replace(staged, path)


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "det"
    sf.copy_version(sf.exported_model(0), path, 1)
    sf.copy_version(sf.exported_model(1), path, 2)
    return path


def shadow_count(server, version: int, outcome: str) -> float:
    return server.metrics.shadow_requests.labels("det", str(version), outcome)._value.get()


def test_canary_fraction_splits_unlabelled_traffic_only(base):
    models = parse_model_server_config(config_text(base, 1, 2))
    server = sf.make_server(models, file_system_poll_seconds=0, canary_fraction=0.3)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    image = sf.encode_image(3)
    try:
        answered = collections.Counter(
            grpc_predict(stub, image).model_spec.version.value for _ in range(200))
        assert set(answered) == {1, 2}
        assert 30 <= answered[2] <= 90, answered  # 60 expected; binomial sd 6.5
        for _ in range(20):  # a label or a version is never re-routed
            assert grpc_predict(stub, image, label="stable").model_spec.version.value == 1
            assert grpc_predict(stub, image, version=1).model_spec.version.value == 1
    finally:
        channel.close()
        server.stop()


def test_shadow_copies_run_on_the_canary_and_are_logged_never_returned(base, tmp_path):
    import tensorflow as tf

    prefix = str(tmp_path / "logs" / "det")
    models = [sf.model("det", base, policy="specific", specific_versions=(1, 2),
                       labels=(("canary", 2), ("stable", 1)),
                       logging=LoggingSettings(prefix, 0.0))]  # only shadowed pairs logged
    server = sf.make_server(models, file_system_poll_seconds=0, shadow_fraction=1.0)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    images = [sf.encode_image(40 + i) for i in range(6)]
    try:
        for i, image in enumerate(images):
            spec = {"label": "stable"} if i % 2 else {}
            response = grpc_predict(stub, image, **spec)
            assert response.model_spec.version.value == 1
            want = sf.reference_outputs(sf.exported_model(0), [image])["detection_scores"]
            np.testing.assert_allclose(tf.make_ndarray(response.outputs["detection_scores"]),
                                       want, rtol=1e-5, atol=1e-6)
        grpc_predict(stub, images[0], label="canary")  # canary traffic is not mirrored
        grpc_predict(stub, images[0], version=1)  # nor a request pinned to a version
        sf.wait_for(lambda: shadow_count(server, 2, "ok") == len(images))
    finally:
        channel.close()
        server.stop()
    records = read_logs(prefix)
    by_role = collections.defaultdict(dict)
    for record in records:
        inputs = {k: tf.make_ndarray(v) for k, v in record.predict_log.request.inputs.items()}
        role = inputs[ROLE][0].decode()
        by_role[role][inputs[REQUEST_ID][0]] = (record, inputs)
        assert inputs[LATENCY_MS][0] > 0
    assert len(by_role["primary"]) == len(by_role["shadow"]) == len(images)
    assert set(by_role["primary"]) == set(by_role["shadow"])  # paired by request id
    for request_id, (shadow, inputs) in by_role["shadow"].items():
        primary, primary_inputs = by_role["primary"][request_id]
        assert primary.log_metadata.model_spec.version.value == 1
        assert shadow.log_metadata.model_spec.version.value == 2
        assert inputs[ROUTE].tolist() == [b"shadow"]
        assert primary_inputs[ROUTE][0] in (b"stable", b"label:stable")
        assert inputs["images:sha256"].tolist() == primary_inputs["images:sha256"].tolist()
        image = next(i for i in images
                     if inputs["images:sha256"][0].decode() == hashlib.sha256(i).hexdigest())
        want = sf.reference_outputs(sf.exported_model(1), [image])["detection_scores"]
        np.testing.assert_allclose(
            tf.make_ndarray(shadow.predict_log.response.outputs["detection_scores"]), want,
            rtol=1e-5, atol=1e-6)


def test_shadow_work_is_bounded_and_never_slows_the_answer(base):
    models = parse_model_server_config(config_text(base, 1, 2))
    server = sf.make_server(models, file_system_poll_seconds=0, shadow_fraction=1.0,
                            shadow_max_in_flight=1)
    canary = server.core.manager("det")._available[2].executors["serving_default"]
    release = threading.Event()
    run = canary._run

    def stuck(inputs):  # the canary hangs until released
        release.wait(30)
        return run(inputs)

    canary._run = stuck
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    image = sf.encode_image(5)
    try:
        started = time.monotonic()
        for _ in range(6):
            assert grpc_predict(stub, image).model_spec.version.value == 1
        assert time.monotonic() - started < 10  # answers did not wait for the shadow
        assert shadow_count(server, 2, "dropped") == 5  # one in flight, the rest dropped
        release.set()
        sf.wait_for(lambda: shadow_count(server, 2, "ok") == 1)
    finally:
        release.set()
        channel.close()
        server.stop()


def test_labels_move_through_promote_and_rollback_without_a_failed_request(base, tmp_path):
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text(base, 1, 2))
    server = sf.make_server(parse_model_server_config(config_file.read_text()),
                            model_config_file=str(config_file), model_config_poll_seconds=POLL,
                            file_system_poll_seconds=0, canary_fraction=0.2,
                            shadow_fraction=0.5)
    manager = server.core.manager("det")
    stop = threading.Event()
    failures: list[str] = []
    answered = collections.Counter()

    def client(spec: dict) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        image = sf.encode_image(9)
        while not stop.is_set():
            try:
                answered[grpc_predict(stub, image, **spec).model_spec.version.value] += 1
            except grpc.RpcError as e:
                failures.append(f"{spec}: {e.code()} {e.details()}")
        channel.close()

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        clients = [pool.submit(client, spec) for spec in ({}, {}, {"label": "stable"})]
        try:
            time.sleep(0.5)
            replace_config(config_file, config_text(base, 2, None))  # promote 2: 1 unloads
            sf.wait_for(lambda: manager.label_version("stable") == 2
                        and manager.available_versions() == [2])
            time.sleep(0.5)
            replace_config(config_file, config_text(base, 1, None))  # roll back: 1 loads again
            sf.wait_for(lambda: manager.label_version("stable") == 1
                        and manager.available_versions() == [1], timeout=60)
            time.sleep(0.5)
        finally:
            stop.set()
            for c in clients:
                c.result()
            server.stop()
    assert failures == []
    assert answered[1] > 0 and answered[2] > 0
