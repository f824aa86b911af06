"""TF Serving's REST API as a small ASGI app (Starlette), plus the Prometheus endpoint.

Paths are matched on the raw (still percent-encoded) path with TF Serving's own
regular expressions (``http_rest_api_util.cc``), then the model name and label are
decoded, as TF Serving does; a decoded name that could escape a path (``/``, ``\\``,
``..``) is refused with 400 before any lookup. Unknown ``/v1/`` paths answer 400
"Malformed request", others 404, like TF Serving's HTTP server.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse

import grpc
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from serving import json_codec, metrics
from serving.core import ServerCore
from serving.errors import (
    ServingError,
    deadline_exceeded,
    internal,
    invalid_argument,
    unavailable,
)
from serving.request_log import CLIENT_ID_HEADER, MAX_CLIENT_ID

_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
JSON = "application/json"
DEFAULT_MAX_BODY_BYTES = 32 << 20


def _message_to_json(message, preserve_names: bool) -> str:
    try:
        return json_format.MessageToJson(message, including_default_value_fields=True,
                                         preserving_proto_field_name=preserve_names, indent=1)
    except TypeError:  # protobuf >= 5 renamed the option
        return json_format.MessageToJson(message, always_print_fields_with_no_presence=True,
                                         preserving_proto_field_name=preserve_names, indent=1)


def _error(error: ServingError) -> Response:
    return Response(json.dumps({"error": error.message}), error.http_status, media_type=JSON)


def _decode(segment: str, what: str) -> str:
    value = urllib.parse.unquote(segment, errors="strict")
    if not value or "/" in value or "\\" in value or ".." in value or "\x00" in value:
        raise invalid_argument(f"Invalid {what}: {value!r} (it must not contain '/', '\\', "
                               "'..' or NUL)")
    return value


class RestApi:
    def __init__(self, core: ServerCore, timeout_ms: int,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.core = core
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self.max_body_bytes = max_body_bytes
        self.app = Starlette(routes=[
            Route(metrics.PATH, self.metrics, methods=["GET"]),
            Route("/{path:path}", self.dispatch, methods=["GET", "POST"]),
        ])

    async def metrics(self, request: Request) -> Response:
        return Response(self.core.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        limit = self.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(f"Request body is {declared} bytes; the limit is "
                               f"{limit} bytes (--rest_api_max_body_bytes)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(f"Request body exceeds the limit of {limit} "
                                   "bytes (--rest_api_max_body_bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    async def dispatch(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        method = request.method
        try:
            if not path.lower().startswith("/v1/"):
                return Response(json.dumps({"error": f"Not found: {method} {path}"}), 404,
                                media_type=JSON)
            if method == "POST":
                match = _PREDICT.fullmatch(path)
                if match is None:
                    raise invalid_argument(f"Malformed request: {method} {path}")
                name, version, label, verb = match.groups()
                name = _decode(name, "model name")
                label = _decode(label, "model version label") if label else None
                version_num = int(version) if version else None
                if version_num is not None and label:
                    raise invalid_argument(
                        f"Both model version ({version_num}) and model version label "
                        f"({label}) cannot be supplied.")
                if verb.lower() != "predict":
                    raise ServingError(_UNIMPLEMENTED, f"{verb} is not supported by sightline "
                                       "serve (the detector has no classify/regress signature)")
                return await self.predict(request, name, version_num, label)
            match = _STATUS.fullmatch(path)
            if match is None:
                raise invalid_argument(f"Malformed request: {method} {path}")
            name, version, label, sub = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            name = _decode(name, "model name")
            label = _decode(label, "model version label") if label else None
            version_num = int(version) if version else None
            if sub:
                response = self.core.metadata(name, version_num, label, ["signature_def"])
                return Response(self._metadata_json(response), media_type=JSON)
            status = self.core.status(name, version_num, label)
            return Response(_message_to_json(status, False), media_type=JSON)
        except ServingError as e:
            return _error(e)
        except ClientDisconnect:
            return Response(b"", 499)
        except UnicodeDecodeError:
            return _error(invalid_argument(f"Failed to decode model name: {path}"))

    @staticmethod
    def _metadata_json(response) -> str:
        """http_rest_api_util.cc ToJsonString: model_spec + the unpacked SignatureDefMap."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_defs)
        return ('{\n"model_spec":' + _message_to_json(response.model_spec, True)
                + ',\n"metadata": {"signature_def": '
                + _message_to_json(signature_defs, True) + "}\n}\n")

    async def predict(self, request: Request, name: str, version: int | None,
                      label: str | None) -> Response:
        started = time.monotonic()
        deadline = started + (self.timeout if self.timeout else 3600.0)
        handle, signature, inputs = None, "", None
        client_id = request.headers.get(CLIENT_ID_HEADER, "").encode()[:MAX_CLIENT_ID]
        try:
            manager = self.core.manager(name, version)
            loaded, route = manager.route(version, label)
            try:
                refusal = loaded.overloaded()
                if refusal:  # shed before spending time on the body
                    raise unavailable(refusal)
                body = await self._body(request)

                def input_types(sig: str) -> dict[str, int]:
                    nonlocal signature
                    signature = sig
                    try:
                        return loaded.servable.signature(sig).input_types
                    except ServingError:  # json_tensor's wording for the REST path
                        raise invalid_argument(
                            f'Serving signature name: "{sig or "serving_default"}" not '
                            "found in signature def") from None

                signature, inputs, fmt = json_codec.parse_predict_request(body, input_types)
            except BaseException as e:
                loaded.release()
                e.version = loaded.version
                raise
            handle = manager.submit_to(loaded, signature, inputs, deadline, route=route)
            try:
                outputs = await asyncio.wait_for(asyncio.wrap_future(handle.future),
                                                 deadline - time.monotonic())
            except TimeoutError:
                raise deadline_exceeded("Deadline Exceeded") from None
            text = json_codec.format_predict_response(outputs, fmt)
        except ServingError as e:
            self.core.finish("rest", name, handle, signature, started, e)
            return _error(e)
        except ClientDisconnect:
            self.core.finish("rest", name, handle, signature, started,
                             ServingError(_CANCELLED, "client disconnected"))
            return Response(b"", 499)
        except Exception as e:  # a bug must cost one request a 500, not the server
            error = internal(f"{type(e).__name__}: {e}")
            self.core.finish("rest", name, handle, signature, started, error)
            return _error(error)
        self.core.finish("rest", name, handle, signature, started, None, inputs, outputs,
                         client_id)
        return Response(text, media_type=JSON)


_RESOURCE = grpc.StatusCode.RESOURCE_EXHAUSTED
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
_CANCELLED = grpc.StatusCode.CANCELLED


def _too_large(message: str) -> ServingError:
    """413 for an oversized body. TF Serving sets no limit; the canonical code is
    RESOURCE_EXHAUSTED (gRPC's own answer to an oversized message)."""
    return ServingError(_RESOURCE, message, http_status=413)
