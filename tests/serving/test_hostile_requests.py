"""Requests built to hurt the server (issue 12's fault classes on the request path):
each gets a 4xx / INVALID_ARGUMENT with a message a person can act on, costs
nothing to the server (no memory kept, no metric series, no Python exception
text in the answer), and the server keeps serving. Each test sends the request
that took the server down or leaked before the fix, to a real server."""
import json
import shutil

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from core import features as F
from core import request_log
from serving.client import predict_request, rest_body, serialize_rows
from serving.errors import MAX_MESSAGE_CHARS
from serving.server import BackgroundServer
from tests.serving.conftest import copy_version, serving_settings
from tests.serving.serve_proc import ServeProcess

PYTHON_TEXT = ("Traceback", "RecursionError", "ValueError", "IndexError", "TypeError",
               "KeyError", "AttributeError", "DecodeError", "set_int_max_str_digits",
               "Unexpected <class")


@pytest.fixture(scope="module")
def base(served):
    return f"http://127.0.0.1:{served.ports.rest}/v1/models/taxi"


def raw_rows(rows, n):
    """Rows of typed feature values, as a REST client posts them to serving_raw."""
    complete = [r for r in rows if all(r[c] != "" for c in F.MODEL_FEATURES)][:n]
    kinds = {"float": float, "int": lambda v: int(float(v)), "string": str}
    return [{c: kinds[F.column_type(c)](r[c]) for c in F.MODEL_FEATURES} for r in complete]


def splat_request(dims, inputs=("trip_miles",), dtype=types_pb2.DT_FLOAT):
    """A PredictRequest of 40-odd bytes per input: one value and a huge shape."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "taxi", "serving_raw"
    for alias in inputs:
        tensor = request.inputs[alias]
        tensor.dtype = dtype
        tensor.tensor_shape.dim.add().size = dims
        tensor.float_val.append(1.0)
    return request


def typed_proto(alias, value):
    """A TensorProto of ``value`` with the serving_raw signature's type for ``alias``."""
    dtype = {"float": tf.float32, "int": tf.int64, "string": tf.string}[F.column_type(alias)]
    return tf.make_tensor_proto(value, dtype=dtype)


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of process ``pid`` (VmHWM)."""
    status = open(f"/proc/{pid}/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def assert_invalid(call, *, contains=""):
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert contains in info.value.details()
    assert not any(text in info.value.details() for text in PYTHON_TEXT), info.value.details()
    return info.value.details()


def assert_still_serving(stub, rows):
    response = stub.Predict(predict_request("taxi", serialize_rows(rows[:2])), timeout=30)
    assert len(response.outputs["probabilities"].float_val) == 2


# ------------------------------------------------------------------ memory bombs
def test_a_splat_of_one_value_over_a_huge_shape_is_refused_before_allocation(
        tmp_path, pushed_model, rows):
    """A 40-byte request with tensor_shape 2^28 took 1 GB each (np.full before any
    check); 15 serving_raw inputs at 2^31 got the server OOM-killed. The server runs
    as its own process: its peak memory is its own."""
    settings = serving_settings(tmp_path)
    copy_version(pushed_model, settings.model_push_dir, 1)
    with ServeProcess(settings, tmp_path) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert_still_serving(stub, rows)
        before = peak_rss_mb(server.proc.pid)
        small = splat_request(2**28)
        assert small.ByteSize() < 64
        for _ in range(3):
            message = assert_invalid(lambda: stub.Predict(small, timeout=30), contains=(
                "of shape [268435456] would take 1.0 GiB once decoded"))
        assert "max_request_bytes" in message
        all_inputs = splat_request(2**31, inputs=F.MODEL_FEATURES)
        assert_invalid(lambda: stub.Predict(all_inputs, timeout=30), contains="max_request_bytes")
        assert peak_rss_mb(server.proc.pid) - before < 100     # +1 GiB a request before
        assert_still_serving(stub, rows)
        channel.close()


def test_a_splat_within_the_budget_is_still_expanded_as_tensorflow_does(stub, rows):
    """TensorFlow's splat (fewer values than the shape: the last one repeats) stays
    legal when the expanded tensor fits: rows of one repeated value."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "taxi", "serving_raw"
    for alias, value in raw_rows(rows, 1)[0].items():
        tensor = request.inputs[alias]
        tensor.CopyFrom(typed_proto(alias, [value]))
        tensor.tensor_shape.dim[0].size = 3            # one value, three rows
    response = stub.Predict(request, timeout=30)
    values = list(response.outputs[next(iter(response.outputs))].float_val)
    assert len(values) == 3 and len(set(values)) == 1


def test_unknown_model_names_create_no_metric_series_and_are_not_echoed(stub, served, base):
    """20 Predicts with 100 KB unknown model names grew the metrics page from 502 B
    to 74 MB; every error message quoted the whole name."""
    metrics_url = f"http://127.0.0.1:{served.ports.rest}/monitoring/prometheus/metrics"
    for i in range(20):
        request = predict_request("m" * 100_000 + str(i), [b""])
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(info.value.details()) <= MAX_MESSAGE_CHARS + 40
    for i in range(20):      # any letters after the colon are a "method" in the URL
        answer = requests.post(f"{base}:{'x' * 100_000}{chr(97 + i)}", json={}, timeout=30)
        assert answer.status_code == 400 and len(answer.json()["error"]) <= MAX_MESSAGE_CHARS + 40
    page = requests.get(metrics_url, timeout=30).text
    assert "m" * 1000 not in page and "x" * 1000 not in page and len(page) < 200_000
    assert 'model_name="unknown",status="NOT_FOUND"' in page
    assert 'API="other",entrypoint="REST"' in page


# ------------------------------------------------------------------ malformed input
def test_rank_0_inputs_after_rank_1_are_refused(stub, base, rows):
    """The request-plan cache keyed on shape[1:], () for rank 0 and rank 1: a rank-0
    request after a rank-1 one of the same signature ran and failed with a 500
    IndexError (REST) / UNKNOWN (gRPC)."""
    row = raw_rows(rows, 1)[0]
    rank1 = {"signature_name": "serving_raw", "inputs": {k: [v] for k, v in row.items()}}
    rank0 = {"signature_name": "serving_raw", "inputs": row}
    assert requests.post(base + ":predict", json=rank1, timeout=30).status_code == 200
    answer = requests.post(base + ":predict", json=rank0, timeout=30)
    assert answer.status_code == 400 and "has shape []" in answer.json()["error"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "taxi", "serving_raw"
    for alias, value in row.items():
        request.inputs[alias].CopyFrom(typed_proto(alias, [value]))
    stub.Predict(request, timeout=30)
    for alias, value in row.items():
        request.inputs[alias].CopyFrom(typed_proto(alias, value))
    assert_invalid(lambda: stub.Predict(request, timeout=30), contains="has shape []")


def test_deeply_nested_json_and_tensors_of_high_rank_are_refused(base, stub):
    """100k nested arrays: 500 RecursionError; 900 levels: recursion in the converter;
    40 levels (numpy's limit is 32): 500, and a gRPC tensor of rank 40: INTERNAL."""
    for body in ("[" * 100_000 + "]" * 100_000,
                 '{"instances": ' + "[" * 900 + "1" + "]" * 900 + "}",
                 '{"instances": ' + "[" * 40 + '{"b64": ""}' + "]" * 40 + "}"):
        answer = requests.post(base + ":predict", data=body, timeout=30)
        assert answer.status_code == 400, answer.text[:300]
        assert "deep" in answer.json()["error"]
        assert not any(text in answer.text for text in PYTHON_TEXT)
    request = predict_request("taxi", [b""])
    for _ in range(39):
        request.inputs["examples"].tensor_shape.dim.add().size = 1
    assert_invalid(lambda: stub.Predict(request, timeout=30),
                   contains="tensor parsing error: examples")


@pytest.mark.parametrize("digits", [5_000, 100_000])
def test_a_version_too_long_for_a_number_is_a_400(base, digits):
    """5,000 digits: 500 (Python's int conversion limit); 100,000: connection closed."""
    url = base.replace("/v1/models/taxi", f"/v1/models/taxi/versions/{'9' * digits}:predict")
    answer = requests.post(url, json={"instances": []}, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("Failed to convert version: 999")
    assert len(answer.json()["error"]) <= MAX_MESSAGE_CHARS + 40


def test_bad_tensor_bytes_and_unparseable_requests_are_invalid_argument(stub, channel):
    """A 3-byte tensor_content for a float tensor, and bytes that are no
    PredictRequest: UNKNOWN with Python's exception text before the fix."""
    request = splat_request(1)
    tensor = request.inputs["trip_miles"]
    tensor.ClearField("float_val")
    tensor.tensor_content = b"abc"
    assert_invalid(lambda: stub.Predict(request, timeout=30),
                   contains="tensor parsing error: trip_miles")       # TF Serving's words
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    for garbage in (b"\xff\xff\xff\x01garbage", b"\x0a\xff\xff\xff\xff\x0f"):
        assert_invalid(lambda: raw(garbage, timeout=30),
                       contains="not a tensorflow.serving.PredictRequest")
    status = channel.unary_unary("/tensorflow.serving.ModelService/GetModelStatus")
    assert_invalid(lambda: status(b"\xff\xff", timeout=30),
                   contains="not a tensorflow.serving.GetModelStatusRequest")


def test_a_chunked_body_over_the_limit_gets_413_json(tmp_path, pushed_model):
    """A chunked body over max_request_bytes got a bare 400 with no body."""
    settings = serving_settings(tmp_path, max_request_bytes=100_000)
    copy_version(pushed_model, settings.model_push_dir, 1)
    with BackgroundServer(settings, enable_logging=False) as server:
        url = f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi:predict"
        chunks = (b"x" * 30_000 for _ in range(10))           # no Content-Length: chunked
        answer = requests.post(url, data=chunks, timeout=30)
        assert answer.status_code == 413
        assert "max_request_bytes" in answer.json()["error"]
        assert requests.get(url.replace(":predict", ""), timeout=30).status_code == 200


# ------------------------------------------------------------------ NaN and Infinity
@pytest.fixture(scope="module")
def log_model(tmp_path_factory):
    """A real SavedModel whose output is log(x): -Infinity at 0, NaN below."""
    directory = tmp_path_factory.mktemp("log_model")

    class LogModel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.math.log(x)}

    module = LogModel()
    tf.saved_model.save(module, str(directory / "1"), signatures={"serving_default": module.serve})
    return directory


def test_non_finite_outputs_are_written_as_tf_serving_writes_them(tmp_path, log_model):
    """NaN/Infinity in outputs became null; TF Serving's REST API writes NaN and
    Infinity tokens (its "JSON conformance" section)."""
    settings = serving_settings(tmp_path, model_name="logm")
    shutil.copytree(log_model, settings.model_push_dir)
    with BackgroundServer(settings, enable_logging=False) as server:
        url = f"http://127.0.0.1:{server.ports.rest}/v1/models/logm:predict"
        answer = requests.post(url, json={"instances": [1.0, 0.0, -1.0]}, timeout=30)
        assert answer.status_code == 200
        assert answer.text == '{"predictions":[0.0,-Infinity,NaN]}'
        values = json.loads(answer.text)["predictions"]           # Python's json reads them
        assert values[0] == 0.0 and values[1] == float("-inf") and np.isnan(values[2])
        columnar = requests.post(url, json={"inputs": [2.0, 0.0]}, timeout=30)
        assert columnar.text.startswith('{"outputs":[0.6931') and "-Infinity" in columnar.text


# ------------------------------------------------------------------ rejected calls are logged
def test_rejected_calls_are_logged_with_what_was_sent(tmp_path, pushed_model, rows):
    """Only answered calls were logged: a client that stopped sending a feature
    was invisible to the monitor. Rejected REST and gRPC calls are logged as
    received (rows as tf.Examples, typed by the signature), with the code and
    message the caller got, under the caller's request id."""
    settings = serving_settings(tmp_path)
    copy_version(pushed_model, settings.model_push_dir, 3)
    sent = raw_rows(rows, 2)
    without_miles = [{k: v for k, v in r.items() if k != "trip_miles"} for r in sent]
    empty_miles = [dict(r, trip_miles="") for r in sent]
    huge_hour = [dict(r, trip_start_hour=2**63 + 5) for r in sent]   # a uint64, no int64
    with BackgroundServer(settings) as server:
        url = f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi:predict"
        for rid, instances in (("omitted", without_miles), ("empty", empty_miles),
                               ("huge", huge_hour)):
            answer = requests.post(url, headers={"X-Request-Id": rid}, timeout=30,
                                   json={"signature_name": "serving_raw", "instances": instances})
            assert answer.status_code == 400
        answer = requests.post(url, data=b"{not json", headers={"X-Request-Id": "garbage"},
                               timeout=30)
        assert answer.status_code == 400
        answer = requests.post(url.replace("taxi", "nope"), json=rest_body(serialize_rows(rows[:1])),
                               headers={"X-Request-Id": "unknown-model"}, timeout=30)
        assert answer.status_code == 404
        channel = grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = splat_request(2**28)
        with pytest.raises(grpc.RpcError):
            stub.Predict(request, timeout=30, metadata=(("x-request-id", "bomb"),))
        channel.close()
    logged = {r.request_id: r for r in request_log.read_request_log(settings.request_logs_path)}
    assert set(logged) == {"omitted", "empty", "huge", "garbage", "unknown-model", "bomb"}
    omitted, empty = logged["omitted"], logged["empty"]
    assert omitted.error[0] == "INVALID_ARGUMENT" and "keys must be equal to" in omitted.error[1]
    assert omitted.model_version == 3 and omitted.signature_name == "serving_raw"
    assert [sorted(e.features.feature) for e in omitted.examples] == \
        [sorted(r) for r in without_miles]
    assert omitted.examples[0].features.feature["fare"].float_list.value[0] == \
        pytest.approx(sent[0]["fare"])
    assert [list(e.features.feature["trip_miles"].float_list.value) for e in empty.examples] \
        == [[], []]                          # an empty string: an empty list, as in training
    assert [list(e.features.feature["trip_start_hour"].bytes_list.value)
            for e in logged["huge"].examples] == [[str(2**63 + 5).encode()]] * 2   # as text
    assert logged["garbage"].error[0] == "INVALID_ARGUMENT" and logged["garbage"].examples == []
    assert logged["unknown-model"].error[0] == "NOT_FOUND"
    assert logged["unknown-model"].model_name == "nope" and logged["unknown-model"].model_version is None
    assert logged["bomb"].error[0] == "INVALID_ARGUMENT"
    assert logged["bomb"].examples == []     # logged as sent; a reader never expands it


def test_rest_and_grpc_log_a_rejected_call_alike(tmp_path, pushed_model, rows):
    """Both front ends log a refused call through one point (serving.api): under the
    version the caller asked for (REST used to log none for an unknown version) and
    the signature that would have answered (gRPC used to log "" when none was named)."""
    settings = serving_settings(tmp_path)
    copy_version(pushed_model, settings.model_push_dir, 3)
    body = rest_body(serialize_rows(rows[:1]))
    with BackgroundServer(settings) as server:
        base = f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi"
        answer = requests.post(f"{base}/versions/99:predict", json=body, timeout=30,
                               headers={"X-Request-Id": "rest-version"})
        assert answer.status_code == 404
        answer = requests.post(f"{base}:predict", json={"instances": [{"nope": 1.0}]}, timeout=30,
                               headers={"X-Request-Id": "rest-signature"})
        assert answer.status_code == 400
        channel = grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "taxi"                       # no signature named
        request.inputs["nope"].CopyFrom(tf.make_tensor_proto([1.0]))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request, timeout=30, metadata=(("x-request-id", "grpc-signature"),))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        channel.close()
    logged = {r.request_id: r for r in request_log.read_request_log(settings.request_logs_path)}
    assert logged["rest-version"].error[0] == "NOT_FOUND" and logged["rest-version"].model_version == 99
    for rid in ("rest-signature", "grpc-signature"):
        assert logged[rid].error[0] == "INVALID_ARGUMENT"
        assert logged[rid].model_version == 3 and logged[rid].signature_name == F.DEFAULT_SIGNATURE
