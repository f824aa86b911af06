"""The release workflow end to end (issue 19's acceptance test), with a real server process.

Two tiny pipeline runs push two versions. The first goes to stable through canary with its
approval; ``python -m serving`` serves the registry's models.config (polled) with shadow
traffic on; the second becomes canary, its shadow traffic gives a recorded comparison, it
is approved and promoted, then rolled back. Clients send requests throughout (REST
without a label, gRPC to the ``stable`` label): none may fail, and the server's labels
must follow every step.
"""

from __future__ import annotations

import base64
import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.registry import serving_config, store
from pipelines.registry.registry import Registry

pytestmark = pytest.mark.slow  # two DAG runs and a server process
MODEL = "sightline-tiny"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def models(home: str, *args: str) -> dict | str:
    result = CliRunner().invoke(main, ["models", *args, "--home", home, "--config", "tiny",
                                       "--set", "release.min_compare_requests=20"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def eval_examples(home: str) -> list[bytes]:
    import tensorflow as tf

    files = sorted(glob.glob(f"{home}/pipelines/{MODEL}/CocoExampleGen/examples/*/"
                             "Split-eval/*.gz"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


class Clients:
    """REST requests naming no version and gRPC requests to "stable", until stopped."""

    def __init__(self, rest_port: int, grpc_port: int, examples: list[bytes]):
        self.rest_port, self.grpc_port, self.examples = rest_port, grpc_port, examples
        self.failures: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rest, daemon=True),
                         threading.Thread(target=self._grpc, daemon=True)]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _rest(self) -> None:
        i = 0
        while not self._stop.is_set():
            example = self.examples[i % len(self.examples)]
            body = json.dumps({"signature_name": "serving_examples", "instances": [
                {"b64": base64.b64encode(example).decode()}]})
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=30)
                conn.request("POST", f"/v1/models/{MODEL}:predict", body)
                response = conn.getresponse()
                text = response.read()
                conn.close()
                if response.status != 200:
                    self.failures.append(f"REST {response.status}: {text[:300]!r}")
                else:
                    self.answered += 1
            except OSError as e:
                self.failures.append(f"REST {e}")
            i += 1
            time.sleep(0.01)

    def _grpc(self) -> None:
        import grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        i = 0
        while not self._stop.is_set():
            try:
                predict(channel, self.examples[i % len(self.examples)], "stable")
                self.answered += 1
            except grpc.RpcError as e:
                self.failures.append(f"gRPC {e.code()}: {e.details()}")
            i += 1
            time.sleep(0.01)
        channel.close()


def predict(channel, example: bytes, label: str) -> int:
    """The version that answered a gRPC request to ``label``."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_examples"
    request.model_spec.version_label = label
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([example]))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return stub.Predict(request, timeout=30).model_spec.version.value


def wait_for_label(grpc_port: int, example: bytes, label: str, version: str,
                   timeout: float = 90) -> None:
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    deadline = time.monotonic() + timeout
    seen = None
    try:
        while time.monotonic() < deadline:
            try:
                seen = predict(channel, example, label)
                if seen == int(version):
                    return
            except grpc.RpcError as e:
                seen = e.details()
            time.sleep(0.2)
    finally:
        channel.close()
    raise AssertionError(f"label {label} never reached version {version} (last: {seen})")


def wait_for_shadow_pairs(home: str, v1: str, v2: str, count: int) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            report = models(home, "compare", v1, v2, "--no-record", "--json")
            if report["requests"]["paired"] >= count:
                return report
        except AssertionError:  # no log file yet
            pass
        time.sleep(1)
    raise AssertionError(f"fewer than {count} shadow pairs logged in 120 s")


def test_candidate_canary_stable_rollback_with_a_live_server(two_pushes, tmp_path):
    source, (v1, v2) = two_pushes
    home = str(tmp_path / "home")
    shutil.copytree(source, home)

    # The first version: canary, approved, stable (nothing to compare with yet).
    models(home, "promote", v1, "--to", "canary", "--as", "rel-eng", "--reason", "first")
    models(home, "approve", v1, "--as", "reviewer", "--reason", "evaluation report read")
    models(home, "promote", v1, "--to", "stable", "--as", "rel-eng", "--reason", "launch")
    config_path = serving_config.path_for(home)
    assert serving_config.labels(serving_config.read(config_path), MODEL) == {
        "stable": int(v1)}

    rest_port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model_config_file", config_path,
         "--model_config_file_poll_wait_seconds", "1", "--port", str(grpc_port),
         "--rest_api_port", str(rest_port), "--host", "127.0.0.1",
         "--shadow_fraction", "1.0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    examples = eval_examples(home)
    try:
        wait_for_label(grpc_port, examples[0], "stable", v1)
        with Clients(rest_port, grpc_port, examples) as clients:
            time.sleep(1)
            models(home, "promote", v2, "--to", "canary", "--as", "rel-eng")
            wait_for_label(grpc_port, examples[0], "canary", v2)
            wait_for_shadow_pairs(home, v1, v2, 20)
            report = models(home, "compare", v1, v2, "--json", "--as", "rel-eng")
            assert report["mode"] == "shadow" and report["problems"] == []
            assert report["agreement"] == 1.0  # the same oracle detector in both runs
            assert report["latency_ms"][v1]["count"] and report["latency_ms"][v2]["count"]
            models(home, "approve", v2, "--as", "reviewer", "--reason", "shadow agrees")
            models(home, "promote", v2, "--to", "stable", "--as", "rel-eng")
            wait_for_label(grpc_port, examples[0], "stable", v2)
            time.sleep(1)
            rolled = models(home, "rollback", "--as", "on-call", "--reason", "alerts",
                            "--json")
            assert rolled["stable"] == v1
            wait_for_label(grpc_port, examples[0], "stable", v1)
            time.sleep(1)
        assert clients.failures == []
        assert clients.answered > 50
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr.decode()[-3000:]
    check_history(home, v1, v2)


def check_history(home: str, v1: str, v2: str) -> None:
    """Every step of the test above in `models show`, the model card and ML Metadata."""
    first = models(home, "show", v1, "--json", "--no-card")
    second = models(home, "show", v2, "--json")
    assert first["stage"] == "stable" and second["stage"] == "retired"
    steps = [(r["kind"], r.get("to_stage"), r["actor"]) for r in first["history"]
             if r["version"] == v1]
    assert steps == [("transition", "canary", "rel-eng"), ("approval", None, "reviewer"),
                     ("transition", "stable", "rel-eng"), ("transition", "retired", "rel-eng"),
                     ("transition", "stable", "on-call")]
    steps = [(r["kind"], r.get("to_stage"), r["actor"]) for r in second["history"]]
    assert steps == [("transition", "canary", "rel-eng"), ("comparison", None, "rel-eng"),
                     ("approval", None, "reviewer"), ("transition", "stable", "rel-eng"),
                     ("transition", "retired", "on-call")]
    with open(second["model_card"]["json"]) as f:
        card = json.load(f)["sightline"]
    assert [r["to_stage"] for r in card["release"]["history"]] == ["canary", "stable",
                                                                    "retired"]
    assert card["release"]["comparisons"][0]["passed"] is True

    mlmd = Registry(home, MODEL).mlmd.store
    context = mlmd.get_context_by_type_and_name(store.REGISTERED_MODEL, MODEL)
    types = {t.id: t.name for t in mlmd.get_execution_types()}
    kinds = [types[e.type_id] for e in sorted(mlmd.get_executions_by_context(context.id),
                                              key=lambda e: e.id)]
    assert kinds.count(store.TRANSITION) == 7  # launch 2, canary 1, promotion 2, rollback 2
    assert kinds.count(store.APPROVAL) == 2 and kinds.count(store.COMPARISON) == 1
