"""Overload: a burst of 2,000 concurrent REST requests gets answers (200, or 503
with a JSON error), never connection resets; beyond ``max_concurrent_requests``
requests in flight, REST answers 503 and gRPC UNAVAILABLE at once, naming the
setting, and the count goes back down (also when a client leaves mid-request)."""
import collections
import http.client
import json
import threading

import grpc
import pytest
import requests

from serving.client import GrpcClient, predict_request, rest_body, serialize_rows
from tests.serving.conftest import copy_version, serving_settings
from tests.serving.serve_proc import PREDICT_PATH as PREDICT, ServeProcess, hold, until

BURST = 2000


def _post(port: int, body: bytes):
    """(status, JSON body) of one POST on a new connection, or (exception name, text)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("POST", PREDICT, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = (response.status, json.loads(response.read()))
        conn.close()
        return answer
    except Exception as exc:   # noqa: BLE001 - what the test counts
        return type(exc).__name__, str(exc)


def _burst(port: int, body: bytes, n: int) -> list:
    start, out, lock = threading.Barrier(n), [], threading.Lock()

    def one():
        start.wait()
        answer = _post(port, body)
        with lock:
            out.append(answer)
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_burst_of_2000_rest_requests_gets_answers_never_resets(tmp_path, pushed_model, rows):
    settings = serving_settings(tmp_path)
    copy_version(pushed_model, settings.model_push_dir, 2)
    body = json.dumps(rest_body(serialize_rows(rows[:1]))).encode()
    with ServeProcess(settings, tmp_path) as server:
        answers = _burst(settings.rest_port, body, BURST)
        assert server.terminate() == 0
    counts = collections.Counter(a[0] for a in answers)
    print(f"burst of {BURST}: {dict(counts)}")
    assert set(counts) <= {200, 503} and sum(counts.values()) == BURST, counts
    assert all(len(a[1]["predictions"]) == 1 for a in answers if a[0] == 200)
    assert all("max_concurrent_requests" in a[1]["error"] for a in answers if a[0] == 503)


def _refused(url: str, body: bytes):
    """The JSON body of the answer to a POST if it is a 503, else None."""
    response = requests.post(url, data=body, timeout=60)
    return response.json() if response.status_code == 503 else None


def test_beyond_max_concurrent_requests_rest_and_grpc_are_refused_and_the_count_recovers(
        tmp_path, pushed_model, rows):
    settings = serving_settings(tmp_path, max_concurrent_requests=1)
    copy_version(pushed_model, settings.model_push_dir, 2)
    body = json.dumps(rest_body(serialize_rows(rows[:1]))).encode()
    url = f"http://127.0.0.1:{settings.rest_port}{PREDICT}"
    with ServeProcess(settings, tmp_path) as server:
        holder = hold(settings.rest_port, body)            # takes the only slot
        refused = until(lambda: _refused(url, body), "a request refused with 503")
        assert "max_concurrent_requests" in refused["error"]
        grpc_client = GrpcClient("127.0.0.1", settings.grpc_port, "taxi")
        with pytest.raises(grpc.RpcError) as raised:
            grpc_client.stub.Predict(predict_request("taxi", serialize_rows(rows[:1])),
                                     timeout=60)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "max_concurrent_requests" in raised.value.details()
        status = requests.get(f"http://127.0.0.1:{settings.rest_port}/v1/models/taxi", timeout=60)
        assert status.status_code == 200                    # status is never refused
        holder.sendall(body[len(body) // 2:])               # the held request completes
        answer = holder.recv(65536)
        holder.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert requests.post(url, data=body, timeout=60).status_code == 200
        assert len(grpc_client.predict_rows(rows[:1])) == 1
        hold(settings.rest_port, body).close()              # a client leaving mid-request
        until(lambda: requests.post(url, data=body, timeout=60).status_code == 200,
              "the slot of the client that left is free again")
        grpc_client.close()
        assert server.terminate() == 0
