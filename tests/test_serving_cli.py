"""``python -m serving`` as a real process: quiet console, SIGTERM drains and exits 0."""

from __future__ import annotations

import concurrent.futures
import glob
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import serving_fixture as sf

pytestmark = pytest.mark.slow  # real server processes, stopped with SIGTERM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/models/det")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not become ready")


def wait_queued(port: int, depth: int, timeout: float = 30) -> None:
    """Until the server's queue_depth gauge shows ``depth`` requests queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/monitoring/prometheus/metrics")
        text = conn.getresponse().read().decode()
        values = re.findall(r"^sightline_serving_queue_depth\{[^}]*\} ([0-9.]+)$", text, re.M)
        if any(float(v) >= depth for v in values):
            return
        time.sleep(0.005)
    raise AssertionError(f"the server never had {depth} requests queued")


def post(port: int, image: bytes) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/models/det:predict", json.dumps({"instances": [sf.b64(image)]}))
    response = conn.getresponse()
    response.read()
    return response.status, time.monotonic()


@pytest.mark.parametrize("batching", [False, True])
def test_sigterm_finishes_in_flight_requests_flushes_logs_and_exits_0(tmp_path, batching):
    from tests.test_serving_batching import big_image

    base = tmp_path / "det"
    sf.copy_version(sf.exported_model(0), base, 1)
    rest, grpc_port = free_port(), free_port()
    logs = tmp_path / "logs"
    args = [sys.executable, "-m", "serving", "--model_name", "det", "--model_base_path",
            str(base), "--port", str(grpc_port), "--rest_api_port", str(rest),
            "--host", "127.0.0.1", "--request_log_dir", str(logs),
            "--request_log_sampling_rate", "1", "--max_in_flight", "16"]
    if batching:
        params = tmp_path / "batching.txt"
        params.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 1000 }\n"
                          "max_enqueued_batches { value: 16 }\nnum_batch_threads { value: 1 }\n")
        args += ["--enable_batching", "--batching_parameters_file", str(params)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        wait_ready(rest, process)
        image = big_image()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(post, rest, image) for _ in range(8)]
            wait_queued(rest, 2)  # requests are in flight or queued: stop the server now
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            answers = [f.result(60) for f in pending]
        assert process.wait(60) == 0
        statuses = [status for status, _ in answers]
        assert max(done for _, done in answers) > signalled  # some finished after SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process.stderr.read().decode()
    assert statuses == [200] * 8, stderr[-2000:]
    assert "Serving det version 1" in stderr and "Stopped" in stderr
    assert "cuda" not in stderr.lower() and "oneDNN" not in stderr  # library noise stays quiet
    records = sum(1 for f in glob.glob(str(logs / "det-*.tfrecord"))
                  for _ in _records(f))
    assert records == 8


def _records(path: str):
    from serving.tfrecord import read_records

    with open(path, "rb") as f:
        yield from read_records(f)
