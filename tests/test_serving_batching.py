"""Dynamic batching and overload: TF's queue semantics, shedding, deadlines, exact results."""

from __future__ import annotations

import concurrent.futures
import functools
import http.client
import json
import threading
import time

import grpc
import numpy as np
import pytest

from serving.batching import BatchScheduler, DirectRunner
from serving.errors import ServingError
from serving.model_config import BatchingConfig
from tests import serving_fixture as sf

FULL = ("The batch scheduling queue to which this task was submitted is full; currently 2 "
        "batches enqueued and max_enqueued_batches is 2")


def slow_identity(delay: float, calls: list):
    def run(inputs):
        calls.append({k: v.copy() for k, v in inputs.items()})
        time.sleep(delay)
        return {"y": inputs["x"] * 2}
    return run


def test_scheduler_batches_pads_slices_and_sheds_with_tfs_message():
    calls: list = []
    config = BatchingConfig(max_batch_size=4, batch_timeout_micros=50_000,
                            max_enqueued_batches=2, num_batch_threads=1,
                            allowed_batch_sizes=(2, 4))
    scheduler = BatchScheduler(slow_identity(0.3, calls), config, "t")
    far = time.monotonic() + 60
    try:
        first = scheduler.schedule({"x": np.array([1.0])}, far)  # runs alone after 50 ms
        time.sleep(0.1)
        # The thread is busy for 0.3 s: these fill one batch (4, closed) and the open one (4).
        futures = [scheduler.schedule({"x": np.array([float(i)])}, far) for i in range(2, 10)]
        with pytest.raises(ServingError) as error:
            scheduler.schedule({"x": np.array([99.0])}, far)
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        assert error.value.message == FULL
        with pytest.raises(ServingError, match="Task size 5 is larger than maximum input "
                                                 "batch size 4"):
            scheduler.schedule({"x": np.ones(5)}, far)
        assert first.result(5)["y"].tolist() == [2.0]
        assert [f.result(5)["y"].tolist() for f in futures] == [[2.0 * i] for i in range(2, 10)]
    finally:
        scheduler.close()
    # Padded to an allowed size with copies of the first row: [1] -> [1, 1].
    assert [c["x"].tolist() for c in calls] == [[1.0, 1.0], [2.0, 3.0, 4.0, 5.0],
                                                [6.0, 7.0, 8.0, 9.0]]


def test_scheduler_answers_expired_requests_without_running_them():
    calls: list = []
    scheduler = BatchScheduler(slow_identity(0.3, calls), BatchingConfig(
        max_batch_size=1, max_enqueued_batches=5, num_batch_threads=1), "t")
    try:
        busy = scheduler.schedule({"x": np.array([1.0])}, time.monotonic() + 60)
        time.sleep(0.05)
        late = scheduler.schedule({"x": np.array([2.0])}, time.monotonic() + 0.05)
        with pytest.raises(ServingError) as error:
            late.result(5)
        assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert busy.result(5)["y"].tolist() == [2.0]
    finally:
        scheduler.close()
    assert [c["x"].tolist() for c in calls] == [[1.0]]


def test_one_bad_request_does_not_fail_its_batch_mates():
    def run(inputs):
        if (inputs["x"] < 0).any():
            from serving.errors import invalid_argument
            raise invalid_argument("negative input")
        return {"y": inputs["x"]}

    scheduler = BatchScheduler(run, BatchingConfig(max_batch_size=8, batch_timeout_micros=
                                                   100_000, num_batch_threads=1), "t")
    far = time.monotonic() + 60
    try:
        good = scheduler.schedule({"x": np.array([1.0])}, far)
        bad = scheduler.schedule({"x": np.array([-1.0])}, far)
        assert good.result(5)["y"].tolist() == [1.0]
        with pytest.raises(ServingError, match="negative input"):
            bad.result(5)
    finally:
        scheduler.close()


def test_direct_runner_bounds_requests_in_flight():
    release = threading.Event()
    runner = DirectRunner(lambda inputs: release.wait(5) and inputs, num_threads=1,
                          max_in_flight=2, name="t")
    far = time.monotonic() + 60
    try:
        accepted = [runner.schedule({"x": np.ones(1)}, far) for _ in range(2)]
        with pytest.raises(ServingError) as error:
            runner.schedule({"x": np.ones(1)}, far)
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        assert "2 requests in flight" in error.value.message
        release.set()
        assert all(f.result(5) for f in accepted)
        assert runner.schedule({"x": np.ones(1)}, far).result(5)  # capacity is back
    finally:
        runner.close()


# ---------------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "det"
    sf.copy_version(sf.exported_model(0), path, 1)
    return path


def post(port: int, images: list[bytes], timeout: float = 60) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/models/det:predict",
                     json.dumps({"instances": [sf.b64(i) for i in images]}))
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def outputs_of(body: dict, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array([row[k] for row in body["predictions"]], dtype=like[k].dtype)
            for k in like}


def test_batched_server_results_equal_the_saved_model(base):
    config = BatchingConfig(max_batch_size=8, batch_timeout_micros=20_000,
                            max_enqueued_batches=100, num_batch_threads=1,
                            allowed_batch_sizes=(4, 8))
    server = sf.make_server([sf.model("det", base)], batching=config)
    images = [sf.encode_image(20 + i) for i in range(8)]
    try:
        # One 3-image request is one batch padded to 4 with a copy of its first image:
        # bit-equal to the SavedModel on that same padded batch, sliced back to 3.
        status, body = post(server.rest_port, images[:3])
        assert status == 200, body
        padded = sf.reference_outputs(sf.exported_model(0), images[:3] + images[:1])
        want = {k: v[:3] for k, v in padded.items()}
        got = outputs_of(body, want)
        for key in want:
            assert got[key].tobytes() == want[key].tobytes(), key
        # Concurrent single-image requests (REST and gRPC) share batches; kernels see a
        # different batch than the image alone, so allow a few float32 ulps.
        single = {i: sf.reference_outputs(sf.exported_model(0), [images[i]]) for i in range(8)}
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def ask(i: int) -> dict[str, np.ndarray]:
            if i % 2:  # REST and gRPC requests join the same queue
                status, body = post(server.rest_port, [images[i]])
                assert status == 200, body
                return outputs_of(body, single[i])
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "det"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto([images[i]]))
            response = stub.Predict(request, timeout=60)
            return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        channel.close()
        for i, got in enumerate(answers):
            np.testing.assert_array_equal(got["num_detections"], single[i]["num_detections"])
            np.testing.assert_allclose(got["detection_scores"], single[i]["detection_scores"],
                                       rtol=0, atol=1e-6)
        text = server.metrics.render().decode()
        count = float(text.split('sightline_serving_batch_size_count{model="det",'
                                 'signature="serving_default",version="1"} ')[1].split()[0])
        total = float(text.split('sightline_serving_batch_size_sum{model="det",'
                                 'signature="serving_default",version="1"} ')[1].split()[0])
        assert total == 3 + 8  # every request's items once (warmup runs unbatched)
        assert count < 1 + 8  # some of the 8 concurrent requests shared a batch
    finally:
        server.stop()


@functools.cache
def big_image() -> bytes:
    """A smooth 1600x1600 JPEG: small to send and parse, tens of ms to decode and resize."""
    import io

    from PIL import Image

    ramp = np.linspace(0, 255, 1600, dtype=np.float32)
    pixels = np.stack([ramp[None, :] + 0 * ramp[:, None], ramp[:, None] + 0 * ramp[None, :],
                       np.full((1600, 1600), 90.0)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_overload_is_shed_with_503_and_unavailable_and_the_server_lives(base):
    config = BatchingConfig(max_batch_size=1, batch_timeout_micros=0, max_enqueued_batches=1,
                            num_batch_threads=1)
    server = sf.make_server([sf.model("det", base)], batching=config)
    image = big_image()
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: post(server.rest_port, [image]), range(16)))
        shed = [body for status, body in answers if status == 503]
        assert shed and any(status == 200 for status, _ in answers), [s for s, _ in answers]
        assert all(s in (200, 503) for s, _ in answers)
        assert shed[0]["error"].startswith(
            "The batch scheduling queue to which this task was submitted is full")

        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "det"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto([image]))

        def call(_):
            try:
                return stub.Predict(request, timeout=60) and grpc.StatusCode.OK
            except grpc.RpcError as e:
                return e.code(), e.details()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(call, range(16)))
        channel.close()
        unavailable = [c for c in codes if c != grpc.StatusCode.OK]
        assert unavailable and all(c[0] == grpc.StatusCode.UNAVAILABLE for c in unavailable)
        assert "batch scheduling queue" in unavailable[0][1]
        assert post(server.rest_port, [sf.encode_image(1)])[0] == 200
        text = server.metrics.render().decode()
        for api in ("rest", "grpc"):
            assert (f'sightline_serving_requests_total{{api="{api}",model="det",'
                    'signature="serving_default",status="UNAVAILABLE",version="1"}') in text
    finally:
        server.stop()


def test_rest_deadline_gives_504(base):
    config = BatchingConfig(max_batch_size=1, max_enqueued_batches=50, num_batch_threads=1)
    server = sf.make_server([sf.model("det", base)], batching=config, rest_timeout_ms=60)
    image = big_image()
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: post(server.rest_port, [image]), range(6)))
        timed_out = [body for status, body in answers if status == 504]
        assert timed_out, [s for s, _ in answers]
        assert all(s in (200, 504) for s, _ in answers)
        assert "Deadline" in timed_out[0]["error"]
    finally:
        server.stop()


def test_unbatched_server_sheds_beyond_max_in_flight(base):
    server = sf.make_server([sf.model("det", base)], max_in_flight=2, num_threads=1)
    image = big_image()
    try:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: post(server.rest_port, [image]), range(12)))
        statuses = [s for s, _ in answers]
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
        message = next(b["error"] for s, b in answers if s == 503)
        assert "max_in_flight is 2" in message
    finally:
        server.stop()
