"""Model versions: find them on disk, load, warm up, swap in, drain and unload.

Mirrors TF Serving's ``ServerCore`` + ``AspiredVersionsManager`` with the
availability-preserving policy: a version directory (all digits, as TF Serving reads
them) is loaded only when complete, warmed up, then published by replacing an
immutable map, so a request sees either the old or the new version, never neither. A
version leaving the aspired set is unloaded only once another aspired version is
available, and only after the requests holding it have finished. A version that fails
to load is reported (state END with its error) and replaces nothing.

``ModelVersionStatus`` states are TF Serving's: LOADING, AVAILABLE, UNLOADING, END.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
import time

import grpc
import numpy as np
from tensorflow_serving.apis import get_model_status_pb2

from serving import backends
from serving.batching import BatchScheduler, DirectRunner
from serving.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.metrics import Metrics
from serving.model_config import BatchingConfig, ModelSettings
from serving.request_log import RequestLogger

log = logging.getLogger("sightline.serving")
State = get_model_status_pb2.ModelVersionStatus.State


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How versions run: backend, batching (None: direct), bounds."""

    backend: str = backends.SAVEDMODEL
    batching: BatchingConfig | None = None
    num_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    max_in_flight: int = dataclasses.field(default_factory=lambda: 4 * (os.cpu_count() or 1))
    tflite_interpreters: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)


@dataclasses.dataclass
class VersionStatus:
    version: int
    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""

    def to_proto(self) -> get_model_status_pb2.ModelVersionStatus:
        proto = get_model_status_pb2.ModelVersionStatus(version=self.version, state=self.state)
        proto.status.error_code = self.error_code.value[0]
        proto.status.error_message = self.error_message
        return proto


class LoadedVersion:
    """A servable plus one executor per signature, reference-counted for draining."""

    def __init__(self, model: str, version: int, servable: backends.Servable,
                 options: RuntimeOptions, metrics: Metrics):
        self.model, self.version, self.servable = model, version, servable
        self._cv = threading.Condition()
        self._holders = 0
        self._draining = False
        self.executors: dict[str, BatchScheduler | DirectRunner] = {}
        for name, signature in servable.signatures.items():
            labels = (model, str(version), name)
            tag = f"{model}-{version}-{name}"
            if options.batching is not None:
                self.executors[name] = BatchScheduler(
                    signature.run, options.batching, tag,
                    on_batch=metrics.batch_size.labels(*labels).observe,
                    on_depth=metrics.queue_depth.labels(*labels).set)
            else:
                self.executors[name] = DirectRunner(
                    signature.run, options.num_threads, options.max_in_flight, tag,
                    on_depth=metrics.queue_depth.labels(*labels).set)

    def acquire(self) -> bool:
        with self._cv:
            if self._draining:
                return False
            self._holders += 1
            return True

    def release(self) -> None:
        with self._cv:
            self._holders -= 1
            if self._holders == 0:
                self._cv.notify_all()

    def overloaded(self) -> str | None:
        """A refusal message if every signature's executor is full right now, else None.

        REST checks this before reading and parsing a body, so shedding load costs
        almost nothing; a request that passes is still checked when it is queued.
        """
        messages = [executor.full() for executor in self.executors.values()]
        return messages[0] if messages and all(messages) else None

    def drain_and_close(self) -> None:
        """Waits for every request holding this version, then stops its executors."""
        with self._cv:
            self._draining = True
            while self._holders:
                self._cv.wait()
        for executor in self.executors.values():
            executor.close()
        self.servable.close()


@dataclasses.dataclass
class Handle:
    """A request's hold on a version; ``release`` when the response is built."""

    version: LoadedVersion
    signature: backends.Signature
    future: concurrent.futures.Future
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.version.release()


def disk_versions(base_path: str) -> list[int]:
    """Version numbers under a base path: all-digit directory names (no staging dirs)."""
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isdir(os.path.join(base_path, n)))


class ModelManager:
    """One model: its settings, version states and the versions serving now."""

    def __init__(self, settings: ModelSettings, options: RuntimeOptions, metrics: Metrics):
        self.settings = settings
        self.name = settings.name
        self._options = options
        self._metrics = metrics
        self._available: dict[int, LoadedVersion] = {}  # replaced, never mutated
        self._labels: dict[str, int] = {}
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, float] = {}  # version -> mtime of the failed attempt
        self._poll_lock = threading.Lock()
        self.logger: RequestLogger | None = (
            RequestLogger(self.name, settings.logging, metrics) if settings.logging else None)

    # ------------------------------------------------------------------ version lifecycle

    def _marker_mtime(self, version: int) -> float:
        path = os.path.join(self.settings.base_path, str(version))
        marker = backends.TFLITE_FILE if self._options.backend == backends.TFLITE \
            else backends.SAVED_MODEL_FILE
        try:
            return os.path.getmtime(os.path.join(path, marker))
        except OSError:
            return -1.0

    def aspired_versions(self) -> list[int]:
        base = self.settings.base_path
        complete = [v for v in disk_versions(base)
                    if backends.is_complete(os.path.join(base, str(v)), self._options.backend)]
        if self.settings.policy == "all":
            return complete
        if self.settings.policy == "specific":
            return [v for v in complete if v in self.settings.specific_versions]
        return complete[-self.settings.num_versions:]

    def poll(self) -> None:
        """One pass: load aspired versions not yet loaded, then unload the rest."""
        with self._poll_lock:
            aspired = self.aspired_versions()
            for version in sorted(aspired, reverse=True):  # newest first
                if version in self._available:
                    continue
                if self._failed.get(version) == self._marker_mtime(version):
                    continue  # failed before and unchanged since: do not retry
                self._load(version)
            if any(v in self._available for v in aspired):
                for version in sorted(self._available):
                    if version not in aspired:
                        self._unload(version)

    def _load(self, version: int) -> None:
        path = os.path.join(self.settings.base_path, str(version))
        self._status[version] = VersionStatus(version, State.LOADING)
        mtime = self._marker_mtime(version)
        log.info("Loading %s version %d from %s", self.name, version, path)
        started = time.monotonic()
        servable = None
        try:
            servable = backends.load(path, self._options.backend,
                                     self._options.tflite_interpreters)
            warmed = backends.warmup(servable)
            loaded = LoadedVersion(self.name, version, servable, self._options, self._metrics)
        except Exception as e:  # a broken version must never take the server down
            if servable is not None:
                servable.close()
            error = e if isinstance(e, ServingError) else backends.tf_error(e)
            if not isinstance(e, ServingError) and error.code == grpc.StatusCode.INTERNAL:
                error = ServingError(grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}")
            self._status[version] = VersionStatus(version, State.END, error.code,
                                                  error.message)
            self._failed[version] = mtime
            self._metrics.model_loads.labels(self.name, "failure").inc()
            log.error("Failed to load %s version %d: %s", self.name, version, error.message)
            return
        self._available = {**self._available, version: loaded}  # the atomic swap
        self._failed.pop(version, None)
        self._status[version] = VersionStatus(version, State.AVAILABLE)
        self._metrics.model_loads.labels(self.name, "success").inc()
        self._metrics.loaded_versions.labels(self.name).set(len(self._available))
        self._metrics.version_available.labels(self.name, str(version)).set(1)
        log.info("Serving %s version %d (loaded and warmed up with %d request(s) in %.1f s)",
                 self.name, version, warmed, time.monotonic() - started)

    def _unload(self, version: int) -> None:
        loaded = self._available[version]
        self._status[version] = VersionStatus(version, State.UNLOADING)
        self._available = {v: lv for v, lv in self._available.items() if v != version}
        self._metrics.loaded_versions.labels(self.name).set(len(self._available))
        self._metrics.version_available.labels(self.name, str(version)).set(0)
        log.info("Unloading %s version %d (draining in-flight requests)", self.name, version)
        loaded.drain_and_close()
        self._status[version] = VersionStatus(version, State.END)
        log.info("Unloaded %s version %d", self.name, version)

    def apply_settings(self, settings: ModelSettings) -> None:
        """A reloaded config for this model: new policy now, labels checked afterwards."""
        if settings.logging != self.settings.logging:
            if self.logger is not None:
                self.logger.close()
            self.logger = (RequestLogger(self.name, settings.logging, self._metrics)
                           if settings.logging else None)
        self.settings = settings

    def apply_labels(self) -> None:
        """server_core.cc: a label may only name a version available now."""
        for _label, version in self.settings.labels:
            if version not in self._available:
                raise failed_precondition(
                    f"Request to assign label to version {version} of model {self.name}, "
                    "which is not currently available for inference")
        self._labels = self.settings.label_map()

    def close(self) -> None:
        with self._poll_lock:
            for version in sorted(self._available):
                self._unload(version)
            if self.logger is not None:
                self.logger.close()

    # -------------------------------------------------------------------------- requests

    def resolve(self, version: int | None, label: str | None) -> LoadedVersion:
        """The version a ModelSpec names, held until released (never one being drained)."""
        if version is not None and label:
            raise invalid_argument(f"Both model version ({version}) and model version label "
                                   f"({label}) cannot be supplied.")
        if label:
            if label not in self._labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = self._labels[label]
        for _ in range(100):  # a swap can race the lookup; the next map has the new version
            available = self._available
            if version is None:
                if not available:
                    raise not_found(f"Servable not found for request: Latest({self.name})")
                loaded = available[max(available)]
            else:
                loaded = available.get(version)
                if loaded is None:
                    raise not_found(
                        f"Servable not found for request: Specific({self.name}, {version})")
            if loaded.acquire():
                return loaded
            time.sleep(0.001)
        raise not_found(f"Servable not found for request: Latest({self.name})")

    def label_version(self, label: str) -> int | None:
        return self._labels.get(label)

    def submit(self, version: int | None, label: str | None, signature_name: str,
               inputs: dict[str, np.ndarray], deadline: float, inline: bool = False) -> Handle:
        return self.submit_to(self.resolve(version, label), signature_name, inputs, deadline,
                              inline)

    def submit_to(self, loaded: LoadedVersion, signature_name: str,
                  inputs: dict[str, np.ndarray], deadline: float, inline: bool = False
                  ) -> Handle:
        """Queues a request on a version already held by ``resolve`` (released on error).

        ``inline``: an unbatched request runs in the calling thread (gRPC workers block
        on the result anyway); batched requests always go through their queue.
        """
        try:
            signature = loaded.servable.signature(signature_name)
            signature.check_inputs(inputs)
            executor = loaded.executors[signature.name]
            if inline and isinstance(executor, DirectRunner):
                future = executor.run_inline(inputs, deadline)
            else:
                future = executor.schedule(inputs, deadline)
        except BaseException as e:
            loaded.release()
            e.version = loaded.version  # for the metrics of a refused request
            raise
        return Handle(loaded, signature, future)

    def status(self, version: int | None = None) -> list[VersionStatus]:
        if version is not None:
            if version not in self._status:
                raise not_found(f"Could not find version {version} of model {self.name}")
            return [self._status[version]]
        if not self._status:
            raise not_found(f"Could not find any versions of model {self.name}")
        return [self._status[v] for v in sorted(self._status, reverse=True)]

    def available_versions(self) -> list[int]:
        return sorted(self._available)
