"""Protobuf wire format, written by hand where the request path needs speed.

The gRPC Predict response and the request-log record are built here as bytes:
concatenating length-delimited fields costs less than filling a ``PredictResponse``
message and serializing it with the protobuf runtime. The bytes parse to exactly
the message the protobuf library would build (``tests/serving/test_wire.py``
checks it field by field).
Field numbers are read from the messages' descriptors, not written down.
"""
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2

from core.protowire import length_delimited, tag, varint


def _numbers(message, *names) -> Tuple[int, ...]:
    fields = message.DESCRIPTOR.fields_by_name
    return tuple(fields[n].number for n in names)


_T_DTYPE, _T_SHAPE, _T_FLOAT, _T_DOUBLE, _T_STRING = _numbers(
    tensor_pb2.TensorProto, "dtype", "tensor_shape", "float_val", "double_val", "string_val")
(_S_DIM,) = _numbers(tensor_shape_pb2.TensorShapeProto, "dim")
(_D_SIZE,) = _numbers(tensor_shape_pb2.TensorShapeProto.Dim, "size")
_R_OUTPUTS, _R_SPEC = _numbers(predict_pb2.PredictResponse, "outputs", "model_spec")
_M_NAME, _M_VERSION, _M_SIGNATURE = _numbers(model_pb2.ModelSpec, "name", "version",
                                             "signature_name")
_DTYPE_TAG = tag(_T_DTYPE, 0)
_SIZE_TAG = tag(_D_SIZE, 0)
# Typed repeated fields written packed (fixed width: the array's bytes as they are).
_PACKED = {types_pb2.DT_FLOAT: (_T_FLOAT, "<f4"), types_pb2.DT_DOUBLE: (_T_DOUBLE, "<f8")}


def shape_bytes(shape: Iterable[int]) -> bytes:
    """A serialized TensorShapeProto."""
    return b"".join(length_delimited(_S_DIM, (_SIZE_TAG + varint(d)) if d else b"")
                    for d in shape)


_HEADS: Dict[tuple, bytes] = {}   # (dtype, shape) -> the TensorProto's dtype and shape fields


def tensor_bytes(array: np.ndarray, dtype: int) -> bytes:
    """A serialized TensorProto of ``array`` with typed fields, as TF Serving answers
    (float/double packed, strings one field per value; other types through the
    protobuf library)."""
    key = (dtype, array.shape)
    head = _HEADS.get(key)
    if head is None:   # one per output type and batch shape: kept
        if len(_HEADS) > 1000:
            _HEADS.clear()
        head = _HEADS[key] = (_DTYPE_TAG + varint(dtype)
                              + length_delimited(_T_SHAPE, shape_bytes(array.shape)))
    packed = _PACKED.get(dtype)
    if packed is not None:
        if not array.size:
            return head
        data = np.ascontiguousarray(array, dtype=packed[1]).tobytes()
        return head + length_delimited(packed[0], data)
    if dtype == types_pb2.DT_STRING:
        return head + b"".join(
            length_delimited(_T_STRING, v if isinstance(v, bytes) else str(v).encode())
            for v in array.reshape(-1))
    from serving.tensors import ndarray_to_proto
    return ndarray_to_proto(array, dtype).SerializeToString()


_SPECS: Dict[tuple, bytes] = {}


def model_spec_bytes(name: str, version: Optional[int], signature_name: str) -> bytes:
    """A serialized ModelSpec (kept: one per served version and signature)."""
    key = (name, version, signature_name)
    spec = _SPECS.get(key)
    if spec is None:
        spec = length_delimited(_M_NAME, name.encode())
        if version is not None:
            spec += length_delimited(_M_VERSION, (tag(1, 0) + varint(version)) if version else b"")
        if signature_name:
            spec += length_delimited(_M_SIGNATURE, signature_name.encode())
        if len(_SPECS) > 1000:
            _SPECS.clear()
        _SPECS[key] = spec
    return spec


def predict_response_bytes(spec: bytes, outputs: Iterable[Tuple[str, bytes]]) -> bytes:
    """A serialized PredictResponse from a ``model_spec_bytes`` and (alias, tensor bytes)."""
    body = b"".join(length_delimited(_R_OUTPUTS, length_delimited(1, alias.encode())
                                     + length_delimited(2, tensor))
                    for alias, tensor in outputs)
    return body + length_delimited(_R_SPEC, spec)
