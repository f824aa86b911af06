"""numpy <-> ``tensorflow.TensorProto`` without running TensorFlow ops.

Responses use the typed ``*_val`` fields, as TF Serving does by default
(``PredictResponseTensorSerializationOption::kAsProtoField``); requests are read from
``tensor_content`` or the typed fields, with TF's rule that a single value fills the
whole shape.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import invalid_argument

# DataType enum -> (numpy dtype, TensorProto field holding its values).
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
_FROM_NUMPY = {np_dtype: dt for dt, (np_dtype, _) in _DTYPES.items() if dt != types_pb2.DT_STRING}


def dtype_name(dtype: int) -> str:
    """``DT_FLOAT`` -> ``"float"``, as TF's DataTypeString prints it in error messages."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def numpy_dtype(dtype: int) -> np.dtype:
    if dtype not in _DTYPES:
        raise invalid_argument(f"unsupported tensor type {types_pb2.DataType.Name(dtype)}")
    return _DTYPES[dtype][0]


def data_type(array: np.ndarray) -> int:
    """The DataType of a numpy array (object/bytes arrays are DT_STRING)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return types_pb2.DT_STRING
    if array.dtype not in _FROM_NUMPY:
        raise invalid_argument(f"unsupported numpy dtype {array.dtype}")
    return _FROM_NUMPY[array.dtype]


def shape_proto(shape: tuple[int, ...] | list[int] | None) -> tensor_shape_pb2.TensorShapeProto:
    """A TensorShapeProto; None is unknown rank, -1 an unknown dimension."""
    proto = tensor_shape_pb2.TensorShapeProto()
    if shape is None:
        proto.unknown_rank = True
    else:
        for size in shape:
            proto.dim.add(size=int(size))
    return proto


def to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A response tensor: dtype, shape and the typed value field."""
    dtype = data_type(array)
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(array.shape))
    field = _DTYPES[dtype][1]
    flat = array.ravel()
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        getattr(proto, field).extend(flat.tolist())
    return proto


def from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A request tensor as numpy; InvalidArgument if its values do not fill its shape."""
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument("tensor has unknown rank")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise invalid_argument(f"tensor shape {list(shape)} has a negative dimension")
    np_dtype, field = _DTYPES.get(proto.dtype, (None, None))
    if np_dtype is None:
        raise invalid_argument(
            f"unsupported tensor type {types_pb2.DataType.Name(proto.dtype)}")
    size = int(np.prod(shape, dtype=np.int64))
    if proto.dtype == types_pb2.DT_STRING:
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
    elif proto.tensor_content:
        if len(proto.tensor_content) != size * np_dtype.itemsize:
            raise invalid_argument(
                f"tensor_content has {len(proto.tensor_content)} bytes; shape {list(shape)} "
                f"of {dtype_name(proto.dtype)} needs {size * np_dtype.itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape).copy()
    else:
        values = np.asarray(getattr(proto, field), dtype=np_dtype)
    if len(values) == size:
        return values.reshape(shape)
    if len(values) == 1:  # TF fills the shape with a single given value
        return np.full(shape, values[0], dtype=np_dtype)
    if len(values) == 0 and proto.dtype != types_pb2.DT_STRING:
        return np.zeros(shape, dtype=np_dtype)
    raise invalid_argument(
        f"tensor of shape {list(shape)} has {len(values)} values; expected {size}")
