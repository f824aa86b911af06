"""Wiring and lifecycle: load models, start gRPC and REST, poll configs, stop gracefully.

Shutdown (SIGTERM/SIGINT or ``stop()``): both listeners stop accepting, requests already
received run to completion (queued batches included), then every version is unloaded
and the request logs are flushed and closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import threading

import uvicorn

from serving import backends, model_config
from serving.core import ServerCore
from serving.grpc_service import build_server
from serving.metrics import Metrics
from serving.model_config import BatchingConfig, ModelSettings
from serving.rest import DEFAULT_MAX_BODY_BYTES, RestApi
from serving.versions import RuntimeOptions, TrafficSplit

log = logging.getLogger("sightline.serving")


@dataclasses.dataclass
class ServerOptions:
    models: list[ModelSettings]
    host: str = "0.0.0.0"
    grpc_port: int = 8500
    rest_port: int = 8501
    backend: str = backends.SAVEDMODEL
    batching: BatchingConfig | None = None
    model_config_file: str | None = None
    model_config_poll_seconds: float = 0.0
    file_system_poll_seconds: float = 1.0
    rest_timeout_ms: int = 30000
    rest_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    grpc_max_threads: int = 64
    max_in_flight: int = dataclasses.field(default_factory=lambda: 4 * (os.cpu_count() or 1))
    num_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    request_log_max_bytes: int = 64 << 20
    request_log_include_images: bool = False
    shutdown_grace_seconds: float = 30.0
    canary_fraction: float = 0.0
    shadow_fraction: float = 0.0
    shadow_max_in_flight: int = 4


class Server:
    def __init__(self, options: ServerOptions):
        self.options = options
        self.metrics = Metrics()
        runtime = RuntimeOptions(backend=options.backend, batching=options.batching,
                                 num_threads=options.num_threads,
                                 max_in_flight=options.max_in_flight,
                                 tflite_interpreters=options.num_threads)
        traffic = TrafficSplit(options.canary_fraction, options.shadow_fraction,
                               options.shadow_max_in_flight)
        self.core = ServerCore(options.models, runtime, self.metrics,
                               options.file_system_poll_seconds, traffic)
        self.grpc_port = 0
        self.rest_port = 0
        self._grpc = None
        self._uvicorn: uvicorn.Server | None = None
        self._rest_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._config_thread: threading.Thread | None = None
        self._config_text: str | None = None

    def start(self) -> None:
        """Loads the models (blocking), then listens. Raises if a port cannot be bound."""
        o = self.options
        self.core.start()
        if o.model_config_file:
            with open(o.model_config_file) as f:
                self._config_text = f.read()
        if o.grpc_port >= 0:
            self._grpc, self.grpc_port = build_server(
                self.core, o.host, o.grpc_port, o.grpc_max_threads, o.request_log_max_bytes,
                o.request_log_include_images)
            self._grpc.start()
            log.info("gRPC API at %s:%d (PredictionService, ModelService)", o.host,
                     self.grpc_port)
        if o.rest_port >= 0:
            # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say TCP;
            # with proto 0, Nagle holds the response body for the client's delayed ACK
            # (+40 ms per request).
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((o.host, o.rest_port))
            sock.listen(2048)
            self.rest_port = sock.getsockname()[1]
            api = RestApi(self.core, o.rest_timeout_ms, o.rest_max_body_bytes)
            # httptools + uvloop (C parser and loop): measured under 4x overload, the loop
            # answers refused requests fast enough that accepted ones keep a sane p99
            # (benchmarks.serve_bench; with h11 and asyncio's loop the p99 was ~5x worse).
            config = uvicorn.Config(api.app, log_level="warning", access_log=False,
                                    lifespan="off", http="httptools", loop="uvloop",
                                    timeout_graceful_shutdown=int(o.shutdown_grace_seconds))
            self._uvicorn = uvicorn.Server(config)
            started = threading.Event()

            def serve() -> None:
                async def main() -> None:
                    task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
                    while not self._uvicorn.started and not task.done():
                        await asyncio.sleep(0.01)
                    started.set()
                    await task

                asyncio.run(main())
                started.set()

            self._rest_thread = threading.Thread(target=serve, name="rest", daemon=True)
            self._rest_thread.start()
            started.wait(30)
            log.info("REST API at http://%s:%d/v1/models/%s (metrics at %s)", o.host,
                     self.rest_port, self.core.model_names()[0] if self.core.model_names()
                     else "<model>", "/monitoring/prometheus/metrics")
        if o.model_config_file and o.model_config_poll_seconds > 0:
            self._config_thread = threading.Thread(target=self._watch_config,
                                                   name="config-poller", daemon=True)
            self._config_thread.start()

    def _watch_config(self) -> None:
        """Re-reads --model_config_file every --model_config_file_poll_wait_seconds.

        A changed file is applied once; one that does not parse or apply is reported once
        and the last good config keeps serving (as TF Serving does). An empty file is
        taken for one caught mid-write and not applied (it would unload every model).
        """
        o = self.options
        while not self._stopped.wait(o.model_config_poll_seconds):
            try:
                with open(o.model_config_file) as f:
                    text = f.read()
            except OSError as e:
                log.error("Model config %s unreadable: %s", o.model_config_file, e)
                continue
            if text == self._config_text:
                continue
            if not text.strip():  # truncated by a writer that does not rename into place
                log.error("Model config %s is empty: not applied (write it whole, e.g. "
                          "to a temporary file renamed over it)", o.model_config_file)
                self._config_text = text
                continue
            self._config_text = text
            try:
                models = model_config.parse_model_server_config(
                    text, o.request_log_max_bytes, o.request_log_include_images)
                self.core.reload(models)
                log.info("Applied the changed model config %s", o.model_config_file)
            except Exception as e:  # keep serving the last good config
                log.error("Model config %s not applied: %s", o.model_config_file, e)

    def stop(self) -> None:
        """Graceful: stop accepting, finish in-flight and queued requests, unload, flush."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("Shutting down: finishing in-flight requests")
        grpc_done = self._grpc.stop(self.options.shutdown_grace_seconds) if self._grpc else None
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._rest_thread is not None:
            self._rest_thread.join(self.options.shutdown_grace_seconds + 5)
        if grpc_done is not None:
            grpc_done.wait(self.options.shutdown_grace_seconds + 5)
        if self._config_thread is not None:
            self._config_thread.join()
        self.core.stop()
        log.info("Stopped")

    def wait(self) -> None:
        self._stopped.wait()
