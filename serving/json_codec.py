"""TF Serving's REST JSON <-> tensors (``tensorflow_serving/util/json_tensor.cc``).

Request: ``{"signature_name": ..., "instances": [...]}`` (row format) or
``{"inputs": ...}`` (columnar); binary strings as ``{"b64": ...}``. Response:
``{"predictions": ...}`` for row requests, ``{"outputs": ...}`` for columnar ones; a
signature with one output drops the output's name. Error messages follow
json_tensor.cc's wording so clients written against TF Serving see the same text.

Floats are written as TF Serving's ``WriteDecimal`` does: ``%g`` (6 digits), widened to
``%.9g`` when that does not parse back to the same float32 (or ``%.17g`` for doubles),
and ``.0`` appended to whole numbers; so every float round-trips to its exact bits.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2

from serving import tensors
from serving.errors import invalid_argument

ROW, COLUMNAR = "row", "columnar"
_DEBUG_CHARS = 200  # error messages quote the offending JSON, cut to this length
_INT_TYPES = (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8,
              types_pb2.DT_INT64, types_pb2.DT_UINT32, types_pb2.DT_UINT64, types_pb2.DT_UINT16)
_FLOAT_TYPES = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)


def _debug(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= _DEBUG_CHARS else text[:_DEBUG_CHARS] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value: Any, dtype: int) -> Exception:
    return invalid_argument(f"JSON Value: {_debug(value)} Type: {_json_type(value)} "
                            f"is not of expected type: {tensors.dtype_name(dtype)}")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_b64(value: Any) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(
            f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        padded = text + "=" * (-len(text) % 4)  # absl::Base64Unescape accepts missing padding
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _scalar(value: Any, dtype: int) -> Any:
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, dict):
            return _decode_b64(value)
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    if dtype in _FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(value, dtype)
        return value
    if dtype in _INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise invalid_argument(f"Conversion of JSON Value: {_debug(value)} to type: "
                           f"{tensors.dtype_name(dtype)} is not supported")


def _dense_shape(value: Any) -> list[int]:
    """json_tensor.cc GetDenseTensorShape: follow the first element at each level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list[Any]) -> None:
    """json_tensor.cc FillTensorProto: values must sit at depth rank, lists be full."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} in the "
                f"JSON DOM. Expected at level: {rank}")
        if isinstance(value, dict) and dtype != types_pb2.DT_STRING:
            raise _type_error(value, dtype)
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(
            f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _to_array(values: list[Any], shape: list[int], dtype: int) -> np.ndarray:
    np_dtype = tensors.numpy_dtype(dtype)
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=np_dtype).reshape(shape)
    except OverflowError:
        raise invalid_argument(
            f"a value does not fit the input's type {tensors.dtype_name(dtype)}") from None


def _tensor(value: Any, dtype: int) -> tuple[list[int], list[Any]]:
    shape = _dense_shape(value)
    values: list[Any] = []
    _fill(value, 0, shape, dtype, values)
    return shape, values


def parse_predict_request(
    body: bytes, input_types: Callable[[str], dict[str, int]]
) -> tuple[str, dict[str, np.ndarray], str]:
    """A REST predict body -> (signature name or "", input arrays, ROW or COLUMNAR).

    Args:
      input_types: signature name -> {input alias: DataType}; raises ServingError for an
        unknown signature (json_tensor.cc asks the model the same way).
    """
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as e:
        raise invalid_argument(
            f"JSON Parse error: Invalid encoding in string. ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {_debug(doc)} Is not object")
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid_argument(f"JSON Value: {_debug(doc)} not formatted correctly. "
                               "'signature_name' key must be a string value.")
    types = input_types(signature)
    if not types:
        raise invalid_argument(
            f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {_debug(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(
                f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {_debug(doc)} No values in 'instances' array")
        return signature, _from_instances(instances, types), ROW
    if has_inputs:
        return signature, _from_inputs(doc["inputs"], types), COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _from_instances(instances: list[Any], types: dict[str, int]) -> dict[str, np.ndarray]:
    """json_tensor.cc FillTensorMapFromInstancesList."""
    if not isinstance(instances[0], dict) and len(types) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map")
    named = _is_object(instances[0])
    first_name = sorted(types)[0]
    values: dict[str, list[Any]] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add(item: Any, name: str) -> None:
        if name not in types:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        shape, flat = _tensor(item, types[name])
        if name not in shapes:
            shapes[name], sizes[name] = shape, len(flat)
        elif sizes[name] != len(flat):
            raise invalid_argument(f"Expecting tensor size: {sizes[name]} but got: {len(flat)}")
        elif shapes[name] != shape:
            raise invalid_argument(f"Expecting shape {shapes[name]} but got: {shape}")
        values.setdefault(name, []).extend(flat)

    for index, element in enumerate(instances):
        if named:
            if not _is_object(element):
                raise invalid_argument(
                    f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except Exception as e:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {name} of 'instances' "
                        f"list. Error: {_status_text(e)}") from None
            if set(element) != set(types):
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{_debug(element)} keys must be equal to: {','.join(sorted(types))}")
        else:
            if _is_object(element):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list")
            try:
                add(element, first_name)
            except Exception as e:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' "
                                       f"list. Error: {_status_text(e)}") from None
    return {name: _to_array(values[name], [len(instances), *shapes[name]], types[name])
            for name in values}


def _from_inputs(inputs: Any, types: dict[str, int]) -> dict[str, np.ndarray]:
    """json_tensor.cc FillTensorMapFromInputsMap."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(types) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map")
        name = next(iter(types))
        shape, flat = _tensor(inputs, types[name])
        return {name: _to_array(flat, shape, types[name])}
    out = {}
    for name, dtype in sorted(types.items()):
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        shape, flat = _tensor(inputs[name], dtype)
        out[name] = _to_array(flat, shape, dtype)
    return out


def _status_text(error: Exception) -> str:
    """absl::Status::ToString() of a nested error, e.g. ``INVALID_ARGUMENT: msg``."""
    code = getattr(error, "code", None)
    name = code.name if code is not None else "INTERNAL"
    return f"{name}: {getattr(error, 'message', str(error))}"


# ---------------------------------------------------------------------------- responses


def format_floats(flat: np.ndarray) -> list[str]:
    """TF Serving's WriteDecimal for every value of a float32/float64 vector.

    Each distinct bit pattern is formatted once (the padding rows past
    ``num_detections`` are all zeros); then ``%g`` per value, one numpy parse to find the values
    that need ``%.9g`` (``%.17g`` for doubles), and fix-ups only for the few whole or
    non-finite values.
    """
    if flat.size == 0:
        return []
    bits = flat.view(np.uint32 if flat.dtype == np.float32 else np.uint64)
    unique, inverse = np.unique(bits, return_inverse=True)
    if len(unique) < len(flat):
        distinct = np.array(_format_distinct(unique.view(flat.dtype)), dtype=object)
        return distinct[inverse].tolist()
    return _format_distinct(flat)


def _format_distinct(flat: np.ndarray) -> list[str]:
    values = flat.tolist()
    strs = ["%g" % v for v in values]  # noqa: UP031 (printf semantics are the point)
    with np.errstate(invalid="ignore", over="ignore"):
        parsed = np.array(strs, dtype=np.float64).astype(flat.dtype)
    finite = np.isfinite(flat)
    wide = "%.9g" if flat.dtype == np.float32 else "%.17g"
    for i in np.flatnonzero(finite & (parsed != flat)).tolist():
        strs[i] = wide % values[i]
    for i in np.flatnonzero(finite & (flat == np.trunc(flat))).tolist():
        if "e" not in strs[i] and "." not in strs[i]:
            strs[i] += ".0"
    for i in np.flatnonzero(~finite).tolist():
        v = values[i]
        strs[i] = "NaN" if v != v else ("-Infinity" if v < 0 else "Infinity")
    return strs


def _leaf_strings(array: np.ndarray, as_bytes: bool) -> list[str]:
    """One JSON token per value; ``as_bytes`` (json_tensor.cc IsNamedTensorBytes: a
    DT_STRING output named ``*_bytes``) writes strings as ``{"b64": ...}``."""
    flat = array.ravel()
    if array.dtype in (np.float32, np.float64):
        return format_floats(flat)
    if array.dtype == np.bool_:
        return ["true" if v else "false" for v in flat.tolist()]
    if array.dtype == object:
        if as_bytes:
            return ['{"b64":"' + base64.b64encode(v).decode("ascii") + '"}' for v in flat]
        return [json.dumps(v.decode("utf-8", errors="replace") if isinstance(v, bytes)
                           else str(v)) for v in flat]
    return [str(v) for v in flat.tolist()]


def _nest(leaves: list[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return leaves[0]
    if len(shape) == 1:
        return "[" + ",".join(leaves) + "]"
    step = len(leaves) // shape[0] if shape[0] else 0
    return "[" + ",".join(_nest(leaves[i * step:(i + 1) * step], shape[1:])
                          for i in range(shape[0])) + "]"


def _all_leaves(outputs: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Leaf strings per output; float32 outputs are formatted together (they share values)."""
    floats = [n for n in sorted(outputs) if outputs[n].dtype == np.float32]
    leaves = {n: _leaf_strings(a, n.endswith("_bytes")) for n, a in outputs.items()
              if n not in floats}
    if floats:
        joined = format_floats(np.concatenate([outputs[n].ravel() for n in floats]))
        start = 0
        for name in floats:
            size = outputs[name].size
            leaves[name] = joined[start:start + size]
            start += size
    return leaves


def format_predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """json_tensor.cc MakeJsonFromTensors: ``predictions`` (row) or ``outputs`` (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    all_leaves = _all_leaves(outputs)
    if fmt == COLUMNAR:
        tensors_json = {n: _nest(all_leaves[n], outputs[n].shape) for n in names}
        if len(names) == 1:
            return '{"outputs":' + tensors_json[names[0]] + "}"
        body = ",".join(json.dumps(n) + ":" + tensors_json[n] for n in names)
        return '{"outputs":{' + body + "}}"
    batch = None
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                                   f"{array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    rows: list[list[str]] = [[] for _ in range(batch or 0)]
    for name in names:
        array = outputs[name]
        leaves = all_leaves[name]
        step = len(leaves) // batch if batch else 0
        for i in range(batch or 0):
            text = _nest(leaves[i * step:(i + 1) * step], array.shape[1:])
            rows[i].append(text if len(names) == 1 else json.dumps(name) + ":" + text)
    items = [r[0] if len(names) == 1 else "{" + ",".join(r) + "}" for r in rows]
    return '{"predictions":[' + ",".join(items) + "]}"
