"""SIGTERM to ``tfxops serve`` while clients keep sending big requests over REST
and gRPC: every request the server accepted is answered in full (200 / OK) and
logged; requests that come after it are refused (connection refused, or 503 /
UNAVAILABLE with an error body), never cut off; the process exits 0."""
import json
import signal
import threading

import grpc
import requests
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import client
from tests.serving.conftest import copy_version, serving_settings, waiter_settings
from serving.server import BackgroundServer
from tests.serving.serve_proc import (WAITER_PATH, ServeProcess, answer, connection_refused,
                                      hold, logged_ids, post, rest_status, until, waiter_body,
                                      waiter_grpc)

ROWS_PER_REQUEST = 2000           # slow enough to be in flight when the signal comes
THREADS_PER_PROTOCOL = 4


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a refused connection."""
    while exc is not None:
        if isinstance(exc, ConnectionRefusedError) or "Connection refused" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Clients:
    """Threads sending requests one after another until one is refused; each
    outcome is kept as (request id, sent before SIGTERM, answered after it, outcome).
    ``steady`` is released by each thread once it has had two answers: from then
    on each has a request at the server nearly all the time (the server computes
    for much longer than a client takes between two requests)."""

    def __init__(self, settings, rows):
        serialized = client.serialize_rows(rows) * (ROWS_PER_REQUEST // len(rows))
        self.body = json.dumps(client.rest_body(serialized)).encode()
        self.grpc_request = client.predict_request("taxi", serialized)
        self.rows, self.settings = len(serialized), settings
        self.term_sent = threading.Event()
        self.outcomes, self.lock = [], threading.Lock()
        self.steady = threading.Semaphore(0)
        self.threads = [threading.Thread(target=run, args=(i,)) for i in range(
            THREADS_PER_PROTOCOL) for run in (self._rest, self._grpc)]

    def _keep(self, rid, before, outcome, n) -> bool:
        with self.lock:
            self.outcomes.append((rid, before, self.term_sent.is_set(), outcome))
        if n == 2:
            self.steady.release()
        return outcome in ("200", "OK")

    def _rest(self, i):
        session, n = requests.Session(), 0
        url = f"http://127.0.0.1:{self.settings.rest_port}/v1/models/taxi:predict"
        while True:
            rid, before, n = f"rest-{i}-{n}", not self.term_sent.is_set(), n + 1
            try:
                r = session.post(url, data=self.body, headers={"X-Request-Id": rid}, timeout=120)
                body = r.json()
                full = r.status_code == 200 and len(body["predictions"]) == self.rows
                outcome = "200" if full else f"{r.status_code} {body.get('error', '')[:60]}"
            except requests.RequestException as exc:
                outcome = "refused" if _refused(exc) else f"{type(exc).__name__}: {exc}"[:200]
            if not self._keep(rid, before, outcome, n):
                return

    def _grpc(self, i):
        channel = grpc.insecure_channel(f"127.0.0.1:{self.settings.grpc_port}")
        stub, n = prediction_service_pb2_grpc.PredictionServiceStub(channel), 0
        while True:
            rid, before, n = f"grpc-{i}-{n}", not self.term_sent.is_set(), n + 1
            try:
                answer = stub.Predict(self.grpc_request, timeout=120,
                                      metadata=(("x-request-id", rid),))
                full = len(answer.outputs["probabilities"].float_val) == self.rows
                outcome = "OK" if full else "OK but short"
            except grpc.RpcError as err:
                refused = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                outcome = err.code().name if err.code() in refused else (
                    f"{err.code().name}: {err.details()}")
            if not self._keep(rid, before, outcome, n):
                channel.close()
                return


def _sigterm_under_load(server, rows) -> list:
    """SIGTERM to ``server`` once every client is sending steadily; the outcomes,
    after checking that the server exited 0 with every call in flight answered."""
    clients = Clients(server.settings, rows)
    for t in clients.threads:
        t.start()
    for _ in clients.threads:
        clients.steady.acquire()
    clients.term_sent.set()
    code = server.terminate()
    for t in clients.threads:
        t.join(120)
    said = server.log()
    assert code == 0 and "still in flight" not in said, said
    # every client stopped on a refusal: nothing hung
    assert len([o for o in clients.outcomes if o[3] not in ("200", "OK")]) == len(clients.threads)
    return clients.outcomes


def _check(outcomes, request_logs):
    # CANCELLED: gRPC's answer to a call that reaches it after it stopped, which the
    # server does once no call is in flight any more (so: sent after the signal)
    wrong = [o for o in outcomes if o[3] not in ("200", "OK", "refused", "UNAVAILABLE")
             and not o[3].startswith("503 ") and not (o[3] == "CANCELLED" and not o[1])]
    assert wrong == [], wrong
    # calls in flight when the signal came, answered in full after it
    assert [o for o in outcomes if o[1] and o[2] and o[3] in ("200", "OK")], outcomes
    answered = {o[0] for o in outcomes if o[3] in ("200", "OK")}
    logged = logged_ids(request_logs)
    assert answered <= set(logged) and len(logged) == len(set(logged))


def test_sigterm_answers_every_request_in_flight_and_refuses_later_ones(
        tmp_path, pushed_model, rows):
    settings = serving_settings(tmp_path)
    copy_version(pushed_model, settings.model_push_dir, 6)
    with ServeProcess(settings, tmp_path) as server:
        outcomes = _sigterm_under_load(server, rows)
    _check(outcomes, settings.request_logs_path)


def test_proxy_on_sigterm_answers_every_call_in_flight(tmp_path, pushed_model, rows):
    upstream_settings = serving_settings(tmp_path / "upstream")
    copy_version(pushed_model, upstream_settings.model_push_dir, 6)
    settings = serving_settings(tmp_path / "proxy")
    with BackgroundServer(upstream_settings, enable_logging=False) as upstream:
        proxy_to = ["--proxy-to", f"127.0.0.1:{upstream.ports.rest}",
                    "--proxy-grpc-to", f"127.0.0.1:{upstream.ports.grpc}"]
        with ServeProcess(settings, tmp_path / "proxy", proxy_to) as proxy:
            outcomes = _sigterm_under_load(proxy, rows)
    _check(outcomes, settings.request_logs_path)


def test_while_draining_new_calls_get_503_or_unavailable_and_those_received_their_answer(
        tmp_path, waiting_model):
    """SIGTERM while one call is computed (max_concurrent_requests=1: it holds the
    only slot) and another's body is half sent: the computed call gets its 200,
    the body still arriving its 503 "shutting down" once it is in, calls on a
    kept-alive connection 503, gRPC UNAVAILABLE; each closes its connection."""
    settings = waiter_settings(tmp_path, max_concurrent_requests=1)
    copy_version(waiting_model, settings.model_push_dir, 1)
    now, go = waiter_body(waiting_model / "saved_model.pb"), tmp_path / "go"   # at once; held
    port, url = settings.rest_port, f"http://127.0.0.1:{settings.rest_port}{WAITER_PATH}"
    with ServeProcess(settings, tmp_path) as server:
        session = requests.Session()                          # a kept-alive connection
        assert session.post(url, data=now, timeout=60).status_code == 200
        assert waiter_grpc(settings.grpc_port, waiting_model / "saved_model.pb")[0] == "OK"
        computing = post(port, waiter_body(go), WAITER_PATH)  # computed at the signal
        until(lambda: rest_status(port, now)[0] == 429, "the computed call takes the only slot")
        uploading = hold(port, now, WAITER_PATH)              # half sent at the signal
        server.proc.send_signal(signal.SIGTERM)
        until(lambda: connection_refused(port), "REST stops listening")
        late = session.post(url, data=now, timeout=60)        # on the kept-alive connection
        assert late.status_code == 503 and late.headers["Connection"] == "close"
        assert "shutting down" in late.json()["error"]
        code, details = waiter_grpc(settings.grpc_port, waiting_model / "saved_model.pb")
        assert code == "UNAVAILABLE" and "shutting down" in details
        uploading.sendall(now[len(now) // 2:])                # its body completes
        refused = answer(uploading)
        assert refused.startswith(b"HTTP/1.1 503") and b"Connection: close" in refused
        assert b"shutting down" in refused
        go.touch()                                            # the model returns
        answered = answer(computing)
        assert answered.startswith(b"HTTP/1.1 200") and b"Connection: close" in answered
        assert server.proc.wait(60) == 0
    assert len(logged_ids(settings.request_logs_path)) == 3


def test_sigterm_ends_the_process_even_when_a_model_call_never_returns(tmp_path, waiting_model):
    """A model call that never returns kept the process alive forever after SIGTERM
    (the executor joined its thread). Now the grace period ends it: the answered
    calls are logged, the stuck caller's connection closes, the process exits 0."""
    settings = waiter_settings(tmp_path)
    copy_version(waiting_model, settings.model_push_dir, 1)
    now = waiter_body(waiting_model / "saved_model.pb")
    with ServeProcess(settings, tmp_path) as server:
        assert rest_status(settings.rest_port, now)[0] == 200
        stuck = post(settings.rest_port, waiter_body(tmp_path / "never"), WAITER_PATH)
        until(lambda: server.counter("tfxops_serving_request_log_records_total") >= 1,
              "the answered call is logged")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(180) == 0, server.log()[-3000:]
        assert "exiting without them" in server.log()
        assert answer(stuck) == b""                            # closed, no half answer
    assert len(logged_ids(settings.request_logs_path)) == 1
