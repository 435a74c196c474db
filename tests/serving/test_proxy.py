"""The logging proxy (``tfxops serve --proxy-to ... --proxy-grpc-to ...``) in front of a
real server speaking TF Serving's APIs (our own: there is no TF Serving binary
here): answers pass through unchanged, errors keep their codes, and Predict calls
over both APIs come out of the proxy's request log as the tf.Examples sent."""
import asyncio
import threading

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)

from core import request_log
from serving import proxy
from serving.client import predict_request, rest_body, serialize_rows
from core.ports import free_port
from tests.serving.conftest import serving_settings


class RunningProxy:
    """``proxy.run_proxy`` on its own loop thread."""

    def __init__(self, settings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.ports, self.stop_event, self.error = None, None, None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        def ready(ports, stop_event):
            self.ports, self.stop_event = ports, stop_event
            self.ready.set()
        try:
            self.loop.run_until_complete(proxy.run_proxy(self.settings, ready=ready))
        except BaseException as exc:   # noqa: BLE001 - reported by start()
            self.error = exc
            self.ready.set()

    def start(self):
        self.thread.start()
        assert self.ready.wait(60) and self.error is None, self.error
        return self

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(60)


@pytest.fixture(scope="module")
def proxied(served, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proxy")
    settings = serving_settings(tmp, proxy_to=f"127.0.0.1:{served.ports.rest}",
                                proxy_grpc_to=f"127.0.0.1:{served.ports.grpc}")
    running = RunningProxy(settings).start()
    yield running
    running.stop()


def _stubs(port):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return (channel, prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def test_grpc_passes_through_unchanged_and_is_logged(served, proxied, rows):
    direct_channel, direct, _ = _stubs(served.ports.grpc)
    channel, stub, models = _stubs(proxied.ports["grpc"])
    try:
        request = predict_request("taxi", serialize_rows(rows[:3]))
        answer, call = stub.Predict.with_call(request, timeout=30,
                                              metadata=(("x-request-id", "proxy-grpc-1"),))
        assert answer == direct.Predict(request, timeout=30)
        assert ("x-request-id", "proxy-grpc-1") in tuple(call.trailing_metadata())
        # errors keep TF Serving's code and message
        bad = predict_request("nope", serialize_rows(rows[:1]))
        with pytest.raises(grpc.RpcError) as via_proxy:
            stub.Predict(bad, timeout=30)
        with pytest.raises(grpc.RpcError) as straight:
            direct.Predict(bad, timeout=30)
        assert via_proxy.value.code() == straight.value.code() == grpc.StatusCode.NOT_FOUND
        assert via_proxy.value.details() == straight.value.details()
        # ModelService passes through too (and is not logged)
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "taxi"
        status = models.GetModelStatus(status_request, timeout=30)
        assert [s.version for s in status.model_version_status] == [7]
    finally:
        channel.close()
        direct_channel.close()


def test_rest_passes_through_unchanged(served, proxied, rows):
    body = rest_body(serialize_rows(rows[:3]))
    url = "http://127.0.0.1:{}/v1/models/taxi:predict"
    via = requests.post(url.format(proxied.ports["rest"]), json=body,
                        headers={"X-Request-Id": "proxy-rest-1"}, timeout=30)
    direct = requests.post(url.format(served.ports.rest), json=body, timeout=30)
    assert via.status_code == 200 and via.json() == direct.json()
    assert via.headers["X-Request-Id"] == "proxy-rest-1"
    missing = requests.post("http://127.0.0.1:{}/v1/models/nope:predict".format(
        proxied.ports["rest"]), json=body, timeout=30)
    assert missing.status_code == 404 and "Servable not found" in missing.json()["error"]


def test_log_holds_both_apis_calls_as_sent(served, tmp_path, rows):
    settings = serving_settings(tmp_path, proxy_to=f"127.0.0.1:{served.ports.rest}",
                                proxy_grpc_to=f"127.0.0.1:{served.ports.grpc}")
    running = RunningProxy(settings).start()
    serialized = serialize_rows(rows[:3])
    channel, stub, models = _stubs(running.ports["grpc"])
    try:
        stub.Predict(predict_request("taxi", serialized), timeout=30,
                     metadata=(("x-request-id", "log-grpc"),))
        with pytest.raises(grpc.RpcError):
            stub.Predict(predict_request("nope", serialized), timeout=30)
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "taxi"
        models.GetModelStatus(status_request, timeout=30)
        r = requests.post(f"http://127.0.0.1:{running.ports['rest']}/v1/models/taxi:predict",
                          json=rest_body(serialized), headers={"X-Request-Id": "log-rest"},
                          timeout=30)
        assert r.status_code == 200
    finally:
        channel.close()
        running.stop()     # a clean stop flushes the log
    records = list(request_log.read_request_log(settings.request_logs_path))
    logged = {r.request_id: r for r in records if r.error is None}
    assert set(logged) == {"log-grpc", "log-rest"}   # status calls: not logged
    sent = [tf.train.Example.FromString(s) for s in serialized]
    (rejected,) = [r for r in records if r.error is not None]   # as TF Serving refused it
    assert rejected.error[0] == "NOT_FOUND" and "Servable not found" in rejected.error[1]
    assert rejected.model_name == "nope" and rejected.examples == sent
    for rid, record in logged.items():
        assert record.kind == "predict" and record.model_name == "taxi"
        # gRPC answers carry the version that answered; TF Serving's REST answers do not
        assert record.model_version == (7 if rid == "log-grpc" else None)
        assert record.examples == sent
        assert len(record.predictions) == 3


def test_unavailable_upstream_is_reported(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    settings = serving_settings(tmp_path, proxy_to=dead, proxy_grpc_to=dead)
    running = RunningProxy(settings).start()
    channel, stub, _ = _stubs(running.ports["grpc"])
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(predict_request("taxi", [b""]), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and dead in err.value.details()
        r = requests.post(f"http://127.0.0.1:{running.ports['rest']}/v1/models/taxi:predict",
                          json={"instances": []}, timeout=30)
        assert r.status_code == 503 and dead in r.json()["error"]
    finally:
        channel.close()
        running.stop()
