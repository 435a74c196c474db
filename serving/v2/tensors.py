"""Tensors of the Open Inference Protocol (KServe V2) <-> numpy arrays.

A V2 tensor is a name, a datatype (``BOOL``, ``INT64``, ``FP32``, ``BYTES`` ...), a
shape and its elements in row-major order, sent as:

* JSON ``data`` (REST): flat or nested lists; ``BYTES`` elements as UTF-8 strings;
* typed ``contents`` (gRPC ``InferTensorContents``: ``int64_contents``, ``fp32_contents`` ...);
* raw little-endian bytes (gRPC ``raw_input_contents``, and REST's binary tensor data
  extension): ``BYTES`` elements each preceded by its length, 4 bytes little-endian.

Every input is checked against the signature's tensor of the same name (datatype,
rank and fixed dimensions, element count against its shape) and against the
request's tensor budget (``serving.tensors.tensor_budget``) before it is decoded.
"""
import struct
from typing import Dict, List, Sequence

import numpy as np
from tensorflow.core.framework import types_pb2 as DT

from serving.errors import ServingError, invalid
from serving.models import Signature, TensorSpec
from serving.tensors import ndarray_to_json, shape_string

# TensorFlow DataType -> V2 datatype (the protocol's "Tensor Data Types")
DATATYPES = {
    DT.DT_BOOL: "BOOL", DT.DT_UINT8: "UINT8", DT.DT_UINT16: "UINT16", DT.DT_UINT32: "UINT32",
    DT.DT_UINT64: "UINT64", DT.DT_INT8: "INT8", DT.DT_INT16: "INT16", DT.DT_INT32: "INT32",
    DT.DT_INT64: "INT64", DT.DT_HALF: "FP16", DT.DT_FLOAT: "FP32", DT.DT_DOUBLE: "FP64",
    DT.DT_STRING: "BYTES",
}
# V2 datatype -> (little-endian numpy dtype; None: BYTES, InferTensorContents field)
ENCODINGS = {
    "BOOL": ("|b1", "bool_contents"), "UINT8": ("|u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"), "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"), "INT8": ("|i1", "int_contents"),
    "INT16": ("<i2", "int_contents"), "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"), "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"), "BYTES": (None, "bytes_contents"),
}
ITEMSIZE = {name: np.dtype(np_dtype).itemsize if np_dtype else 1
            for name, (np_dtype, _) in ENCODINGS.items()}     # BYTES: at least 1 byte each
# the Python types JSON elements of each kind of datatype may have
_JSON_TYPES = {"BOOL": (bool,), "FP": (int, float), "INT": (int,), "BYTES": (str,)}
_LENGTH = struct.Struct("<I")


def datatype(dtype: int) -> str:
    """The V2 datatype of a TensorFlow DataType (its TF name when V2 has none)."""
    return DATATYPES.get(dtype) or DT.DataType.Name(dtype)


def metadata_shape(spec: TensorSpec) -> List[int]:
    """A signature tensor's shape as V2 metadata writes it (-1: any size; unknown rank: [-1])."""
    return list(spec.shape) if spec.shape is not None else [-1]


def tensor_metadata(specs: Dict[str, TensorSpec]) -> List[dict]:
    return [{"name": alias, "datatype": datatype(spec.dtype), "shape": metadata_shape(spec)}
            for alias, spec in sorted(specs.items())]


class DeclaredInput:
    """An input tensor as a request declares it, its elements not decoded yet."""
    __slots__ = ("name", "datatype", "shape", "count")

    def __init__(self, name, declared_type, shape):
        if not isinstance(name, str) or not name:
            raise invalid("every input needs a 'name' (a string)")
        if not isinstance(declared_type, str):
            raise invalid(f"input '{name[:100]}': 'datatype' must be a string such as FP32, "
                          f"INT64 or BYTES")
        if not isinstance(shape, (list, tuple)):
            raise invalid(f"input '{name[:100]}': 'shape' must be a list of sizes (integers >= 0)")
        count = 1
        for size in shape:
            if type(size) is not int or size < 0:
                raise invalid(f"input '{name[:100]}': 'shape' must be a list of sizes (integers >= 0)")
            count *= size
        self.name, self.datatype, self.shape, self.count = name, declared_type, list(shape), count

    def check(self, signature: Signature, budget: int) -> TensorSpec:
        """The signature's tensor for this input; INVALID_ARGUMENT naming the
        expected datatype or shape when it does not fit, or when its elements
        would take more than ``budget`` bytes."""
        spec = signature.inputs.get(self.name)
        if spec is None:
            raise invalid(f"unexpected input '{self.name[:100]}': signature {signature.name} "
                          f"takes {', '.join(sorted(signature.inputs))} (GET the model's "
                          f"metadata for their datatypes and shapes)")
        wanted = datatype(spec.dtype)
        if wanted not in ENCODINGS:
            raise ServingError("UNIMPLEMENTED", f"input '{self.name}' of signature "
                               f"{signature.name} has datatype {wanted}, which the V2 API of "
                               f"tfxops serve does not take: use the TF Serving API (/v1)")
        if self.datatype != wanted:
            raise invalid(f"input '{self.name}' has datatype {self.datatype[:20]}, but signature "
                          f"{signature.name} takes {wanted}")
        if spec.shape is not None and not _fits(self.shape, spec.shape):
            raise invalid(f"input '{self.name}' has shape {shape_string(self.shape[:8])}, but "
                          f"signature {signature.name} takes {shape_string(spec.shape)} "
                          f"(-1: any size)")
        if self.count * ITEMSIZE[wanted] > budget:
            raise ServingError("RESOURCE_EXHAUSTED", f"input '{self.name}' declares "
                               f"{self.count} elements: more than the request size limit "
                               f"allows (max_request_bytes)")
        return spec

    def shaped(self, flat: np.ndarray) -> np.ndarray:
        """``flat`` (the decoded elements) in the declared shape; INVALID_ARGUMENT
        when their number does not fill it."""
        if flat.size != self.count:
            raise invalid(f"input '{self.name}' has {flat.size} elements, but its shape "
                          f"{shape_string(self.shape)} holds {self.count}")
        return flat.reshape(self.shape)


# ---------------------------------------------------------------- JSON (REST)
def json_elements(declared: DeclaredInput, data) -> np.ndarray:
    """The elements of a REST input's ``data`` (flat or nested lists), flat."""
    if not isinstance(data, list):
        raise invalid(f"input '{declared.name}': 'data' must be a list of its elements")
    if data and type(data[0]) is list:       # nested: the tensor's natural form
        data = _flattened(data, declared.name)
    kind = _json_kind(declared)
    allowed = _JSON_TYPES[kind]
    for value in data:
        if type(value) not in allowed:
            raise invalid(f"input '{declared.name}': element {_excerpt(value)} is not "
                          f"a {declared.datatype} value")
    if kind == "BYTES":
        flat = np.empty(len(data), dtype=object)
        flat[:] = [v.encode("utf-8") for v in data]
        return flat
    try:
        return np.asarray(data, dtype=ENCODINGS[declared.datatype][0])
    except OverflowError:
        raise invalid(f"input '{declared.name}': an element is out of the range of "
                      f"{declared.datatype}") from None


def _fits(shape: List[int], wanted: List[int]) -> bool:
    """Whether ``shape`` fits a signature's ``wanted`` shape (-1: any size)."""
    if len(shape) != len(wanted):
        return False
    for size, want in zip(shape, wanted):
        if want != -1 and want != size:
            return False
    return True


def _json_kind(declared: DeclaredInput) -> str:
    """BOOL, BYTES, FP or INT: which JSON elements ``declared`` takes."""
    if declared.datatype not in ENCODINGS:
        raise invalid(f"input '{declared.name}': datatype {declared.datatype} is not supported "
                      f"by tfxops serve")
    if declared.datatype in ("BOOL", "BYTES"):
        return declared.datatype
    return "FP" if declared.datatype.startswith("FP") else "INT"


def _flattened(data: list, name: str, depth: int = 0) -> list:
    if depth > 32:
        raise invalid(f"input '{name}': 'data' nests lists more than 32 deep")
    out = []
    for value in data:
        if isinstance(value, list):
            out.extend(_flattened(value, name, depth + 1))
        else:
            out.append(value)
    return out


def _excerpt(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def json_output(name: str, array: np.ndarray, v2_type: str) -> dict:
    """A REST response output: name, datatype, shape and flat ``data`` (float32 as
    the shortest text of its value, BYTES as UTF-8 strings)."""
    data = ndarray_to_json(array.reshape(-1), name)
    return {"name": name, "datatype": v2_type, "shape": list(array.shape), "data": data}


# ---------------------------------------------------------------- typed and raw contents (gRPC)
def contents_elements(declared: DeclaredInput, contents) -> np.ndarray:
    """The elements of a gRPC input's typed ``InferTensorContents``, flat."""
    np_dtype, field = ENCODINGS.get(declared.datatype, (None, None))
    if field is None:
        raise invalid(f"input '{declared.name}': datatype {declared.datatype} cannot be sent "
                      f"in 'contents'")
    values = getattr(contents, field)
    if np_dtype is None:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
        return flat
    try:
        return np.asarray(values, dtype=np_dtype)
    except OverflowError:
        raise invalid(f"input '{declared.name}': an element is out of the range of "
                      f"{declared.datatype}") from None


def raw_elements(declared: DeclaredInput, raw: bytes) -> np.ndarray:
    """The elements of a raw little-endian input (``raw_input_contents``), flat."""
    np_dtype = ENCODINGS[declared.datatype][0]
    if np_dtype is not None:
        itemsize = np.dtype(np_dtype).itemsize
        if len(raw) != declared.count * itemsize:
            raise invalid(f"input '{declared.name}': {len(raw)} bytes of raw contents, but "
                          f"{declared.count} {declared.datatype} elements take "
                          f"{declared.count * itemsize}")
        return np.frombuffer(raw, dtype=np_dtype)
    return _length_prefixed(declared, raw)


def _length_prefixed(declared: DeclaredInput, raw: bytes) -> np.ndarray:
    """BYTES elements, each after its length (4 bytes, little-endian)."""
    items, pos, end = [], 0, len(raw)
    while pos < end and len(items) < declared.count:
        if pos + 4 > end:
            break
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + length > end:
            raise invalid(f"input '{declared.name}': element {len(items)} of the raw BYTES "
                          f"contents is cut short ({length} bytes announced, {end - pos} left)")
        items.append(raw[pos:pos + length])
        pos += length
    if pos != end or len(items) != declared.count:
        raise invalid(f"input '{declared.name}': the raw BYTES contents do not hold "
                      f"{declared.count} length-prefixed elements")
    flat = np.empty(len(items), dtype=object)
    flat[:] = items
    return flat


def output_datatype(alias: str, dtype: int) -> str:
    """The V2 datatype an output is answered in; UNIMPLEMENTED when V2 cannot carry it."""
    found = datatype(dtype)
    if found not in ENCODINGS:
        raise ServingError("UNIMPLEMENTED", f"output '{alias}' has datatype {found}, which the "
                           f"V2 API of tfxops serve does not answer: use the TF Serving API (/v1)")
    return found


def raw_bytes(array: np.ndarray, v2_type: str) -> bytes:
    """An output as raw little-endian bytes (``raw_output_contents``)."""
    np_dtype = ENCODINGS[v2_type][0]
    if np_dtype is None:
        return b"".join(_LENGTH.pack(len(v)) + v for v in _as_bytes(array))
    return np.ascontiguousarray(array, dtype=np_dtype).tobytes()


def fill_contents(contents, array: np.ndarray, v2_type: str) -> None:
    """An output's elements into its typed ``InferTensorContents``."""
    field = ENCODINGS[v2_type][1]
    if v2_type == "BYTES":
        contents.bytes_contents.extend(_as_bytes(array))
    else:
        getattr(contents, field).extend(array.reshape(-1).tolist())


def _as_bytes(array: np.ndarray) -> Sequence[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]

