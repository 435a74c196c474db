"""The hand-written protobuf wire format parses to exactly the messages the protobuf
library builds (the gRPC Predict response is sent as these bytes)."""
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from serving import wire
from serving.tensors import ndarray_to_proto

ARRAYS = [
    (np.array([0.25, -1.5, np.inf], dtype=np.float32), types_pb2.DT_FLOAT),
    (np.array([[0.1], [0.9]], dtype=np.float32), types_pb2.DT_FLOAT),
    (np.arange(6, dtype=np.float64).reshape(2, 3)[:, ::2], types_pb2.DT_DOUBLE),  # not contiguous
    (np.zeros((0, 3), dtype=np.float32), types_pb2.DT_FLOAT),
    (np.array([b"a", b"", "\u00e9".encode()], dtype=object), types_pb2.DT_STRING),
    (np.array([[1, -2], [3, 2 ** 40]], dtype=np.int64), types_pb2.DT_INT64),
    (np.array(3.5, dtype=np.float32), types_pb2.DT_FLOAT),
]


@pytest.mark.parametrize("array,dtype", ARRAYS)
def test_tensor_bytes_parse_to_the_library_tensor(array, dtype):
    from tensorflow.core.framework import tensor_pb2

    ours = tensor_pb2.TensorProto.FromString(wire.tensor_bytes(array, dtype))
    assert ours == ndarray_to_proto(array, dtype)


@pytest.mark.parametrize("version,signature", [(1795743875, "serving_default"), (None, ""),
                                               (0, "serving_raw")])
def test_predict_response_bytes_parse_to_the_library_response(version, signature):
    outputs = {"probabilities": np.array([[0.5], [0.25]], dtype=np.float32),
               "labels": np.array([b"0", b"1"], dtype=object)}
    dtypes = {"probabilities": types_pb2.DT_FLOAT, "labels": types_pb2.DT_STRING}
    data = wire.predict_response_bytes(
        wire.model_spec_bytes("taxi", version, signature),
        [(alias, wire.tensor_bytes(a, dtypes[alias])) for alias, a in outputs.items()])

    expected = predict_pb2.PredictResponse()
    expected.model_spec.name = "taxi"
    if version is not None:
        expected.model_spec.version.value = version
    expected.model_spec.signature_name = signature
    for alias, a in outputs.items():
        ndarray_to_proto(a, dtypes[alias], expected.outputs[alias])
    ours = predict_pb2.PredictResponse.FromString(data)
    assert ours == expected
    assert ours.model_spec.HasField("version") == (version is not None)


def test_varint_matches_protobuf_for_negative_and_large_values():
    from tensorflow.core.framework import tensor_shape_pb2

    for size in (1, 127, 128, 300, 2 ** 35):
        shape = tensor_shape_pb2.TensorShapeProto()
        shape.dim.add().size = size
        assert wire.shape_bytes([size]) == shape.SerializeToString()
    assert wire.varint(-1) == b"\xff" * 9 + b"\x01"
