"""Loaded model versions: a SavedModel through TensorFlow, or an edge bundle through TFLite.

Both expose the same thing to the server: named signatures, each with a TF Serving
``SignatureDef`` (what metadata shows and what REST uses to type JSON inputs) and a
``run`` from numpy inputs to numpy outputs. The outputs are whatever the signature
declares, so dropping or adding a model output needs no server change.
"""

from __future__ import annotations

import io
import os
import queue
from collections.abc import Callable

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from serving import tensors
from serving.errors import ServingError, failed_precondition, internal, invalid_argument

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
SAVED_MODEL_FILE = "saved_model.pb"
TFLITE_FILE = "model.tflite"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SAVEDMODEL, TFLITE = "savedmodel", "tflite"


class Signature:
    """One callable signature of a loaded version."""

    def __init__(self, name: str, signature_def: meta_graph_pb2.SignatureDef,
                 run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]):
        self.name = name
        self.signature_def = signature_def
        self.input_types = {k: v.dtype for k, v in signature_def.inputs.items()}
        self.output_names = sorted(signature_def.outputs)
        self._run = run

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """TF Serving's predict_util checks: same input aliases, right dtypes."""
        sent, wanted = set(inputs), set(self.input_types)
        if sent != wanted:
            raise invalid_argument(
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
        for i, name in enumerate(sorted(wanted)):
            got = tensors.data_type(inputs[name])
            if got != self.input_types[name]:
                raise invalid_argument(
                    f"Expects arg[{i}] to be {tensors.dtype_name(self.input_types[name])} "
                    f"but {tensors.dtype_name(got)} is provided")
            if inputs[name].ndim == 0:
                raise invalid_argument(f"input {name!r} is a scalar; it needs a batch "
                                       "dimension")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(inputs)


class Servable:
    """A loaded version: its signatures and how to release it."""

    def __init__(self, path: str, signatures: dict[str, Signature],
                 close: Callable[[], None] = lambda: None):
        self.path = path
        self.signatures = signatures
        self._close = close

    def signature(self, name: str) -> Signature:
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            # predict_util.cc: FAILED_PRECONDITION, same text.
            raise failed_precondition(f'Serving signature key "{key}" not found.')
        return self.signatures[key]

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        out = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in self.signatures.items():
            out.signature_def[name].CopyFrom(signature.signature_def)
        return out

    def close(self) -> None:
        self._close()


def is_complete(version_dir: str, backend: str) -> bool:
    """A version directory a server may load: the file its writer puts in place last."""
    marker = TFLITE_FILE if backend == TFLITE else SAVED_MODEL_FILE
    return os.path.isfile(os.path.join(version_dir, marker))


def load(version_dir: str, backend: str, tflite_threads: int = 1) -> Servable:
    if backend == TFLITE:
        return load_tflite(version_dir, tflite_threads)
    return load_saved_model(version_dir)


# --------------------------------------------------------------------------- SavedModel


_TF_NOISE = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{",
             "[Op:", "\t", "Traceback", "  File ")


def clean_tf_message(message: str) -> str:
    """The line of a TF op error that names the problem, without graph/stack noise.

    e.g. "Graph execution error: ... Unknown image file format. One of JPEG, PNG, GIF,
    BMP required. [[{{node ...}}]]" -> "Unknown image file format. One of JPEG, PNG,
    GIF, BMP required."
    """
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_TF_NOISE)]
    return useful[0] if useful else message.strip()


def tf_error(error: Exception) -> ServingError:
    """A TensorFlow error as the ServingError of the same canonical code, message cleaned."""
    import grpc

    code = getattr(error, "error_code", None)
    message = clean_tf_message(getattr(error, "message", None) or str(error))
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return ServingError(status, message)
    return internal(message)


def load_saved_model(path: str) -> Servable:
    """``tf.saved_model.load`` plus the signature defs from ``saved_model.pb``."""
    import tensorflow as tf

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, SAVED_MODEL_FILE), "rb") as f:
        proto.ParseFromString(f.read())
    if not proto.meta_graphs:
        raise ValueError(f"{path}: saved_model.pb has no MetaGraphDef")
    defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items()
            if not k.startswith("__")}
    loaded = tf.saved_model.load(path)
    signatures = {}
    for name, signature_def in defs.items():
        if name not in loaded.signatures:
            continue
        signatures[name] = Signature(name, signature_def, _saved_model_runner(
            loaded.signatures[name], signature_def))
    if not signatures:
        raise ValueError(f"{path}: the SavedModel has no serving signatures")
    holder = {"model": loaded}
    return Servable(path, signatures, close=holder.clear)


def _saved_model_runner(function, signature_def: meta_graph_pb2.SignatureDef):
    import tensorflow as tf

    outputs = sorted(signature_def.outputs)

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for name, array in inputs.items():
            if array.dtype == object:
                feed[name] = tf.constant(array.tolist() if array.ndim else array.item(),
                                         dtype=tf.string)
            else:
                feed[name] = tf.constant(array)
        try:
            result = function(**feed)
        except tf.errors.OpError as e:
            raise tf_error(e) from None
        except (TypeError, ValueError) as e:  # the function rejected the inputs' shapes
            raise invalid_argument(str(e).splitlines()[0]) from None
        return {k: result[k].numpy() for k in outputs}

    return run


# ------------------------------------------------------------------------------- TFLite


def load_tflite(path: str, num_interpreters: int = 1) -> Servable:
    """An edge bundle version dir (``model.tflite``, ...) as a ``serving_default`` signature.

    The TFLite file takes one preprocessed image; this signature takes encoded images
    (``images``: [batch] DT_STRING) like the SavedModel's, preprocesses them with
    ``serving.edge_preprocess`` and stacks the per-image outputs, exactly what
    ``TFLiteDetector.detect`` returns. Interpreters are not thread-safe: a small pool.
    """
    from serving.tflite_runner import INPUT_NAME, TFLiteDetector

    model_file = os.path.join(path, TFLITE_FILE)
    pool: queue.SimpleQueue = queue.SimpleQueue()
    first = TFLiteDetector(model_file)
    pool.put(first)
    for _ in range(max(0, num_interpreters - 1)):
        pool.put(TFLiteDetector(model_file))
    signature_def = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    signature_def.inputs[INPUT_NAME].CopyFrom(meta_graph_pb2.TensorInfo(
        name=f"{INPUT_NAME}:0", dtype=tensors.data_type(np.array([b""], dtype=object)),
        tensor_shape=tensors.shape_proto([-1])))
    for name, detail in first._runner.get_output_details().items():
        signature_def.outputs[name].CopyFrom(meta_graph_pb2.TensorInfo(
            name=f"{name}:0", dtype=tensors.data_type(np.zeros(0, detail["dtype"])),
            tensor_shape=tensors.shape_proto([-1, *[int(d) for d in detail["shape"][1:]]])))
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs[INPUT_NAME]
        if images.ndim != 1:
            raise invalid_argument(f"input {INPUT_NAME!r} must be a [batch] vector of encoded "
                                   f"images, got shape {list(images.shape)}")
        detector = pool.get()  # blocks while every interpreter is busy
        try:
            return detector.detect(list(images))
        except ValueError as e:
            raise invalid_argument(str(e)) from None
        finally:
            pool.put(detector)

    signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, signature_def, run)}
    return Servable(path, signatures)


# ------------------------------------------------------------------------------- warmup


def _synthetic_image() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 96, 64)).save(buffer, format="JPEG")
    return buffer.getvalue()


def warmup(servable: Servable) -> int:
    """Runs TF Serving's warmup file if the version has one, else one synthetic request.

    Returns the number of requests run; raises if one fails, which fails the load as in
    TF Serving (a version that cannot answer its own warmup must not serve).
    """
    from serving.tfrecord import read_records

    path = os.path.join(servable.path, WARMUP_FILE)
    if os.path.isfile(path):
        count = 0
        with open(path, "rb") as f:
            for record in read_records(f):
                log = prediction_log_pb2.PredictionLog.FromString(record)
                if log.WhichOneof("log_type") != "predict_log":
                    continue
                request = log.predict_log.request
                signature = servable.signature(request.model_spec.signature_name)
                inputs = {k: tensors.from_proto(v) for k, v in request.inputs.items()}
                signature.check_inputs(inputs)
                signature.run(inputs)
                count += 1
        return count
    signature = servable.signatures.get(DEFAULT_SIGNATURE)
    if signature is None or len(signature.input_types) != 1:
        return 0
    (name, dtype), = signature.input_types.items()
    if dtype != tensors.data_type(np.array([b""], dtype=object)):
        return 0
    signature.run({name: np.array([_synthetic_image()], dtype=object)})
    return 1
