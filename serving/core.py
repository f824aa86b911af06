"""The transport-independent server: models, config reloads, predict, status, metadata.

REST and gRPC both call this, so a request gets the same version resolution, error
code, batching queue, metrics and request log whichever way it arrived.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving.errors import ServingError, invalid_argument, not_found
from serving.metrics import Metrics
from serving.model_config import ModelSettings
from serving.versions import Handle, ModelManager, RuntimeOptions, TrafficSplit

log = logging.getLogger("sightline.serving")
SIGNATURE_DEF = "signature_def"


class ServerCore:
    def __init__(self, models: list[ModelSettings], options: RuntimeOptions, metrics: Metrics,
                 poll_seconds: float, traffic: TrafficSplit | None = None):
        self.options = options
        self.metrics = metrics
        self.traffic = traffic or TrafficSplit()
        self.poll_seconds = poll_seconds
        self._models: dict[str, ModelManager] = {}
        self._lock = threading.RLock()  # config changes
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._initial = models

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Loads every model's aspired versions (blocking) then polls in the background."""
        self.reload(self._initial)
        if self.poll_seconds > 0:
            self._poller = threading.Thread(target=self._poll_loop, name="version-poller",
                                            daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            for manager in list(self._models.values()):
                try:
                    manager.poll()
                except Exception:  # the poller must outlive any one model's trouble
                    log.exception("polling %s failed", manager.name)

    def stop(self) -> None:
        """Stops polling and unloads every model after its in-flight requests finish."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        with self._lock:
            for manager in self._models.values():
                manager.close()

    def reload(self, models: list[ModelSettings]) -> None:
        """Applies a full model list (HandleReloadConfigRequest / config file change).

        New models are loaded before this returns; removed ones are unloaded; a label
        that names an unavailable version fails the reload (FAILED_PRECONDITION), leaving
        that model's previous labels in place.
        """
        with self._lock:
            wanted = {m.name: m for m in models}
            for name in list(self._models):
                if name not in wanted:
                    log.info("Model %s removed from the config", name)
                    self._models.pop(name).close()
            errors = []
            for name, settings in wanted.items():
                manager = self._models.get(name)
                if manager is None or manager.settings.base_path != settings.base_path:
                    if manager is not None:
                        manager.close()
                    manager = ModelManager(settings, self.options, self.metrics, self.traffic)
                    log.info("Model %s: base path %s, version policy %s", name,
                             settings.base_path, settings.policy)
                try:
                    manager.reconfigure(settings)
                except ServingError as e:
                    errors.append(e)
                self._models = {**self._models, name: manager}
            if errors:
                raise errors[0]

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def manager(self, name: str, version: int | None = None) -> ModelManager:
        manager = self._models.get(name)
        if manager is None:
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise not_found(f"Servable not found for request: {request}")
        return manager

    # ------------------------------------------------------------------------------ predict

    def submit(self, name: str, version: int | None, label: str | None, signature: str,
               inputs: dict[str, np.ndarray], deadline: float) -> Handle:
        return self.manager(name, version).submit(version, label, signature, inputs, deadline)

    def finish(self, api: str, name: str, handle: Handle | None, signature: str,
               started: float, error: ServingError | None,
               inputs: dict[str, np.ndarray] | None = None,
               outputs: dict[str, np.ndarray] | None = None, client_id: bytes = b"") -> None:
        """Metrics and the request log for one predict call; releases the version."""
        known = handle.version.version if handle else getattr(error, "version", None)
        version = "" if known is None else str(known)
        sig = handle.signature.name if handle else (signature or "serving_default")
        status = error.code_name if error else "OK"
        self.metrics.requests.labels(name, version, sig, api, status).inc()
        if handle is not None:
            latency = time.monotonic() - started
            self.metrics.latency.labels(name, version, sig, api).observe(latency)
            handle.release()
            manager = self._models.get(name)
            if error is None and manager is not None:
                manager.after_success(handle, sig, inputs or {}, outputs or {}, client_id,
                                      latency)

    # ------------------------------------------------------------------- status, metadata

    def _label_version(self, manager: ModelManager, label: str) -> int:
        version = manager.label_version(label)
        if version is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return version

    def status(self, name: str, version: int | None, label: str | None
               ) -> get_model_status_pb2.GetModelStatusResponse:
        if version is not None and label:
            raise invalid_argument(f"Both model version ({version}) and model version label "
                                   f"({label}) cannot be supplied.")
        manager = self._models.get(name)
        if manager is None:
            if version is not None:
                raise not_found(f"Could not find version {version} of model {name}")
            raise not_found(f"Could not find any versions of model {name}")
        if label:
            version = self._label_version(manager, label)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in manager.status(version):
            response.model_version_status.append(status.to_proto())
        return response

    def metadata(self, name: str, version: int | None, label: str | None,
                 fields: list[str]) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not fields:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != SIGNATURE_DEF:
                raise invalid_argument(f"Metadata field {field} is not supported")
        loaded = self.manager(name, version).resolve(version, label)
        try:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = loaded.version
            response.metadata[SIGNATURE_DEF].Pack(loaded.servable.signature_def_map())
            return response
        finally:
            loaded.release()

    def model_spec(self, name: str, version: int, signature: str) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=name, signature_name=signature)
        spec.version.value = version
        return spec


def code_of(error: Exception) -> grpc.StatusCode:
    return error.code if isinstance(error, ServingError) else grpc.StatusCode.INTERNAL
