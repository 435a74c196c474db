"""The Open Inference Protocol (KServe V2) on a real server serving the pipeline's
pushed taxi model: REST and gRPC (the generated stubs of the vendored proto),
answers equal to TF Serving's API's, errors in the spec's shapes, the calls in the
request log and the monitor's window rows."""
import json
import struct

import grpc
import numpy as np
import pytest
import requests

from core import features as F, request_log
from monitoring import window
from serving.server import BackgroundServer
from serving.v2 import grpc_predict_v2_pb2 as pb
from tests.serving.conftest import copy_version, serving_settings
from tests.serving.serve_proc import until
from tests.serving.v2_calls import (V2_TYPES, binary_body, complete_rows, grpc_error,
                                    infer_request, json_inputs, no_python_text, stub)

VERSION = 7


@pytest.fixture(scope="module")
def server(tmp_path_factory, pushed_model):
    """One server, each log record in a file of its own (closed at once, readable)."""
    settings = serving_settings(tmp_path_factory.mktemp("v2"), log_rotate_records=1)
    copy_version(pushed_model, settings.model_push_dir, VERSION)
    with BackgroundServer(settings) as background:
        background.settings = settings
        background.base = f"http://127.0.0.1:{background.ports.rest}"
        yield background


@pytest.fixture(scope="module")
def v2(server):
    channels = []
    yield stub(server.ports.grpc, channels)
    channels[0].close()


@pytest.fixture(scope="module")
def trips(taxi_rows):
    return complete_rows(taxi_rows, 3)


def v1_predictions(server, rows):
    """TF Serving's API's answer for the same rows (serving_raw, row format)."""
    r = requests.post(f"{server.base}/v1/models/taxi:predict", timeout=30,
                      json={"signature_name": F.RAW_SIGNATURE, "instances": rows})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_rest_health_and_metadata(server):
    base = server.base
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/taxi/ready",
                 f"/v2/models/taxi/versions/{VERSION}/ready"):
        r = requests.get(base + path, timeout=30)
        assert (r.status_code, r.content) == (200, b""), path
    assert requests.get(base + "/v2", timeout=30).json() == {
        "name": "tfxops", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    metadata = requests.get(base + "/v2/models/taxi", timeout=30).json()
    # what a V2 client sends: each raw model feature by name, typed as core.features says
    assert metadata == {"name": "taxi", "versions": [str(VERSION)], "platform": "tensorflow_savedmodel",
                        "inputs": [{"name": name, "datatype": V2_TYPES[F.RAW_FEATURE_TYPES[name]],
                                    "shape": [-1]} for name in sorted(F.MODEL_FEATURES)],
                        "outputs": [{"name": F.PREDICTION_KEY, "datatype": "FP32", "shape": [-1]}]}
    assert requests.get(f"{base}/v2/models/taxi/versions/{VERSION}", timeout=30).json() == metadata
    for path, status, words in [
            ("/v2/models/taxi/versions/8/ready", 404, "Could not find version 8 of model taxi"),
            ("/v2/models/nope", 404, "Servable not found for request: Latest(nope)"),
            ("/v2/models/taxi/versions/x", 400, "model version 'x' is not a version number"),
            ("/v2/models/taxi/versions/9", 404, "Specific(taxi, 9)"),
            ("/v2/nothing", 404, "Malformed request: GET /v2/nothing")]:
        r = requests.get(base + path, timeout=30)
        assert r.status_code == status and list(r.json()) == ["error"], (path, r.text)
        assert words in r.json()["error"], (path, r.text)


def test_rest_infer_answers_as_tf_serving_api(server, trips):
    want = v1_predictions(server, trips)
    r = requests.post(f"{server.base}/v2/models/taxi/infer", timeout=30,
                      json={"id": "v2-rest-1", "inputs": json_inputs(trips)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {"model_name": "taxi", "model_version": str(VERSION), "id": "v2-rest-1",
                    "outputs": [{"name": F.PREDICTION_KEY, "datatype": "FP32", "shape": [3],
                                 "data": body["outputs"][0]["data"]}]}
    assert body["outputs"][0]["data"] == pytest.approx(want, abs=1e-6)
    # nested data, a version named in the URL, the output asked for by name
    nested = [dict(i, data=[[v] for v in i["data"]]) for i in json_inputs(trips)]
    r = requests.post(f"{server.base}/v2/models/taxi/versions/{VERSION}/infer", timeout=30,
                      json={"inputs": nested, "outputs": [{"name": F.PREDICTION_KEY}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == body["outputs"][0]["data"]
    assert r.json()["id"] == r.headers["X-Request-Id"]       # no id sent: the one logged


def test_rest_binary_tensor_data(server, trips):
    """Triton's binary extension, as tritonclient.http sends by default."""
    want = v1_predictions(server, trips)
    body, header = binary_body(trips)
    r = requests.post(f"{server.base}/v2/models/taxi/infer", data=body, timeout=30,
                      headers={"Inference-Header-Content-Length": str(header)})
    assert r.status_code == 200, r.text
    length = int(r.headers["Inference-Header-Content-Length"])
    head = json.loads(r.content[:length])
    (output,) = head["outputs"]
    assert output["parameters"] == {"binary_data_size": 12} and "data" not in output
    assert np.frombuffer(r.content[length:], "<f4").tolist() == pytest.approx(want, abs=1e-6)
    body, header = binary_body(trips, binary_output=False)      # binary in, JSON out
    r = requests.post(f"{server.base}/v2/models/taxi/infer", data=body, timeout=30,
                      headers={"Inference-Header-Content-Length": str(header)})
    assert r.json()["outputs"][0]["data"] == pytest.approx(want, abs=1e-6)
    # binary data that does not add up is refused, naming what is wrong
    r = requests.post(f"{server.base}/v2/models/taxi/infer", data=body + b"\0\0\0", timeout=30,
                      headers={"Inference-Header-Content-Length": str(header)})
    assert r.status_code == 400 and "3 bytes after the JSON belong to no input" in r.json()["error"]


def _with(inputs, name, **change):
    return [dict(i, **change) if i["name"] == name else i for i in inputs]


def test_rest_errors_name_the_fault(server, trips):
    """Each malformed request: 4xx ``{"error": ...}`` naming the input and the fix,
    never Python's text; the model never runs on it."""
    good = json_inputs(trips)
    cases = [
        ({"inputs": _with(good, "trip_miles", datatype="INT64")}, 400,
         "input 'trip_miles' has datatype INT64, but signature serving_raw takes FP32"),
        ({"inputs": good[1:]}, 400, "Missing but required: {trip_miles}"),
        ({"inputs": good + [{"name": "tips", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]},
         400, "unexpected input 'tips': signature serving_raw takes company, "),
        ({"inputs": _with(good, "fare", shape=[4])}, 400,
         "input 'fare' has 3 elements, but its shape [4] holds 4"),
        ({"inputs": _with(good, "fare", shape=[3, 1])}, 400,
         "input 'fare' has shape [3,1], but signature serving_raw takes [-1]"),
        ({"inputs": _with(good, "fare", data=["a", "b", "c"])}, 400,
         "input 'fare': element 'a' is not a FP32 value"),
        ({"inputs": _with(good, "trip_seconds", data=[1.5, 2, 3])}, 400,
         "input 'trip_seconds': element 1.5 is not a INT64 value"),
        ({"inputs": good, "outputs": [{"name": "logits"}]}, 400,
         "output tensor alias not found in signature: logits"),
        ({"inputs": good, "parameters": {"signature_name": "nope"}}, 400,
         'Serving signature name: "nope" not found'),
        ({"inputs": []}, 400, "the request needs 'inputs'"),
        ({"inputs": _with(good, "fare", shape=[-3])}, 400, "'shape' must be a list of sizes"),
        ({"inputs": _with(good, "fare", shape=[2 ** 40])}, 429, "more than the request size limit"),
    ]
    for body, status, words in cases:
        r = requests.post(f"{server.base}/v2/models/taxi/infer", json=body, timeout=30)
        assert r.status_code == status and list(r.json()) == ["error"], (words, r.text)
        assert words in r.json()["error"] and no_python_text(r.json()["error"]), (words, r.text)
    for path, data, status, words in [
            ("/v2/models/taxi/infer", b"{not json", 400, "JSON Parse error"),
            ("/v2/models/nope/infer", json.dumps({"inputs": good}).encode(), 404,
             "Servable not found for request: Latest(nope)"),
            ("/v2/models/taxi/versions/1e3/infer", b"{}", 400, "is not a version number")]:
        r = requests.post(server.base + path, data=data, timeout=30)
        assert r.status_code == status and words in r.json()["error"], (path, r.text)


def test_grpc_health_and_metadata(v2):
    assert v2.ServerLive(pb.ServerLiveRequest(), timeout=30).live
    assert v2.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
    assert v2.ModelReady(pb.ModelReadyRequest(name="taxi", version=str(VERSION)), timeout=30).ready
    metadata = v2.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
    assert (metadata.name, list(metadata.extensions)) == ("tfxops", ["binary_tensor_data"])
    model = v2.ModelMetadata(pb.ModelMetadataRequest(name="taxi"), timeout=30)
    assert (model.name, list(model.versions), model.platform) == ("taxi", [str(VERSION)],
                                                                   "tensorflow_savedmodel")
    assert {(t.name, t.datatype, tuple(t.shape)) for t in model.inputs} == {
        (name, V2_TYPES[F.RAW_FEATURE_TYPES[name]], (-1,)) for name in F.MODEL_FEATURES}
    code, details = grpc_error(lambda: v2.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND and "model nope" in details
    code, details = grpc_error(lambda: v2.ModelMetadata(
        pb.ModelMetadataRequest(name="taxi", version="latest"), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not a version number" in details


def test_grpc_infer_typed_and_raw_contents(server, v2, trips):
    want = v1_predictions(server, trips)
    typed = v2.ModelInfer(infer_request(trips, False, request_id="v2-grpc-1"), timeout=30)
    (output,) = typed.outputs
    assert (typed.model_name, typed.model_version, typed.id) == ("taxi", str(VERSION), "v2-grpc-1")
    assert (output.name, output.datatype, list(output.shape)) == (F.PREDICTION_KEY, "FP32", [3])
    assert list(output.contents.fp32_contents) == pytest.approx(want, abs=1e-6)
    assert not typed.raw_output_contents
    raw = v2.ModelInfer(infer_request(trips, True, request_id="v2-grpc-2"), timeout=30)
    assert not raw.outputs[0].contents.fp32_contents        # raw in, raw out
    assert np.frombuffer(raw.raw_output_contents[0], "<f4").tolist() == pytest.approx(want, abs=1e-6)


def test_grpc_errors_are_status_codes(server, v2, trips):
    request = infer_request(trips, True)
    del request.raw_input_contents[-1]
    bad_bytes = infer_request(trips, True)
    bad_bytes.raw_input_contents[0] = bad_bytes.raw_input_contents[0][:-1]
    wrong_type = infer_request(trips, False)
    wrong_type.inputs[0].datatype = "FP64"
    for sent, code, words in [
            (request, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents holds 14 tensors for 15"),
            (bad_bytes, grpc.StatusCode.INVALID_ARGUMENT, "11 bytes of raw contents, but 3 FP32"),
            (wrong_type, grpc.StatusCode.INVALID_ARGUMENT, "has datatype FP64, but signature"),
            (infer_request(trips, False, model="nope"), grpc.StatusCode.NOT_FOUND,
             "Servable not found for request: Latest(nope)")]:
        got, details = grpc_error(lambda: v2.ModelInfer(sent, timeout=30))
        assert got == code and words in details and no_python_text(details), details
    with grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc}") as channel:   # not a request
        garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        got, details = grpc_error(lambda: garbage(b"\xff\xff\xff", timeout=30))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "not a ModelInferRequest" in details


def test_v2_calls_in_request_log_and_monitor_window(server, v2, trips):
    """Answered and refused V2 calls are logged as predict calls of serving_raw: the
    monitor's window holds their rows, predictions and errors with their ids."""
    r = requests.post(f"{server.base}/v2/models/taxi/infer", timeout=30,
                      json={"id": "log-rest", "inputs": json_inputs(trips)})
    answer = r.json()["outputs"][0]["data"]
    v2.ModelInfer(infer_request(trips[:1], True, request_id="log-grpc"), timeout=30)
    refused = requests.post(f"{server.base}/v2/models/taxi/infer", timeout=30,
                            json={"id": "log-refused",
                                  "inputs": _with(json_inputs(trips), "fare", data=[1.0, 2.0])})
    assert refused.status_code == 400
    directory = server.settings.request_logs_path

    def logged():
        files = request_log.closed_log_files(directory)
        ids = {r.request_id for r in request_log.read_request_log(files)}
        return files if {"log-rest", "log-grpc", "log-refused"} <= ids else None
    chunks = window.decode_records(list(request_log.read_records(until(logged, "V2 calls logged"))))
    (chunk,) = [c for c in chunks if c.version == VERSION]
    assert chunk.model_name == "taxi" and chunk.signatures.get(F.RAW_SIGNATURE, 0) >= 4
    rows = [i for i, rid in enumerate(chunk.request_ids) if rid == "log-rest"]
    assert chunk.predictions[rows].tolist() == pytest.approx(answer, abs=1e-6)
    import tensorflow as tf
    sent = [tf.train.Example.FromString(chunk.serialized[i]) for i in rows]
    assert [e.features.feature["company"].bytes_list.value[0].decode() for e in sent] == \
        [row["company"] for row in trips]
    assert [e.features.feature["trip_seconds"].int64_list.value[0] for e in sent] == \
        [row["trip_seconds"] for row in trips]
    assert "log-grpc" in chunk.request_ids
    assert "INVALID_ARGUMENT" in chunk.rejected.codes
    text = requests.get(f"{server.base}/monitoring/prometheus/metrics", timeout=30).text
    assert 'status="INVALID_ARGUMENT"' in text and 'API="predict",entrypoint="GRPC"' in text


def test_raw_bytes_tensor_round_trip(server, v2, trips):
    """BYTES elements over raw contents keep every byte (length-prefixed), and a
    length that overruns the contents is refused, not read past."""
    request = infer_request(trips[:1], True)
    index = [t.name for t in request.inputs].index("company")
    request.raw_input_contents[index] = struct.pack("<I", 50) + b"Flash Cab"
    got, details = grpc_error(lambda: v2.ModelInfer(request, timeout=30))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "cut short (50 bytes announced, 9 left)" in details
