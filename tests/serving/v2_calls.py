"""V2 (Open Inference Protocol) requests for the taxi model, as a V2 client builds
them from raw feature rows: what tests/serving/test_v2*.py send."""
import struct
from typing import Dict, List

import grpc
import numpy as np

from core import features as F
from serving.v2 import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc

V2_TYPES = {"float": "FP32", "int": "INT64", "string": "BYTES"}     # core.features' types
NUMPY = {"FP32": np.float32, "INT64": np.int64, "BYTES": object}
CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents", "BYTES": "bytes_contents"}


def complete_rows(rows: List[Dict], n: int) -> List[Dict]:
    """``n`` CSV rows with a value for every model input, typed as serving_raw takes them."""
    full = [r for r in rows if all(r[c] != "" for c in F.MODEL_FEATURES)][:n]
    return [{c: float(r[c]) if F.column_type(c) == "float" else int(float(r[c]))
             if F.column_type(c) == "int" else r[c] for c in F.MODEL_FEATURES} for r in full]


def columns(rows: List[Dict]) -> Dict[str, np.ndarray]:
    """Each model input as a column of the rows (the V2 tensors)."""
    out = {}
    for name in F.MODEL_FEATURES:
        kind = V2_TYPES[F.column_type(name)]
        values = [r[name].encode() if kind == "BYTES" else r[name] for r in rows]
        array = np.empty(len(values), dtype=object) if kind == "BYTES" else None
        if array is None:
            array = np.asarray(values, dtype=NUMPY[kind])
        else:
            array[:] = values
        out[name] = array
    return out


def json_inputs(rows: List[Dict]) -> List[Dict]:
    return [{"name": name, "shape": [len(rows)], "datatype": V2_TYPES[F.column_type(name)],
             "data": [r[name] for r in rows]} for name in F.MODEL_FEATURES]


def raw(array: np.ndarray) -> bytes:
    """A tensor's raw little-endian bytes (BYTES: each element after its 4-byte length)."""
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in array)
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def binary_body(rows: List[Dict], binary_output: bool = True):
    """(body, header length) of a REST infer with every input as binary data."""
    import json
    tensors = columns(rows)
    blobs = [raw(tensors[name]) for name in F.MODEL_FEATURES]
    head = {"inputs": [{"name": name, "shape": [len(rows)], "datatype": V2_TYPES[F.column_type(name)],
                        "parameters": {"binary_data_size": len(blob)}}
                       for name, blob in zip(F.MODEL_FEATURES, blobs)],
            "outputs": [{"name": F.PREDICTION_KEY, "parameters": {"binary_data": binary_output}}]}
    header = json.dumps(head).encode()
    return header + b"".join(blobs), len(header)


def infer_request(rows: List[Dict], raw_contents: bool, model: str = "taxi",
                  request_id: str = "") -> pb.ModelInferRequest:
    """A gRPC ModelInferRequest of the rows, typed contents or raw_input_contents."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, array in columns(rows).items():
        kind = V2_TYPES[F.column_type(name)]
        tensor = request.inputs.add(name=name, datatype=kind, shape=[len(rows)])
        if raw_contents:
            request.raw_input_contents.append(raw(array))
        else:
            getattr(tensor.contents, CONTENTS[kind]).extend(array.tolist())
    return request


def stub(port: int, channel_holder: list = None) -> pb_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    if channel_holder is not None:
        channel_holder.append(channel)
    return pb_grpc.GRPCInferenceServiceStub(channel)


def grpc_error(call) -> tuple:
    """(status code, details) of a gRPC call expected to fail."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details()
    raise AssertionError("the call succeeded")


def no_python_text(message: str) -> bool:
    """Whether an error message is free of Python's exception text."""
    return not any(s in message for s in ("Traceback", "File \"", "Error(", "Exception", "<class"))
