"""TF Serving's gRPC API on the official protos: PredictionService and ModelService.

``Predict`` honours ``model_spec`` (version or version_label), ``signature_name`` and
``output_filter`` (predict_util.cc's checks and messages) and answers with the
``model_spec`` of the version that ran. Errors carry the same canonical codes as REST.
"""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import tensors
from serving.core import ServerCore
from serving.errors import ServingError, deadline_exceeded, internal, invalid_argument
from serving.model_config import settings_from_server_config
from serving.request_log import CLIENT_ID_HEADER, MAX_CLIENT_ID

MAX_MESSAGE_BYTES = 64 << 20
NO_DEADLINE_SECONDS = 3600.0


def _spec(request) -> tuple[str, int | None, str | None]:
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def _abort(context: grpc.ServicerContext, error: ServingError):
    context.abort(error.code, error.message)


def _check_output_filter(wanted: list[str], outputs: list[str]) -> None:
    """predict_util.cc's output_filter checks and messages."""
    seen = set()
    for alias in wanted:
        if alias not in outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(outputs)}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    def Predict(self, request: predict_pb2.PredictRequest, context):  # noqa: N802 (gRPC API)
        started = time.monotonic()
        name, version, label = _spec(request)
        handle, signature = None, request.model_spec.signature_name
        remaining = context.time_remaining()  # None or huge when the client set no deadline
        deadline = started + min(remaining if remaining is not None else NO_DEADLINE_SECONDS,
                                 NO_DEADLINE_SECONDS)
        try:
            inputs = {k: tensors.from_proto(v) for k, v in request.inputs.items()}
            manager = self.core.manager(name, version)
            loaded, route = manager.route(version, label)
            try:
                found = loaded.servable.signature(signature)
                wanted = list(request.output_filter) or found.output_names
                _check_output_filter(wanted, found.output_names)
            except BaseException as e:
                loaded.release()
                e.version = loaded.version
                raise
            handle = manager.submit_to(loaded, signature, inputs, deadline, inline=True,
                                       route=route)
            signature = handle.signature.name
            try:
                outputs = handle.future.result(timeout=max(0.0, deadline - time.monotonic()))
            except futures.TimeoutError:
                handle.future.cancel()
                raise deadline_exceeded("Deadline Exceeded") from None
            outputs = {k: outputs[k] for k in wanted}
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(
                self.core.model_spec(name, handle.version.version, signature))
            for key, array in outputs.items():
                response.outputs[key].CopyFrom(tensors.to_proto(np.asarray(array)))
        except ServingError as e:
            self.core.finish("grpc", name, handle, signature, started, e)
            _abort(context, e)
        except Exception as e:
            error = internal(f"{type(e).__name__}: {e}")
            self.core.finish("grpc", name, handle, signature, started, error)
            _abort(context, error)
        client_id = request.client_id or dict(context.invocation_metadata()).get(
            CLIENT_ID_HEADER, "").encode()
        self.core.finish("grpc", name, handle, signature, started, None, inputs, outputs,
                         client_id[:MAX_CLIENT_ID])
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,  # noqa: N802
                         context):
        name, version, label = _spec(request)
        try:
            return self.core.metadata(name, version, label, list(request.metadata_field))
        except ServingError as e:
            _abort(context, e)

    def Classify(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not supported by sightline "
                      "serve (the detector has no classification signature)")

    def Regress(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by sightline "
                      "serve (the detector has no regression signature)")

    def MultiInference(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServerCore, max_log_bytes: int, include_images: bool):
        self.core = core
        self._max_log_bytes = max_log_bytes
        self._include_images = include_images

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,  # noqa: N802
                       context):
        name, version, label = _spec(request)
        try:
            return self.core.status(name, version, label)
        except ServingError as e:
            _abort(context, e)

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,  # noqa: N802
                                  context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            models = settings_from_server_config(request.config, self._max_log_bytes,
                                                 self._include_images)
        except ValueError as e:
            error = invalid_argument(str(e))
        else:
            try:
                self.core.reload(models)
                error = None
            except ServingError as e:
                error = e
        if error is not None:
            response.status.error_code = error.code_value
            response.status.error_message = error.message
            _abort(context, error)
        return response


def build_server(core: ServerCore, host: str, port: int, max_workers: int,
                 max_log_bytes: int, include_images: bool) -> tuple[grpc.Server, int]:
    """A started-later gRPC server and its bound port (port 0 picks a free one)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=4 * max_workers)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(core, max_log_bytes, include_images), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, bound
