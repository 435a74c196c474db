"""The V2 API passes the same controls as TF Serving's: bearer tokens and the rate
limit (serving.access), max_request_bytes, the out-of-domain refusal, the admission
gate (max_concurrent_requests), on REST and gRPC, each attacked on a real server."""
import json
import threading

import grpc
import pytest
import requests

from core import domain as domain_lib
from serving.server import BackgroundServer
from serving.v2 import grpc_predict_v2_pb2 as pb
from tests.serving.conftest import copy_version, serving_settings, waiter_settings
from tests.serving.serve_proc import until, waiter_grpc
from tests.serving.v2_calls import complete_rows, grpc_error, infer_request, json_inputs, stub

ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef00"
BURST = 10


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, pushed_model):
    """A server with tokens (alice, bob), a rate limit of BURST calls per client,
    requests of at most 64 KiB and out-of-domain inputs refused."""
    tmp = tmp_path_factory.mktemp("v2_guarded")
    tokens = tmp / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\n")
    tokens.chmod(0o600)
    settings = serving_settings(tmp, auth_tokens_file=tokens, rate_limit_per_second=0.001,
                                rate_limit_burst=BURST, max_request_bytes=65536,
                                out_of_domain_action=domain_lib.REJECT)
    copy_version(pushed_model, settings.model_push_dir, 4)
    with BackgroundServer(settings) as background:
        yield background


def _post(server, body, token=None, path="/v2/models/taxi/infer"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"http://127.0.0.1:{server.ports.rest}{path}", data=body, headers=headers,
                         timeout=60)


def test_tokens_size_limit_and_out_of_domain(guarded, taxi_rows):
    trips = complete_rows(taxi_rows, 2)
    body = json.dumps({"inputs": json_inputs(trips)}).encode()
    v2 = stub(guarded.ports.grpc)
    alice = (("authorization", f"Bearer {ALICE}"),)
    # no token: 401 / UNAUTHENTICATED, health and metadata too (as TF Serving's status)
    refused = _post(guarded, body)
    assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/v2/health/ready", "/v2/models/taxi", "/v2"):
        assert requests.get(f"http://127.0.0.1:{guarded.ports.rest}{path}", timeout=60).status_code == 401
    code, _ = grpc_error(lambda: v2.ModelInfer(infer_request(trips, True), timeout=60))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = grpc_error(lambda: v2.ServerReady(pb.ServerReadyRequest(), timeout=60))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # with alice's token: answered (1 REST + 1 gRPC call of her BURST)
    assert _post(guarded, body, ALICE).status_code == 200
    assert v2.ModelInfer(infer_request(trips, True), metadata=alice, timeout=60).outputs
    # a body over max_request_bytes: 413 before it is read; gRPC: RESOURCE_EXHAUSTED
    big = json.dumps({"inputs": json_inputs(trips * 1000)}).encode()
    assert len(big) > 65536
    r = _post(guarded, big, ALICE)
    assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]
    code, _ = grpc_error(lambda: v2.ModelInfer(infer_request(trips * 1000, False), metadata=alice,
                                               timeout=60))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # crafted inputs outside the training domain: refused, naming the feature only
    crafted = [dict(t, payment_type="Bitcoin") for t in trips]
    r = _post(guarded, json.dumps({"inputs": json_inputs(crafted)}).encode(), ALICE)
    assert r.status_code == 400 and r.json()["error"].startswith("payment_type: outside the values")
    code, details = grpc_error(lambda: v2.ModelInfer(infer_request(crafted, False), metadata=alice,
                                                     timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("payment_type: outside")


def test_rate_limit(guarded, taxi_rows):
    """bob's BURST calls are answered, the next is 429 with Retry-After; gRPC too."""
    body = json.dumps({"inputs": json_inputs(complete_rows(taxi_rows, 1))}).encode()
    answers = [_post(guarded, body, BOB) for _ in range(BURST)]
    assert [a.status_code for a in answers] == [200] * BURST
    over = _post(guarded, body, BOB)
    assert over.status_code == 429 and "rate_limit_per_second" in over.json()["error"]
    assert int(over.headers["Retry-After"]) >= 1
    v2 = stub(guarded.ports.grpc)
    code, details = grpc_error(lambda: v2.ModelInfer(
        infer_request(complete_rows(taxi_rows, 1), True),
        metadata=(("authorization", f"Bearer {BOB}"),), timeout=60))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Client bob made more than" in details


def test_admission_gate_and_default_signature(tmp_path, waiting_model):
    """With max_concurrent_requests=1 and a call held in the model, V2 calls are
    refused at once (429 / RESOURCE_EXHAUSTED), as TF Serving's API's are. The waiting
    model has no serving_raw: V2 runs its serving_default (input 'path', BYTES)."""
    settings = waiter_settings(tmp_path, max_concurrent_requests=1)
    copy_version(waiting_model, settings.model_push_dir, 1)
    now = str(waiting_model / "saved_model.pb")
    held, go = [], tmp_path / "go"
    v2_body = {"inputs": [{"name": "path", "shape": [1], "datatype": "BYTES", "data": [now]}]}
    with BackgroundServer(settings) as server:
        base = f"http://127.0.0.1:{server.ports.rest}/v2/models/waiter"
        assert requests.get(base, timeout=60).json()["inputs"] == [
            {"name": "path", "datatype": "BYTES", "shape": [-1]}]
        assert requests.post(base + "/infer", json=v2_body, timeout=60).json()["outputs"][0]["data"] == [0]
        holder = threading.Thread(target=lambda: held.append(waiter_grpc(server.ports.grpc, go)))
        holder.start()
        until(lambda: server.server.gate.active == 1, "the held call in the model")
        r = requests.post(base + "/infer", json=v2_body, timeout=60)
        assert r.status_code == 429 and "max_concurrent_requests" in r.json()["error"]
        request = pb.ModelInferRequest(model_name="waiter")
        request.inputs.add(name="path", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            now.encode())
        code, details = grpc_error(lambda: stub(server.ports.grpc).ModelInfer(request, timeout=60))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_requests" in details
        go.write_text("")
        holder.join(60)
        assert held == [("OK", "")]
        assert stub(server.ports.grpc).ModelInfer(request, timeout=60).outputs[0].contents.int64_contents


def test_several_models(tmp_path, pushed_model, waiting_model, taxi_rows):
    """One server, the models of a model config file: V2 serves each by name (taxi's
    serving_raw, the waiting model's serving_default), and the server is ready only
    while every model has a version loaded."""
    from serving.model_config import ServedModel, write_model_config
    config_file = tmp_path / "models.config"
    empty = tmp_path / "empty"
    empty.mkdir()
    models = [ServedModel("taxi", str(tmp_path / "taxi")), ServedModel("waiter", str(tmp_path / "waiter"))]
    copy_version(pushed_model, tmp_path / "taxi", 2)
    copy_version(waiting_model, tmp_path / "waiter", 5)
    write_model_config(str(config_file), models)
    settings = serving_settings(tmp_path, model_config_file=config_file, enable_batching=False)
    trips = complete_rows(taxi_rows, 1)
    with BackgroundServer(settings) as server:
        base = f"http://127.0.0.1:{server.ports.rest}"
        assert requests.get(base + "/v2/health/ready", timeout=60).status_code == 200
        assert requests.get(base + "/v2/models/waiter", timeout=60).json()["versions"] == ["5"]
        taxi = requests.post(base + "/v2/models/taxi/infer", json={"inputs": json_inputs(trips)}, timeout=60)
        assert (taxi.status_code, taxi.json()["model_version"]) == (200, "2")
        now = str(waiting_model / "saved_model.pb")
        waiter = requests.post(base + "/v2/models/waiter/infer", timeout=60, json={
            "inputs": [{"name": "path", "shape": [1], "datatype": "BYTES", "data": [now]}]})
        assert (waiter.status_code, waiter.json()["outputs"][0]["name"]) == (200, "naps")
        v2 = stub(server.ports.grpc)
        assert v2.ModelReady(pb.ModelReadyRequest(name="waiter"), timeout=60).ready
        # a third model with no version yet: the server is not ready, the others still are
        server.server.models.reload(models + [ServedModel("later", str(empty))])
        assert requests.get(base + "/v2/health/ready", timeout=60).status_code == 400
        assert not v2.ServerReady(pb.ServerReadyRequest(), timeout=60).ready
        assert requests.get(base + "/v2/models/taxi/ready", timeout=60).status_code == 200
