"""Serving benchmark: `sightline serve` over REST and gRPC, unbatched and batched, vs raw calls.

    python -m benchmarks.serve_bench                 # full run (~15 min on 2 cores)
    python -m benchmarks.serve_bench --quick         # short phases: proves it runs (~3 min)
    python -m benchmarks.serve_bench --model_base_path DIR --edge_base_path DIR

The model is the default home's latest pushed SavedModel (``--model_base_path`` to pick
another); with none, an untrained detector of the default TrainConfig is exported so the
bench still runs (latency does not depend on the weights). It is copied into a temporary
base path, so the version-swap phase never touches a real deployment. Images are the eval
split of the home's latest CocoExampleGen output, else a small synthetic set.

Each server runs in its own process (``python -m serving``); a bounded open-loop load
generator sends requests on a fixed schedule whatever the responses (latency counted
from the scheduled send time, so a late generator shows up as latency), with a cap on
outstanding requests whose excess counts as errors. Phases:

- raw: the same signature called in-process, one image per call, paced at the low-load
  rate (the floor for the overhead check) and back to back; plus its batch-8 vs batch-1
  images/s, the most batching can gain on this CPU;
- low load per API: the server's overhead over raw at p50;
- a rate ladder (x1.4 steps) per API and batching mode, up to the last rate served with
  < 1 % errors, >= 95 % of the offered rate and p99 <= 250 ms: the maximum sustainable
  throughput;
- batched at 2x the unbatched maximum; overload at 4x the sustainable rate (shed with
  503 / UNAVAILABLE, accepted p99, server RSS); a version swap under steady load;
- the TFLite backend on the home's edge bundle (int8 when that is what shipped), if any;
- `hey` as an independent REST cross-check when installed.

Client and server share this machine's cores, which costs the server throughput; the
ratios the checks use are measured in the same run, under the same handicap. Prints a
table and PASS/FAIL lines; writes ``benchmarks/results/serve_bench.json``.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import glob
import http.client
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from benchmarks import machine

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
MODEL_NAME = "sightline"
LOW_RATE = 10.0  # requests/s for the overhead measurement
LADDER_START, LADDER_STEP = 20.0, 1.4
SLO_P99_MS = 250.0
MAX_ERROR_RATE = 0.01
CLIENT_CAP = 256  # outstanding requests; more are counted as client errors
BATCHING = ("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n"
            "max_enqueued_batches { value: 4 }\nnum_batch_threads { value: %d }\n")


# ------------------------------------------------------------------------ model and data


def resolve_model(model_base_path: str | None, home: str | None, work: str
                  ) -> tuple[str, str]:
    """(a SavedModel version directory, how it was chosen)."""
    from pipelines import configs
    from serving.versions import disk_versions

    base = model_base_path or configs.Paths(configs.home_dir(home), MODEL_NAME).serving_model_dir
    complete = [v for v in disk_versions(base)
                if os.path.isfile(os.path.join(base, str(v), "saved_model.pb"))]
    if complete:
        return os.path.join(base, str(complete[-1])), f"pushed model {base}/{complete[-1]}"
    if model_base_path:
        raise SystemExit(f"no complete version (saved_model.pb) under {model_base_path}")
    import tensorflow as tf

    from data import synth
    from trainer.config import TrainConfig
    from trainer.export import export_saved_model
    from trainer.model import build_model

    config = TrainConfig(class_names=synth.CLASS_NAMES)
    print(f"no pushed model under {base}: exporting an untrained {config.model_size} "
          f"detector ({config.input_size} px, {config.max_detections} detections) instead")
    tf.keras.utils.set_random_seed(0)
    detector = build_model(config.model_size, config.input_size, len(config.class_names))
    path = os.path.join(work, "untrained")
    export_saved_model(detector, path, config.input_size, config.max_detections,
                       config.to_dict(), list(config.class_names))
    return path, (f"untrained {config.model_size} detector, {config.input_size} px "
                  f"(no pushed model under {base})")


def eval_images(home: str | None, work: str, limit: int) -> tuple[list[bytes], str]:
    """Encoded eval images from the latest CocoExampleGen output, else synthetic ones."""
    from pipelines import configs

    root = configs.Paths(configs.home_dir(home), MODEL_NAME).pipeline_root
    splits = glob.glob(os.path.join(root, "CocoExampleGen", "examples", "*", "Split-eval"))
    if splits:
        import tensorflow as tf

        latest = max(splits, key=os.path.getmtime)
        files = sorted(glob.glob(os.path.join(latest, "*")))
        images = []
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit):
            example = tf.train.Example.FromString(record.numpy())
            images.append(example.features.feature["image/encoded"].bytes_list.value[0])
        if images:
            return images, f"{len(images)} eval images from {latest}"
    from data import synth

    out = os.path.join(work, "synth")
    synth.generate(out, min(limit, 32), seed=0)
    images = [p.read_bytes() for p in sorted(pathlib.Path(out, "images").glob("*.jpg"))]
    return images, f"{len(images)} synthetic images (no CocoExampleGen output under {root})"


def copy_version(src: str, base: str, version: int) -> None:
    """As the Pusher does: everything, then saved_model.pb last."""
    dest = os.path.join(base, str(version))
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("saved_model.pb"))
    shutil.copyfile(os.path.join(src, "saved_model.pb"), os.path.join(dest, "saved_model.pb"))


# ------------------------------------------------------------------------- measurements


def percentiles(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    values = np.asarray(ms)
    return {f"p{q}_ms": round(float(np.percentile(values, q)), 3) for q in (50, 90, 99)}


def _raw_call(kind: str, path: str):
    """The signature as a function of a list of encoded images, in this process."""
    if kind == "tflite":
        from serving.tflite_runner import TFLiteDetector

        detector = TFLiteDetector(path)
        return lambda batch: detector.detect(batch)
    import tensorflow as tf

    function = tf.saved_model.load(path).signatures["serving_default"]
    return lambda batch: {k: v.numpy() for k, v in function(images=tf.constant(batch)).items()}


def raw_floor(kind: str, path: str, images: list[bytes], seconds: float,
              rate: float | None = None) -> dict[str, Any]:
    """The signature called in-process, one image per call: paced at ``rate`` (the floor
    for the low-load overhead: an idle CPU between calls costs time too) or back to back
    (``rate`` None: the in-process maximum)."""
    call = _raw_call(kind, path)
    for image in images[:5]:
        call([image])
    latencies, started, i = [], time.monotonic(), 0
    while time.monotonic() - started < seconds:
        if rate:
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t = time.perf_counter()
        call([images[i % len(images)]])
        latencies.append(1000 * (time.perf_counter() - t))
        i += 1
    return {"phase": f"raw {'paced' if rate else 'back to back'}", "api": "in-process",
            "offered_rps": rate or "-", "requests": i, **percentiles(latencies),
            "throughput_rps": round(i / (time.monotonic() - started), 1)}


def raw_batch_scaling(kind: str, path: str, images: list[bytes]) -> dict[str, float]:
    """Images/s in-process at batch 1 and 8: the most batching can gain on this CPU."""
    call = _raw_call(kind, path)
    out = {}
    for size in (1, 8):
        batch = (images * 8)[:size]
        call(batch)
        started, n = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0:
            call(batch)
            n += 1
        out[f"batch_{size}_images_per_s"] = round(size * n / (time.perf_counter() - started), 1)
    out["batch_8_gain"] = round(out["batch_8_images_per_s"] / out["batch_1_images_per_s"], 2)
    return out


class ServerProcess:
    """``python -m serving`` on free loopback ports; stopped with SIGTERM."""

    def __init__(self, base: str, work: str, batching_threads: int | None = None,
                 backend: str = "savedmodel"):
        self.rest, self.grpc = _free_port(), _free_port()
        args = [sys.executable, "-m", "serving", "--model_name", MODEL_NAME,
                "--model_base_path", base, "--host", "127.0.0.1", "--port", str(self.grpc),
                "--rest_api_port", str(self.rest), "--backend", backend,
                "--file_system_poll_wait_seconds", "1"]
        if batching_threads:
            params = os.path.join(work, "batching.txt")
            pathlib.Path(params).write_text(BATCHING % batching_threads)
            args += ["--enable_batching", "--batching_parameters_file", params]
        self.log = open(os.path.join(work, f"server-{self.rest}.log"), "w")
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 180
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {self.log.name}")
            time.sleep(0.25)

    def ready(self) -> bool:
        try:
            return rest_get(self.rest, f"/v1/models/{MODEL_NAME}")[0] == 200
        except OSError:
            return False

    def rss_mb(self) -> float:
        for line in pathlib.Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def alive(self) -> bool:
        return self.process.poll() is None and self.ready()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        self.log.close()
        return code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest_get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


class RestSender:
    """One keep-alive connection per worker thread; request bodies built beforehand."""

    def __init__(self, port: int, images: list[bytes], method: str = "POST",
                 path: str = f"/v1/models/{MODEL_NAME}:predict"):
        """Predicts ``images`` (one per request); ``method="GET"`` and a status ``path``
        send empty requests instead (the transport floor)."""
        self.port, self.method, self.path = port, method, path
        self.bodies = [json.dumps({"instances": [{"b64": base64.b64encode(i).decode()}]})
                       .encode() for i in images] if method == "POST" else [None]
        self.pool = concurrent.futures.ThreadPoolExecutor(CLIENT_CAP)
        self.local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None or conn.sock is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                timeout=30)
            conn.connect()  # http.client sends a large body in a second write: without
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Nagle, +40 ms
        return conn

    def _post(self, body: bytes) -> tuple[bool, str]:
        for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection()
            reused = conn.sock is not None and getattr(self.local, "used", False)
            try:
                self.local.used = True
                conn.request(self.method, self.path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.will_close:
                    conn.close()
                return response.status == 200, str(response.status)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError
                    ) as e:
                conn.close()
                self.local.used = False
                if attempt == 2 or not reused:
                    return False, type(e).__name__
            except OSError as e:
                conn.close()
                return False, type(e).__name__
        return False, "unreachable"

    def send(self, i: int, done) -> None:
        future = self.pool.submit(self._post, self.bodies[i % len(self.bodies)])
        future.add_done_callback(lambda f: done(*f.result()))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class GrpcSender:
    """Predicts ``images`` (one per request) with the official stub; ``status=True`` sends
    GetModelStatus calls instead (the transport floor)."""

    def __init__(self, port: int, images: list[bytes], status: bool = False):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import (
            get_model_status_pb2,
            model_service_pb2_grpc,
            predict_pb2,
            prediction_service_pb2_grpc,
        )

        self.grpc = grpc
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        if status:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = MODEL_NAME
            self.call = model_service_pb2_grpc.ModelServiceStub(self.channel).GetModelStatus
            self.requests = [request]
            return
        self.call = prediction_service_pb2_grpc.PredictionServiceStub(self.channel).Predict
        self.requests = []
        for image in images:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL_NAME
            request.inputs["images"].CopyFrom(tf.make_tensor_proto([image]))
            self.requests.append(request)

    def send(self, i: int, done) -> None:
        future = self.call.future(self.requests[i % len(self.requests)], timeout=30)

        def finished(f) -> None:
            code = f.code()
            done(code == self.grpc.StatusCode.OK, code.name)

        future.add_done_callback(finished)

    def close(self) -> None:
        self.channel.close()


def open_loop(sender, rate: float, seconds: float, during=None) -> dict[str, Any]:
    """Sends at ``rate`` on schedule for ``seconds``; returns latency and outcome counts."""
    lock = threading.Lock()
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    outstanding = [0]
    total = max(1, int(rate * seconds))
    started = time.monotonic()

    def record(scheduled: float):
        def done(ok: bool, status: str) -> None:
            elapsed = 1000 * (time.monotonic() - scheduled)
            with lock:
                outstanding[0] -= 1
                outcomes[status] = outcomes.get(status, 0) + 1
                if ok:
                    latencies.append(elapsed)
        return done

    hook_at = total // 3 if during else -1
    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if i == hook_at:
            threading.Thread(target=during, daemon=True).start()
        with lock:
            if outstanding[0] >= CLIENT_CAP:
                outcomes["client_cap"] = outcomes.get("client_cap", 0) + 1
                continue
            outstanding[0] += 1
        sender.send(i, record(scheduled))
    drain_deadline = time.monotonic() + 60
    while outstanding[0] and time.monotonic() < drain_deadline:
        time.sleep(0.01)
    wall = time.monotonic() - started
    ok = len(latencies)
    shed = outcomes.get("503", 0) + outcomes.get("UNAVAILABLE", 0)
    return {"offered_rps": round(rate, 1), "requests": total, "ok": ok,
            "throughput_rps": round(ok / max(wall, seconds), 1),
            "error_rate": round(1 - ok / total, 4), "shed": shed,
            "outcomes": dict(sorted(outcomes.items())), **percentiles(latencies)}


def sustainable(result: dict[str, Any]) -> bool:
    return (result["error_rate"] <= MAX_ERROR_RATE
            and result["throughput_rps"] >= 0.95 * result["offered_rps"]
            and result["p99_ms"] is not None and result["p99_ms"] <= SLO_P99_MS)


def ladder(sender, seconds: float, label: dict[str, Any], rows: list) -> dict[str, Any] | None:
    """Raises the rate x1.4 until a step is not sustainable; returns the last good step."""
    best, rate = None, LADDER_START
    while rate < 5000:
        result = {**label, "phase": "ladder", **open_loop(sender, rate, seconds)}
        rows.append(result)
        print(_row(result), flush=True)
        if not sustainable(result):
            break
        best, rate = result, rate * LADDER_STEP
    return best


# ------------------------------------------------------------------------------- phases


class Bench:
    """The phases of one benchmark run, filling ``report`` (rows, checks, notes)."""

    def __init__(self, args):
        self.args = args
        self.seconds = 1.5 if args.quick else args.seconds
        self.rows: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.best: dict[tuple[str, str], dict | None] = {}
        self.report: dict[str, Any] = {
            "machine": machine.describe(), "quick": args.quick, "phase_seconds": self.seconds,
            "rows": self.rows, "checks": self.checks, "notes": self.notes}

    def row(self, result: dict[str, Any]) -> dict[str, Any]:
        self.rows.append(result)
        print(_row(result), flush=True)
        return result

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": name, "pass": bool(ok), "detail": detail})

    def senders(self, server: ServerProcess, images: list[bytes]):
        yield "rest", RestSender(server.rest, images)
        yield "grpc", GrpcSender(server.grpc, images)

    def run(self) -> dict[str, Any]:
        args, report = self.args, self.report
        print(machine.summary(report["machine"]), flush=True)
        with tempfile.TemporaryDirectory() as work:
            model_dir, report["model"] = resolve_model(args.model_base_path, args.home, work)
            images, report["images"] = eval_images(args.home, work, 64 if args.quick else 256)
            print(f"model: {report['model']}\nimages: {report['images']}", flush=True)
            base = os.path.join(work, "models", MODEL_NAME)
            copy_version(model_dir, base, 1)
            raw = self.raw_phase(model_dir, images)
            server = ServerProcess(base, work)
            try:
                floor = self.transport_floor(server)
                self.unbatched_phase(server, images, raw, floor)
                self.overload_phase(server, images)
                self.swap_phase(server, images, model_dir, base)
            finally:
                report["unbatched_exit_code"] = server.stop()
            self.batched_phase(base, work, images)
            self.tflite_phase(work, images)
            report["max_sustainable_rps"] = {f"{api} {mode}": (r["offered_rps"] if r else None)
                                             for (api, mode), r in self.best.items()}
            report["hey"] = hey_cross_check(base, work, images, self.seconds)
        return report

    def raw_phase(self, model_dir: str, images: list[bytes]) -> dict[str, Any]:
        raw = self.row(raw_floor("savedmodel", model_dir, images, self.seconds, LOW_RATE))
        self.row(raw_floor("savedmodel", model_dir, images, self.seconds))
        scaling = raw_batch_scaling("savedmodel", model_dir, images)
        self.report["raw_batch_scaling"] = scaling
        print(f"in-process batch scaling: {scaling}", flush=True)
        return raw

    def transport_floor(self, server: ServerProcess) -> dict[str, float]:
        """p50 of an empty call (REST status GET, gRPC GetModelStatus) at the low rate:
        what any request pays on this machine for the round trip alone."""
        floor = {}
        for api, sender in (("rest", RestSender(server.rest, [], "GET",
                                                f"/v1/models/{MODEL_NAME}")),
                            ("grpc", GrpcSender(server.grpc, [], status=True))):
            open_loop(sender, LOW_RATE, 1.0)
            result = self.row({"api": api, "batching": False, "phase": "empty call",
                               **open_loop(sender, LOW_RATE, self.seconds)})
            floor[api] = result["p50_ms"]
            sender.close()
        return floor

    def unbatched_phase(self, server: ServerProcess, images: list[bytes],
                        raw: dict[str, Any], floor: dict[str, float]) -> None:
        for api, sender in self.senders(server, images):
            label = {"api": api, "batching": False}
            open_loop(sender, LOW_RATE, 1.0)  # warm connections and caches
            low = self.row({**label, "phase": "low load",
                            **open_loop(sender, LOW_RATE, self.seconds)})
            limit = 2.0 if api == "rest" else 1.0
            overhead = (low["p50_ms"] or float("inf")) - raw["p50_ms"]
            self.check(f"overhead {api}", overhead <= limit,
                       f"server p50 {low['p50_ms']} ms - raw p50 {raw['p50_ms']} ms = "
                       f"{overhead:.2f} ms (<= {limit} ms); an empty {api} call takes "
                       f"{floor[api]} ms p50 at this rate, leaving "
                       f"{overhead - floor[api]:.2f} ms for the request's own work")
            self.best[(api, "unbatched")] = ladder(sender, self.seconds, label, self.rows)
            sender.close()

    def overload_phase(self, server: ServerProcess, images: list[bytes]) -> None:
        for api, sender in self.senders(server, images):
            top = self.best[(api, "unbatched")]
            if top is None:
                self.check(f"overload {api}", False, "no sustainable rate found")
                sender.close()
                continue
            rss_before = server.rss_mb()
            result = {"api": api, "batching": False, "phase": "overload 4x",
                      **open_loop(sender, 4 * top["offered_rps"], max(self.seconds, 3.0))}
            rss_after = server.rss_mb()
            self.row({**result, "rss_before_mb": rss_before, "rss_after_mb": rss_after})
            sender.close()
            alive = server.alive()
            p99_ok = result["p99_ms"] is not None and result["p99_ms"] <= 3 * top["p99_ms"]
            rss_ok = rss_after <= 1.1 * rss_before
            self.check(f"overload {api}", result["shed"] > 0 and p99_ok and alive and rss_ok,
                       f"at {result['offered_rps']} rps: shed {result['shed']} with "
                       f"503/UNAVAILABLE, accepted p99 {result['p99_ms']} ms vs "
                       f"{top['p99_ms']} ms at {top['offered_rps']} rps (<= 3x), alive "
                       f"{alive}, RSS {rss_before} -> {rss_after} MB (<= +10 %)")

    def swap_phase(self, server: ServerProcess, images: list[bytes], model_dir: str,
                   base: str) -> None:
        """Version 2 pushed under steady REST load (a quarter of the sustainable rate)."""
        top = self.best[("rest", "unbatched")]
        rate = max(LOW_RATE, 0.25 * top["offered_rps"]) if top else LOW_RATE
        sender = RestSender(server.rest, images)
        result = {"api": "rest", "batching": False, "phase": "version swap",
                  **open_loop(sender, rate, max(3 * self.seconds, 8.0),
                              during=lambda: copy_version(model_dir, base, 2))}
        sender.close()
        deadline = time.monotonic() + 30
        states = {}
        while time.monotonic() < deadline:
            states = {s["version"]: s["state"] for s in
                      rest_get(server.rest, f"/v1/models/{MODEL_NAME}")[1].get(
                          "model_version_status", [])}
            if states.get("2") == "AVAILABLE" and states.get("1") == "END":
                break
            time.sleep(0.2)
        self.row({**result, "versions": states})
        lost = result["requests"] - result["ok"]
        self.check("version swap", lost == 0 and states.get("2") == "AVAILABLE",
                   f"{result['requests']} requests at {result['offered_rps']} rps while "
                   f"version 2 was pushed: {lost} lost; states after {states}")
        shutil.rmtree(os.path.join(base, "2"))

    def batched_phase(self, base: str, work: str, images: list[bytes]) -> None:
        server = ServerProcess(base, work, batching_threads=os.cpu_count() or 1)
        try:
            for api, sender in self.senders(server, images):
                label = {"api": api, "batching": True}
                open_loop(sender, LOW_RATE, 1.0)
                self.best[(api, "batched")] = ladder(sender, self.seconds, label, self.rows)
                unbatched = self.best[(api, "unbatched")]
                if unbatched is None:
                    self.check(f"batching {api}", False, "no unbatched sustainable rate")
                    sender.close()
                    continue
                target = 2 * unbatched["offered_rps"]
                result = self.row({**label, "phase": "2x unbatched max",
                                   **open_loop(sender, target, max(self.seconds, 3.0))})
                sender.close()
                ok = (result["error_rate"] <= MAX_ERROR_RATE
                      and result["throughput_rps"] >= 0.95 * target
                      and result["p99_ms"] is not None
                      and result["p99_ms"] <= unbatched["p99_ms"])
                self.check(f"batching {api}", ok,
                           f"batched at {target} rps (2x unbatched max "
                           f"{unbatched['offered_rps']}): {result['throughput_rps']} rps, "
                           f"errors {result['error_rate']:.2%}, p99 {result['p99_ms']} ms vs "
                           f"unbatched p99 {unbatched['p99_ms']} ms")
        finally:
            self.report["batched_exit_code"] = server.stop()

    def tflite_phase(self, work: str, images: list[bytes]) -> None:
        """The TFLite backend on the home's edge bundle, if there is one."""
        edge = tflite_bundle(self.args.edge_base_path, self.args.home)
        if edge is None:
            self.notes.append("TFLite backend skipped: no edge bundle (model.tflite) under "
                              f"{self.args.edge_base_path or 'the home edge directory'}")
            print(self.notes[-1], flush=True)
            return
        edge_dir, variant = edge
        edge_base = os.path.join(work, "edge", MODEL_NAME)
        shutil.copytree(edge_dir, os.path.join(edge_base, "1"))
        self.row({**raw_floor("tflite", os.path.join(edge_dir, "model.tflite"), images,
                              self.seconds, LOW_RATE), "backend": f"tflite {variant}"})
        server = ServerProcess(edge_base, work, backend="tflite")
        try:
            for api, sender in self.senders(server, images):
                label = {"api": api, "batching": False, "backend": f"tflite {variant}"}
                open_loop(sender, LOW_RATE, 1.0)
                self.row({**label, "phase": "low load",
                          **open_loop(sender, LOW_RATE, self.seconds)})
                self.best[(api, "tflite")] = ladder(sender, self.seconds, label, self.rows)
                sender.close()
        finally:
            server.stop()


def tflite_bundle(edge_base_path: str | None, home: str | None) -> tuple[str, str] | None:
    from pipelines import configs
    from serving.versions import disk_versions

    base = edge_base_path or configs.Paths(configs.home_dir(home), MODEL_NAME).edge_bundle_dir
    versions = [v for v in disk_versions(base)
                if os.path.isfile(os.path.join(base, str(v), "model.tflite"))]
    if not versions:
        return None
    path = os.path.join(base, str(versions[-1]))
    variant = "unknown variant"
    try:
        variant = json.loads(pathlib.Path(path, "metadata.json").read_text())["variant"]
    except (OSError, KeyError, ValueError):
        pass
    return path, variant


def hey_cross_check(base: str, work: str, images: list[bytes], seconds: float
                    ) -> dict[str, Any] | str:
    """`hey` against a fresh unbatched server at the low rate (an independent client)."""
    if shutil.which("hey") is None:
        return "hey not installed (apt-get install -y hey): cross-check skipped"
    body = os.path.join(work, "body.json")
    pathlib.Path(body).write_text(json.dumps(
        {"instances": [{"b64": base64.b64encode(images[0]).decode()}]}))
    server = ServerProcess(base, work)
    try:
        url = f"http://127.0.0.1:{server.rest}/v1/models/{MODEL_NAME}:predict"
        out = subprocess.run(["hey", "-z", f"{max(seconds, 3):.0f}s", "-c", "2", "-q",
                              f"{LOW_RATE / 2:.0f}", "-m", "POST", "-T", "application/json",
                              "-D", body, url], capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    found = {f"p{q}_ms": round(1000 * float(v), 3)
             for q, v in re.findall(r"(\d+)% in ([\d.]+) secs", out.stdout)
             if q in ("50", "90", "99")}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    codes = re.findall(r"\[(\d+)\]\s+(\d+) responses", out.stdout)
    result = {**found, "throughput_rps": float(rps.group(1)) if rps else None,
              "status_codes": {c: int(n) for c, n in codes}}
    print(f"hey (REST, {LOW_RATE:.0f} rps closed-loop x2): {result}", flush=True)
    return result


# ------------------------------------------------------------------------------ output

_HEADER = ("phase", "api", "batching", "offered", "rps", "p50 ms", "p90 ms", "p99 ms",
           "errors", "shed")


def _row(r: dict[str, Any]) -> str:
    backend = r.get("backend", "")
    api = f"{r.get('api', '')}{' ' + backend if backend else ''}"
    values = (r.get("phase"), api, {True: "on", False: "off"}.get(r.get("batching"), "-"),
              r.get("offered_rps", "-"), r.get("throughput_rps"), r.get("p50_ms"),
              r.get("p90_ms"), r.get("p99_ms"),
              f"{r['error_rate']:.1%}" if "error_rate" in r else "-", r.get("shed", "-"))
    return " | ".join(str(v) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_base_path", help="numbered SavedModel versions (default: "
                                                  "the home's pushed model)")
    parser.add_argument("--edge_base_path", help="numbered edge bundles (default: the "
                                                 "home's edge directory)")
    parser.add_argument("--home", help="Sightline home (default $SIGHTLINE_HOME or "
                                       "./.sightline)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--quick", action="store_true", help="1.5 s phases: a smoke run")
    parser.add_argument("--out", default=str(RESULTS_DIR / "serve_bench.json"))
    args = parser.parse_args()
    started = time.monotonic()
    report = Bench(args).run()
    report["seconds"] = round(time.monotonic() - started, 1)
    print(f"\n{machine.summary(report['machine'])}; model: {report['model']}")
    print(" | ".join(_HEADER))
    for r in report["rows"]:
        print(_row(r))
    print(f"max sustainable rps: {report['max_sustainable_rps']}")
    print(f"in-process batch scaling: {report['raw_batch_scaling']}")
    for c in report["checks"]:
        print(f"{'PASS' if c['pass'] else 'FAIL'} {c['check']}: {c['detail']}")
    for note in report["notes"]:
        print(f"note: {note}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
