"""Tensors between their three forms: numpy arrays (what the model runs on),
``tensorflow.TensorProto`` (gRPC and the request log) and JSON (the REST API).

Lean on purpose: no TensorFlow eager ops on the request path. JSON conversion
follows TF Serving's ``json_tensor.cc``: ``{"b64": "..."}`` for binary strings,
string outputs whose name ends in ``_bytes`` are written back as ``{"b64": ...}``,
floats are written with the shortest text that round-trips their float32/64 value.
"""
import base64
import math
from typing import Any, Dict, List

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import ServingError, invalid

DT = types_pb2
# DataType enum -> (numpy dtype, TensorProto repeated field)
_DTYPES = {
    DT.DT_FLOAT: (np.float32, "float_val"),
    DT.DT_DOUBLE: (np.float64, "double_val"),
    DT.DT_INT32: (np.int32, "int_val"),
    DT.DT_INT16: (np.int16, "int_val"),
    DT.DT_INT8: (np.int8, "int_val"),
    DT.DT_UINT8: (np.uint8, "int_val"),
    DT.DT_UINT16: (np.uint16, "int_val"),
    DT.DT_INT64: (np.int64, "int64_val"),
    DT.DT_UINT32: (np.uint32, "uint32_val"),
    DT.DT_UINT64: (np.uint64, "uint64_val"),
    DT.DT_BOOL: (np.bool_, "bool_val"),
    DT.DT_STRING: (object, "string_val"),
}
_NP_TO_DT = {np.dtype(v[0]): k for k, v in _DTYPES.items() if v[0] is not object}


def dtype_name(dtype: int) -> str:
    """'float', 'string', ... as TensorFlow prints a DataType in its errors."""
    return types_pb2.DataType.Name(dtype)[3:].lower()


def numpy_dtype(dtype: int):
    if dtype not in _DTYPES:
        raise _unsupported(dtype)
    return _DTYPES[dtype][0]


def _unsupported(dtype: int) -> ServingError:
    return ServingError("UNIMPLEMENTED", f"Conversion of JSON Value to type: "
                        f"{types_pb2.DataType.Name(dtype)} is not supported")


# ---------------------------------------------------------------- TensorProto
MAX_RANK = 32                   # numpy's NPY_MAXDIMS (TensorFlow allows 254)
TENSOR_BYTES_PER_REQUEST_BYTE = 8
"""A request's tensors may take this many times ``max_request_bytes`` once
decoded: the widest legitimate expansion (a 1-byte varint in ``int64_val``
becomes 8 bytes). Anything larger is a shape the wire bytes do not carry,
such as a single value "splat" over 2^28 elements, and is refused before
anything is allocated."""


def tensor_budget(max_request_bytes: int) -> int:
    """Bytes a request's decoded tensors may take, from the request size limit."""
    return TENSOR_BYTES_PER_REQUEST_BYTE * max_request_bytes


DEFAULT_TENSOR_BUDGET = tensor_budget(10 * 1024 * 1024)   # readers of logged requests


def _parsing_error(alias: str) -> ServingError:
    return invalid(f"tensor parsing error: {alias}")      # TF Serving's message


def _checked_shape(proto: tensor_pb2.TensorProto, alias: str) -> List[int]:
    shape = proto.tensor_shape
    if shape.unknown_rank or len(shape.dim) > MAX_RANK or any(d.size < 0 for d in shape.dim):
        raise _parsing_error(alias)
    return [d.size for d in shape.dim]


def protos_to_arrays(protos, max_bytes: int = DEFAULT_TENSOR_BUDGET) -> Dict[str, np.ndarray]:
    """Every tensor of a request (alias -> TensorProto) as numpy arrays, together
    at most ``max_bytes`` (``tensor_budget``) once decoded. Values that are on
    the wire are bounded by the request size already; what is checked before
    allocating is the one expansion the wire allows, a splat."""
    arrays, left = {}, max_bytes
    for alias, proto in protos.items():
        array = arrays[alias] = proto_to_ndarray(proto, left, alias)
        left -= array.nbytes                  # object arrays: a pointer per string
    return arrays


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _clip(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def proto_to_ndarray(proto: tensor_pb2.TensorProto, max_bytes: int = DEFAULT_TENSOR_BUDGET,
                     alias: str = "") -> np.ndarray:
    """A TensorProto (typed fields or tensor_content) as a numpy array; refused
    (INVALID_ARGUMENT) when malformed or larger than ``max_bytes`` decoded."""
    dims = proto.tensor_shape.dim
    dtype = proto.dtype
    if dtype == DT.DT_STRING and len(dims) == 1 and not proto.tensor_content:
        # The common case (serialized tf.Examples): an object array straight from
        # string_val, no generic conversion.
        values = list(proto.string_val)
        if len(values) == dims[0].size:
            array = np.empty(len(values), dtype=object)
            array[:] = values
            return array
    if dtype not in _DTYPES:
        raise _unsupported_tensor(dtype, alias)
    np_dtype, field = _DTYPES[dtype]
    shape = _checked_shape(proto, alias)
    count = math.prod(shape)
    if proto.tensor_content:
        if np_dtype is object or len(proto.tensor_content) != count * np.dtype(np_dtype).itemsize:
            raise _parsing_error(alias)
        array = np.frombuffer(proto.tensor_content, dtype=np_dtype)
    elif np_dtype is object:
        array = np.empty(len(proto.string_val), dtype=object)
        array[:] = list(proto.string_val)
    else:
        array = _typed_values(getattr(proto, field), np_dtype, alias)
    if array.size != count:
        if array.size == 1 and count > 1:   # TensorFlow's splat of a single value
            _check_expansion(count * array.itemsize, max_bytes, alias, shape)
            array = np.full(count, array[0], dtype=array.dtype)
        elif array.size != 0 or count != 0:
            raise invalid(f"Tensor has {array.size} values, but its shape "
                          f"{shape_string(shape)} needs {count}")
    return array.reshape(shape)


def _unsupported_tensor(dtype: int, alias: str) -> ServingError:
    if dtype in types_pb2.DataType.values():
        return invalid(f"Unsupported tensor type: {types_pb2.DataType.Name(dtype)}")
    return _parsing_error(alias)


def _check_expansion(nbytes: int, max_bytes: int, alias: str, shape: List[int]) -> None:
    if nbytes > max_bytes:
        raise invalid(f"input {_clip(alias)} of shape {shape_string(shape)} would take "
                      f"{_size(nbytes)} once decoded, more than this request may take: "
                      f"{_size(max(max_bytes, 0))} left of {TENSOR_BYTES_PER_REQUEST_BYTE} x "
                      f"max_request_bytes")


def _typed_values(values, np_dtype, alias: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np_dtype)
    except (OverflowError, ValueError):        # e.g. 300 in the int_val of a uint8 tensor
        raise _parsing_error(alias) from None


def ndarray_to_proto(array: np.ndarray, dtype: int = None,
                     proto: tensor_pb2.TensorProto = None) -> tensor_pb2.TensorProto:
    """A numpy array as a TensorProto with typed repeated fields (as TF Serving answers)."""
    proto = tensor_pb2.TensorProto() if proto is None else proto
    if dtype is None:
        dtype = DT.DT_STRING if array.dtype == object or array.dtype.kind in "SU" else \
            _NP_TO_DT.get(array.dtype)
        if dtype is None:
            raise invalid(f"cannot encode a numpy array of dtype {array.dtype}")
    proto.dtype = dtype
    proto.tensor_shape.SetInParent()    # present even for a scalar, as TensorFlow writes it
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    field = _DTYPES[dtype][1]
    flat = array.reshape(-1)
    if dtype == DT.DT_STRING:
        proto.string_val.extend([v if isinstance(v, bytes) else str(v).encode() for v in flat])
    else:
        getattr(proto, field).extend(flat.tolist())
    return proto


# ---------------------------------------------------------------- JSON in
def _decode_b64(value) -> bytes:
    if len(value) != 1 or not isinstance(value.get("b64"), str):
        raise invalid(f"JSON Value: {json_excerpt(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (ValueError, TypeError):
        raise invalid("Unable to base64 decode") from None


def json_excerpt(value, limit: int = 200) -> str:
    """``value`` as compact JSON, cut to ``limit`` characters (how error messages
    quote what a caller sent)."""
    import json
    try:
        text = json.dumps(value, separators=(",", ":"))
    except RecursionError:
        text = "<a value nested too deeply to quote>"
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value) -> str:
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


def _type_error(value, dtype: int):
    return invalid(f"JSON Value: {json_excerpt(value)} Type: {_json_type(value)} is not of "
                   f"expected type: {dtype_name(dtype)}")


def _shape_of(value) -> List[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def json_to_ndarray(value, dtype: int) -> np.ndarray:
    """One tensor from a JSON value (scalar, nested lists, or {"b64": ...})."""
    if dtype not in _DTYPES:
        raise _unsupported(dtype)
    shape = _shape_of(value)
    if len(shape) > MAX_RANK:
        raise invalid(f"JSON Value: nested {len(shape)} lists deep; a tensor has at most "
                      f"{MAX_RANK} dimensions")
    flat: List[Any] = []
    _flatten(value, 0, shape, flat)
    np_dtype = _DTYPES[dtype][0]
    if dtype == DT.DT_STRING:
        out = np.empty(len(flat), dtype=object)
        for i, v in enumerate(flat):
            if isinstance(v, str):
                out[i] = v.encode("utf-8")
            elif isinstance(v, dict):
                out[i] = _decode_b64(v)
            else:
                raise _type_error(v, dtype)
    else:
        for v in flat:
            _check_scalar(v, dtype)
        try:
            out = np.asarray(flat, dtype=np_dtype)
        except OverflowError:
            raise invalid(f"Cannot convert JSON value: {json_excerpt(flat)} to "
                          f"{dtype_name(dtype)} without loss of precision.") from None
    return out.reshape(shape)


_INT_DTYPES = {DT.DT_INT32, DT.DT_INT16, DT.DT_INT8, DT.DT_UINT8, DT.DT_UINT16,
               DT.DT_INT64, DT.DT_UINT32, DT.DT_UINT64}


def _check_scalar(value, dtype: int):
    if dtype == DT.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
    elif dtype in _INT_DTYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(value, dtype)
    else:  # float / double
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)


def _flatten(value, level: int, shape: List[int], out: List[Any]):
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(f"JSON Value: {json_excerpt(value)} found at incorrect level: {level + 1} "
                          f"in the JSON DOM. Expected at level: {len(shape)}")
        out.append(value)
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                      f"expected size: {shape[level]}")
    if level == len(shape) - 1 and not any(isinstance(v, list) for v in value):
        out.extend(value)     # fast path: the innermost list
        return
    for item in value:
        _flatten(item, level + 1, shape, out)


# ---------------------------------------------------------------- JSON out
def _float_values(array: np.ndarray) -> List[float]:
    if array.dtype == np.float32:
        # Shortest text that round-trips the float32 (as TF Serving writes it).
        return [float(repr(v)) if np.isfinite(v) else float(v) for v in array.reshape(-1)]
    return array.reshape(-1).tolist()


def ndarray_to_json(array: np.ndarray, name: str = "") -> Any:
    """A numpy array as nested JSON lists (a scalar for rank 0)."""
    if array.dtype == object or array.dtype.kind == "S":
        as_b64 = name.endswith("_bytes")
        flat = []
        for v in array.reshape(-1):
            v = v if isinstance(v, bytes) else str(v).encode()
            if as_b64:
                flat.append({"b64": base64.b64encode(v).decode("ascii")})
            else:
                try:
                    flat.append(v.decode("utf-8"))
                except UnicodeDecodeError:
                    flat.append({"b64": base64.b64encode(v).decode("ascii")})
    elif array.dtype.kind == "f":
        flat = _float_values(array)
    else:
        flat = array.reshape(-1).tolist()
    if array.ndim == 0:
        return flat[0]
    return _nest(flat, list(array.shape))


def _nest(flat: List[Any], shape: List[int]):
    if len(shape) == 1:
        return flat
    step = int(np.prod(shape[1:])) if shape[1:] else 1
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def shape_string(shape: List[int]) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


