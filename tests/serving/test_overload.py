"""Overload: a burst of 2,000 concurrent REST requests gets answers (200, or 429
with a JSON error), never connection resets; beyond ``max_concurrent_requests``
calls in flight, REST answers 429 and gRPC RESOURCE_EXHAUSTED at once (with a
Retry-After: issue 16; they were 503 / UNAVAILABLE, now a shutdown's only), naming the
setting. A call counts while the server works on it: a client still sending its
body holds no slot (and is dropped after ``request_body_timeout_seconds``), a
client that left holds its slot until the model returns. ``tfxops serve`` raises
its open files limit for the connections it takes."""
import asyncio
import collections
import contextlib
import http.client
import json
import re
import resource
import signal
import threading
from pathlib import Path

import grpc
import pytest
import requests

from serving import admission, grpc_proxy, metrics as M
from serving.client import rest_body, serialize_rows
from core.ports import free_port
from serving.server import BackgroundServer
from tests.serving.conftest import copy_version, serving_settings, waiter_settings
from tests.serving.serve_proc import (PREDICT_PATH as PREDICT, WAITER_PATH, ServeProcess,
                                      answer, connection_refused, hold, logged_ids, post,
                                      rest_status, until, waiter_body, waiter_grpc)

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


@pytest.fixture
def open_files_for_a_burst():
    """This process's soft open files limit raised for ``BURST`` connections at once."""
    needed = BURST + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"a burst of {BURST} connections needs {needed} open files in the test "
                    f"process; its hard limit is {hard} (raise it: ulimit -n {needed})")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_burst_of_2000_rest_requests_gets_answers_never_resets(tmp_path, pushed_model, rows,
                                                                open_files_for_a_burst):
    settings = serving_settings(tmp_path)
    copy_version(pushed_model, settings.model_push_dir, 2)
    body = json.dumps(rest_body(serialize_rows(rows[:1]))).encode()
    with ServeProcess(settings, tmp_path) as server:
        answers = _burst(settings.rest_port, body, BURST)
        assert server.terminate() == 0
    counts = collections.Counter(a[0] for a in answers)
    print(f"burst of {BURST}: {dict(counts)}")
    assert set(counts) <= {200, 429} and sum(counts.values()) == BURST, counts
    assert all(len(a[1]["predictions"]) == 1 for a in answers if a[0] == 200)
    assert all("max_concurrent_requests" in a[1]["error"] for a in answers if a[0] == 429)


def _waiter(tmp_path, waiting_model, **overrides):
    settings = waiter_settings(tmp_path, **overrides)
    copy_version(waiting_model, settings.model_push_dir, 1)
    return settings


def _now(waiting_model) -> Path:
    """A path the waiting model finds at once."""
    return waiting_model / "saved_model.pb"


def _refused(port: int, body: bytes):
    """The JSON body of the answer to a POST to the waiting model if it is a 429."""
    status, answer_body = rest_status(port, body)
    return answer_body if status == 429 else None


def test_beyond_max_concurrent_requests_rest_and_grpc_are_refused_and_the_count_recovers(
        tmp_path, waiting_model):
    settings = _waiter(tmp_path, waiting_model, max_concurrent_requests=1)
    port, now, go = settings.rest_port, waiter_body(_now(waiting_model)), tmp_path / "go"
    with ServeProcess(settings, tmp_path) as server:
        computing = post(port, waiter_body(go), WAITER_PATH)        # takes the only slot
        refused = until(lambda: _refused(port, now), "a call refused with 429")
        assert "max_concurrent_requests" in refused["error"]
        code, details = waiter_grpc(settings.grpc_port, _now(waiting_model))
        assert code == "RESOURCE_EXHAUSTED" and "max_concurrent_requests" in details
        status = requests.get(f"http://127.0.0.1:{port}/v1/models/waiter", timeout=60)
        assert status.status_code == 200                         # status is never refused
        go.touch()                                               # the model returns
        assert answer(computing).startswith(b"HTTP/1.1 200")
        assert rest_status(port, now)[0] == 200
        assert waiter_grpc(settings.grpc_port, _now(waiting_model))[0] == "OK"
        assert server.terminate() == 0


def test_half_sent_bodies_hold_no_slot(tmp_path, waiting_model):
    """Before: a request took its slot when its head came, so
    max_concurrent_requests + 1 half-sent bodies made every call refused
    for as long as their clients kept them."""
    settings = _waiter(tmp_path, waiting_model, max_concurrent_requests=2)
    port, now = settings.rest_port, waiter_body(_now(waiting_model))
    with ServeProcess(settings, tmp_path) as server:
        uploads = [hold(port, now, WAITER_PATH) for _ in range(3)]
        assert [rest_status(port, now)[0] for _ in range(3)] == [200] * 3
        assert waiter_grpc(settings.grpc_port, _now(waiting_model))[0] == "OK"
        for upload in uploads:                                   # each body completes
            upload.sendall(now[len(now) // 2:])
            assert answer(upload).startswith(b"HTTP/1.1 200")
        assert server.terminate() == 0


def test_a_stalled_body_is_dropped_after_request_body_timeout_seconds(tmp_path, waiting_model):
    settings = _waiter(tmp_path, waiting_model, request_body_timeout_seconds=1)
    now = waiter_body(_now(waiting_model))
    with ServeProcess(settings, tmp_path) as server:
        stalled = hold(settings.rest_port, now, WAITER_PATH)
        assert answer(stalled) == b""                            # closed, nothing answered
        assert rest_status(settings.rest_port, now)[0] == 200
        assert server.terminate() == 0


@contextlib.contextmanager
def _front(tmp_path, waiting_model, front: str, **overrides):
    """``tfxops serve`` of the waiting model (``front`` "server"), or the logging
    proxy in front of a server of it ("proxy"): the process with ``overrides``."""
    if front == "server":
        with ServeProcess(_waiter(tmp_path, waiting_model, **overrides), tmp_path) as server:
            yield server
        return
    upstream_settings = _waiter(tmp_path / "upstream", waiting_model)
    settings = waiter_settings(tmp_path / "proxy", **overrides)
    with BackgroundServer(upstream_settings, enable_logging=False) as upstream:
        proxy_to = ["--proxy-to", f"127.0.0.1:{upstream.ports.rest}",
                    "--proxy-grpc-to", f"127.0.0.1:{upstream.ports.grpc}"]
        with ServeProcess(settings, tmp_path / "proxy", proxy_to) as proxy:
            yield proxy


@pytest.mark.parametrize("front", ["server", "proxy"])
def test_a_call_whose_client_left_keeps_its_slot_until_the_model_returns(
        tmp_path, waiting_model, front):
    """Before: the slot was freed when the client disconnected while the model
    still ran, so send-and-leave clients got around max_concurrent_requests, and
    a shutdown did not wait for such a call (it could be logged after the log
    closed)."""
    now, first, second = waiter_body(_now(waiting_model)), tmp_path / "go1", tmp_path / "go2"
    with _front(tmp_path, waiting_model, front, max_concurrent_requests=1) as server:
        port, grpc_port = server.settings.rest_port, server.settings.grpc_port
        left = post(port, waiter_body(first), WAITER_PATH)
        until(lambda: rest_status(port, now)[0] == 429, "the call takes the only slot")
        left.close()                                    # the client leaves, the model runs on
        assert [rest_status(port, now)[0] for _ in range(10)] == [429] * 10
        assert waiter_grpc(grpc_port, _now(waiting_model))[0] == "RESOURCE_EXHAUSTED"
        first.touch()                                   # the model returns
        until(lambda: rest_status(port, now)[0] == 200, "the slot free once the model returned")
        left = post(port, waiter_body(second), WAITER_PATH, request_id="left-at-sigterm")
        until(lambda: rest_status(port, now)[0] == 429, "the call takes the only slot")
        left.close()
        server.proc.send_signal(signal.SIGTERM)
        until(lambda: connection_refused(port), "REST stops listening")
        code, details = waiter_grpc(grpc_port, _now(waiting_model))   # still draining
        assert code == "UNAVAILABLE" and "shutting down" in details, (code, details)
        second.touch()
        assert server.proc.wait(60) == 0
        assert "still in flight" not in server.log()
    assert "left-at-sigterm" in logged_ids(server.settings.request_logs_path)


def test_a_grpc_call_past_its_deadline_keeps_its_slot_until_the_model_returns(
        tmp_path, waiting_model):
    """Before: gRPC cancels the handler of a call whose deadline passed (or whose
    client cancelled), and that freed the slot while the model still ran."""
    settings = _waiter(tmp_path, waiting_model, max_concurrent_requests=1)
    port, now, go = settings.rest_port, waiter_body(_now(waiting_model)), tmp_path / "go"
    with ServeProcess(settings, tmp_path) as server:
        assert waiter_grpc(settings.grpc_port, go, timeout=1)[0] == "DEADLINE_EXCEEDED"
        assert [rest_status(port, now)[0] for _ in range(10)] == [429] * 10
        go.touch()                                      # the model returns
        until(lambda: rest_status(port, now)[0] == 200, "the slot free once the model returned")
        assert server.terminate() == 0


def test_grpc_gate_keeps_the_handlers_of_inference_methods_only():
    """Before: the gate kept one handler per method name a caller sent, and the
    proxy answers any name under TF Serving's services: each new name grew it."""
    gate, upstream = admission.GrpcGate(admission.Gate(8)), f"127.0.0.1:{free_port()}"

    async def calls(names):
        handler = grpc_proxy.ProxyHandler(upstream, None, M.new_metrics(), 1 << 20)
        server = grpc.aio.server(interceptors=[gate])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = collections.Counter()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for name in names:
                try:
                    await channel.unary_unary(name)(b"", timeout=30)
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] += 1
        await server.stop(None)
        await handler.close()
        return codes, handler

    service = "/tensorflow.serving.PredictionService/"
    codes, handler = asyncio.run(calls([f"{service}Unknown{i}" for i in range(1000)]
                              + [f"{service}Predict"] * 3))
    assert codes == {"UNAVAILABLE": 1003}                       # forwarded: upstream is down
    assert list(gate._handlers) == [f"{service}Predict"]         # noqa: SLF001
    assert len(handler._calls) <= grpc_proxy.MAX_CACHED_METHODS  # noqa: SLF001


def test_serve_raises_its_open_files_limit_and_says_when_the_hard_limit_is_too_low(
        tmp_path, waiting_model):
    settings = _waiter(tmp_path, waiting_model)   # max_concurrent_requests 1024: 2 x 1024 + 256
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the test starts tfxops serve with a hard limit of 2048 open files; "
                    f"its own is {hard}")
    with ServeProcess(settings, tmp_path, open_files=(512, 2048)) as server:
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        assert server.terminate() == 0
    said = server.log()
    assert re.search(r"^Max open files +2048 +2048 ", limits, re.M), limits
    assert "soft limit raised from 512 to 2048" in said
    assert "max_concurrent_requests=1024 needs" in said and "ulimit -n 2304" in said
