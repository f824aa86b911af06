"""Model versions: find them on disk, load, warm up, swap in, drain and unload.

Mirrors TF Serving's ``ServerCore`` + ``AspiredVersionsManager`` with the
availability-preserving policy: a version directory (all digits, as TF Serving reads
them) is loaded only when complete, warmed up, then published by replacing an
immutable map, so a request sees either the old or the new version, never neither. A
version leaving the aspired set is unloaded only once another aspired version is
available, and only after the requests holding it have finished. A version that fails
to load is reported (state END with its error) and replaces nothing.

``ModelVersionStatus`` states are TF Serving's: LOADING, AVAILABLE, UNLOADING, END.

Labels and traffic (Sightline's additions, ``TrafficSplit``): a request naming neither a
version nor a label goes to the ``stable`` label's version when that label exists (TF
Serving sends it to the latest version), a configured fraction of those to ``canary``;
a fraction of ``stable`` traffic is mirrored to ``canary`` as shadow requests whose
answers are logged, never returned. A config change loads new versions, then moves the
labels, then unloads what is no longer wanted, and a version a label points at is never
unloaded: a label never names a version that is gone.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import random
import threading
import time
import uuid

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


STABLE, CANARY = "stable", "canary"  # the release registry's labels
PRIMARY, SHADOW = "primary", "shadow"  # request roles in the request log
SHADOW_TIMEOUT_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class TrafficSplit:
    """Canary routing and shadow mirroring for models with ``stable``/``canary`` labels.

    ``canary_fraction``: share of requests naming no version or label answered by the
    ``canary`` version. ``shadow_fraction``: share of requests answered by ``stable`` that
    are also run on ``canary`` after the answer, for the request log only.
    ``shadow_max_in_flight``: shadow requests running or queued per model; more are
    dropped (and counted), as is a shadow request whose canary queue is full, so
    mirroring can never slow or fail the traffic it copies.
    """

    canary_fraction: float = 0.0
    shadow_fraction: float = 0.0
    shadow_max_in_flight: int = 4

    def __post_init__(self) -> None:
        for name in ("canary_fraction", "shadow_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.shadow_max_in_flight < 1:
            raise ValueError(f"shadow_max_in_flight must be >= 1, got "
                             f"{self.shadow_max_in_flight}")


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
    # How the version was chosen: "version", "label:<label>", or for a request naming
    # neither, "stable", "canary" or "latest"; "shadow" for a mirrored copy.
    route: str = ""

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

    def __init__(self, settings: ModelSettings, options: RuntimeOptions, metrics: Metrics,
                 traffic: TrafficSplit | None = None):
        self.settings = settings
        self.name = settings.name
        self._options = options
        self._metrics = metrics
        self._traffic = traffic or TrafficSplit()
        self._random = random.Random()
        self._shadow_lock = threading.Lock()
        self._shadow_in_flight = 0
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
            self._load_missing(aspired)
            self._unload_unwanted(aspired)

    def reconfigure(self, settings: ModelSettings) -> None:
        """A new config for this model: load what it adds, move the labels, then unload.

        In this order a label is only ever moved to a loaded version and never left on
        an unloaded one, so requests by label or to ``stable`` keep being answered while
        a promotion or rollback is applied. Raises FAILED_PRECONDITION (from
        ``apply_labels``) if a label names a version that could not be loaded; the
        previous labels then stay, and so do the versions they point at.
        """
        with self._poll_lock:
            self.apply_settings(settings)
            aspired = self.aspired_versions()
            self._load_missing(aspired)
            try:
                self.apply_labels()
            finally:
                self._unload_unwanted(aspired)

    def _load_missing(self, aspired: list[int]) -> None:
        for version in sorted(aspired, reverse=True):  # newest first
            if version in self._available:
                continue
            if self._failed.get(version) == self._marker_mtime(version):
                continue  # failed before and unchanged since: do not retry
            self._load(version)

    def _unload_unwanted(self, aspired: list[int]) -> None:
        """Unloads versions neither aspired nor labelled, once an aspired one serves."""
        if any(v in self._available for v in aspired):
            keep = set(aspired) | set(self._labels.values())
            for version in sorted(self._available):
                if version not in keep:
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
        """The version a ModelSpec names, held until released (never one being drained).

        Neither version nor label: the ``stable`` label's version if there is one, else
        the latest available version (TF Serving always takes the latest).
        """
        if version is not None and label:
            raise invalid_argument(f"Both model version ({version}) and model version label "
                                   f"({label}) cannot be supplied.")
        for _ in range(100):
            # A swap can race the lookup: labels and versions are re-read on every try,
            # and the next maps agree again (labels move before a version unloads).
            labels, available = self._labels, self._available
            wanted = version
            if label:
                if label not in labels:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
                wanted = labels[label]
            elif version is None:
                wanted = labels.get(STABLE)
            if wanted is None:
                if not available:
                    raise not_found(f"Servable not found for request: Latest({self.name})")
                loaded = available[max(available)]
            else:
                loaded = available.get(wanted)
                if loaded is None:
                    if version is not None:
                        raise not_found(
                            f"Servable not found for request: Specific({self.name}, {version})")
                    time.sleep(0.001)  # a label read just before it moved
                    continue
            if loaded.acquire():
                return loaded
            time.sleep(0.001)
        raise not_found(f"Servable not found for request: Latest({self.name})")

    def route(self, version: int | None, label: str | None) -> tuple[LoadedVersion, str]:
        """``resolve`` for a predict request, with canary routing; also says how it chose.

        Only requests naming neither a version nor a label are routed: to ``canary``
        with probability ``canary_fraction`` when that label exists (falling back to
        stable if the canary cannot take it), else as ``resolve`` does.
        """
        if version is not None:
            return self.resolve(version, None), "version"
        if label:
            return self.resolve(None, label), f"label:{label}"
        canary = self._labels.get(CANARY)
        fraction = self._traffic.canary_fraction
        if canary is not None and fraction > 0 and self._random.random() < fraction:
            try:
                return self.resolve(canary, None), CANARY
            except ServingError:
                pass  # the canary went away between the lookup and the hold
        return self.resolve(None, None), STABLE if STABLE in self._labels else "latest"

    def label_version(self, label: str) -> int | None:
        return self._labels.get(label)

    def submit(self, version: int | None, label: str | None, signature_name: str,
               inputs: dict[str, np.ndarray], deadline: float, inline: bool = False) -> Handle:
        return self.submit_to(self.resolve(version, label), signature_name, inputs, deadline,
                              inline)

    def submit_to(self, loaded: LoadedVersion, signature_name: str,
                  inputs: dict[str, np.ndarray], deadline: float, inline: bool = False,
                  route: str = "") -> Handle:
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
        return Handle(loaded, signature, future, route=route)

    # ------------------------------------------------------------- request log, shadow

    def after_success(self, handle: Handle, signature: str, inputs: dict[str, np.ndarray],
                      outputs: dict[str, np.ndarray], client_id: bytes,
                      latency: float) -> None:
        """Logs an answered request (sampled) and mirrors it to the canary (shadow).

        A shadowed request is always logged, with its shadow copy under the same request
        id, so ``sightline models compare`` can pair them. Never raises: the answer has
        been computed and must be returned whatever happens here.
        """
        try:
            shadow = self._shadow_target(handle)
            logger = self.logger
            if logger is None and shadow is None:
                return
            request_id = uuid.uuid4().hex
            if logger is not None and (shadow is not None or logger.sample()):
                logger.log(handle.version.version, signature, inputs, outputs, client_id,
                           request_id=request_id, role=PRIMARY, route=handle.route,
                           latency=latency)
            if shadow is not None:
                self._shadow(shadow, signature, inputs, client_id, request_id)
        except Exception:  # noqa: BLE001 (bookkeeping must not fail an answered request)
            log.exception("request log / shadow for %s failed", self.name)

    def _shadow_target(self, handle: Handle) -> int | None:
        """The canary version to mirror this request to, or None."""
        fraction = self._traffic.shadow_fraction
        if fraction <= 0 or handle.route not in (STABLE, f"label:{STABLE}"):
            return None
        canary = self._labels.get(CANARY)
        if canary is None or canary == handle.version.version:
            return None
        return canary if self._random.random() < fraction else None

    def _shadow(self, version: int, signature: str, inputs: dict[str, np.ndarray],
                client_id: bytes, request_id: str) -> None:
        """Queues a shadow copy on ``version`` without waiting; drops it if that is full."""
        outcome = self._metrics.shadow_requests
        with self._shadow_lock:
            if self._shadow_in_flight >= self._traffic.shadow_max_in_flight:
                outcome.labels(self.name, str(version), "dropped").inc()
                return
            self._shadow_in_flight += 1
        started = time.monotonic()
        handle = None
        try:
            loaded = self.resolve(version, None)
            if loaded.overloaded():
                loaded.release()
            else:
                handle = self.submit_to(loaded, signature, inputs,
                                        started + SHADOW_TIMEOUT_SECONDS, route=SHADOW)
        except Exception:  # noqa: BLE001 (full queue, canary gone: the copy is dropped)
            handle = None
        if handle is None:
            with self._shadow_lock:
                self._shadow_in_flight -= 1
            outcome.labels(self.name, str(version), "dropped").inc()
            return

        def done(future: concurrent.futures.Future) -> None:
            latency = time.monotonic() - started
            handle.release()
            with self._shadow_lock:
                self._shadow_in_flight -= 1
            error = future.cancelled() or future.exception()
            outcome.labels(self.name, str(version), "error" if error else "ok").inc()
            logger = self.logger
            if error is None and logger is not None:
                logger.log(version, handle.signature.name, inputs, future.result(), client_id,
                           request_id=request_id, role=SHADOW, route=SHADOW, latency=latency)

        handle.future.add_done_callback(done)

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
