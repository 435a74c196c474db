"""gRPC conformance, with TF Serving's own stubs (tensorflow-serving-api)."""
import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     regression_pb2)

from serving.client import predict_request, serialize_rows
from core.examples import row_to_example
from core import features as F


def test_predict_matches_rest_shape(stub, rows):
    request = predict_request("taxi", serialize_rows(rows[:5]))
    response, call = stub.Predict.with_call(request, timeout=30,
                                            metadata=(("x-request-id", "grpc-1"),))
    probs = tf.make_ndarray(response.outputs["probabilities"])
    assert probs.shape == (5,) and ((probs >= 0) & (probs <= 1)).all()
    assert response.model_spec.name == "taxi" and response.model_spec.version.value == 7
    assert response.model_spec.signature_name == "serving_default"
    assert ("x-request-id", "grpc-1") in tuple(call.trailing_metadata())
    # tf.make_tensor_proto-built requests (tensor_content / string_val) work too
    request2 = predict_pb2.PredictRequest()
    request2.model_spec.name = "taxi"
    request2.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialize_rows(rows[:5]), dtype=tf.string))
    assert list(stub.Predict(request2, timeout=30).outputs["probabilities"].float_val) == \
        list(response.outputs["probabilities"].float_val)


def test_classify_regress(stub, rows):
    ex = [row_to_example(r, F.SERVING_FEATURES) for r in rows[:3]]
    p = list(stub.Predict(predict_request("taxi", [e.SerializeToString() for e in ex]),
                          timeout=30).outputs["probabilities"].float_val)
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = "taxi"
    creq.input.example_list.examples.extend(ex)
    cres = stub.Classify(creq, timeout=30)
    assert [[c.label for c in k.classes] for k in cres.result.classifications] == [["0", "1"]] * 3
    assert [k.classes[1].score for k in cres.result.classifications] == pytest.approx(p, abs=1e-6)
    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name = "taxi"
    rreq.input.example_list.examples.extend(ex)
    assert [r.value for r in stub.Regress(rreq, timeout=30).result.regressions] == pytest.approx(p, abs=1e-6)


def test_metadata_and_status(stub, channel):
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "taxi"
    req.metadata_field.append("signature_def")
    res = stub.GetModelMetadata(req, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    res.metadata["signature_def"].Unpack(sig_map)
    assert {"serving_default", "serving_raw", "transform_features"} <= set(sig_map.signature_def)
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "taxi"}), timeout=30)
    (v,) = status.model_version_status
    assert v.version == 7 and v.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def _predict_error(stub, request):
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    return info.value.code(), info.value.details()


def test_errors(stub, channel, rows):
    good = serialize_rows(rows[:1])
    code, msg = _predict_error(stub, predict_request("nope", good))
    assert code == grpc.StatusCode.NOT_FOUND and msg == "Servable not found for request: Latest(nope)"
    code, msg = _predict_error(stub, predict_request("taxi", good, version=3))
    assert code == grpc.StatusCode.NOT_FOUND and msg == "Servable not found for request: Specific(taxi, 3)"
    code, msg = _predict_error(stub, predict_request("taxi", good, signature_name="nope"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and 'Serving signature key "nope" not found' in msg
    req = predict_request("taxi", good)
    req.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0]))
    code, msg = _predict_error(stub, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {extra}" in msg
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "taxi"
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    code, msg = _predict_error(stub, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "to be string but float is provided" in msg
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "taxi"
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto([good, good], dtype=tf.string))
    code, msg = _predict_error(stub, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expects [-1]" in msg
    req = predict_request("taxi", good)
    req.output_filter.append("nope")
    code, msg = _predict_error(stub, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "output tensor alias not found" in msg
    code, msg = _predict_error(stub, predict_request("taxi", []))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    req = predict_request("taxi", good)
    req.model_spec.version_label = "canary"
    code, msg = _predict_error(stub, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Unrecognized servable version label" in msg
    status = model_service_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        status.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "nope"}),
                              timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = "taxi"
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(creq, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
