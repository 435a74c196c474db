"""The logging proxy (``tfxops serve --proxy-to/--proxy-grpc-to``) in front of a
server standing in for TF Serving (a real ``tfxops serve`` of the waiting model):
the same tokens and TLS as the server (issue 16 part 2); refused calls never reach
the upstream; its request log names the client; the caller's token is not passed
upstream unless ``proxy_forward_token``."""
import asyncio
import contextlib
import queue
import threading

import pytest
import requests

from core import request_log
from serving import access, metrics as M, proxy
from serving.server import BackgroundServer
from tests.security.access_setup import grpc_predict, rest_predict, self_signed, token_file
from tests.serving import conftest as serving_fixtures
from tests.serving.conftest import copy_version, waiter_settings
from tests.serving.serve_proc import ServeProcess, until

waiting_model = serving_fixtures.waiting_model     # the session fixture (a real SavedModel)


def _upstream(tmp, waiting_model, **overrides) -> BackgroundServer:
    settings = waiter_settings(tmp, **overrides)
    copy_version(waiting_model, settings.model_push_dir, 1)
    return BackgroundServer(settings, enable_logging=False)


def _answered(upstream: BackgroundServer) -> float:
    return upstream.server.metrics.value(M.REQUEST_COUNT, (("model_name", "waiter"),
                                                           ("status", "OK")))


def test_the_proxy_refuses_calls_without_a_token_and_logs_the_client_of_the_others(
        tmp_path, waiting_model):
    cert, key = self_signed(tmp_path / "tls")
    tokens = token_file(tmp_path / "tokens", ["alice"])
    now = waiting_model / "saved_model.pb"
    with _upstream(tmp_path / "upstream", waiting_model) as upstream:
        settings = waiter_settings(tmp_path / "proxy", log_rotate_records=1)
        args = ["--proxy-to", f"127.0.0.1:{upstream.ports.rest}",
                "--proxy-grpc-to", f"127.0.0.1:{upstream.ports.grpc}",
                "--set", f"auth_tokens_file={tmp_path / 'tokens'}",
                "--set", f"tls_cert_file={cert}", "--set", f"tls_key_file={key}"]
        with ServeProcess(settings, tmp_path / "proxy", args):
            base, grpc_port = f"https://127.0.0.1:{settings.rest_port}", settings.grpc_port
            refused = rest_predict(base, now, verify=str(cert))
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"]
            assert rest_predict(base, now, "x" * 32, verify=str(cert)).status_code == 401
            assert grpc_predict(grpc_port, now, ca=cert)[0] == "UNAUTHENTICATED"
            assert _answered(upstream) == 0                  # nothing refused was forwarded
            assert rest_predict(base, now, tokens["alice"], verify=str(cert)).status_code == 200
            assert grpc_predict(grpc_port, now, tokens["alice"], ca=cert)[0] == "OK"
            assert _answered(upstream) == 2
            logged = until(lambda: _records(settings.request_logs_path, 2), "both calls logged")
    assert [r.client for r in logged] == ["alice", "alice"]


def _records(directory, n: int):
    records = list(request_log.read_request_log(directory))
    return records if len(records) >= n else None


@contextlib.contextmanager
def _proxy_in_process(settings):
    """``serving.proxy.run_proxy`` (what ``tfxops serve --proxy-to`` runs) on a thread;
    yields its ports."""
    started = queue.Queue()

    def ready(ports, stop):
        started.put((ports, stop, asyncio.get_running_loop()))
    thread = threading.Thread(target=asyncio.run, args=(proxy.run_proxy(settings, ready),),
                              daemon=True)
    thread.start()
    ports, stop, loop = started.get(timeout=60)
    try:
        yield ports
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


@pytest.mark.parametrize("forward", [False, True])
def test_the_proxy_keeps_the_callers_token_unless_told_to_forward_it(
        tmp_path, waiting_model, forward):
    """An upstream that asks for the same token tells whether it got one: without
    ``proxy_forward_token`` it is asked for one (REST 401, gRPC UNAUTHENTICATED,
    "needs a bearer token"), with it the call is answered."""
    tokens = token_file(tmp_path / "tokens", ["alice"])
    now, alice = waiting_model / "saved_model.pb", tokens["alice"]
    with _upstream(tmp_path / "upstream", waiting_model,
                   auth_tokens_file=tmp_path / "tokens") as upstream:
        settings = waiter_settings(
            tmp_path / "proxy", auth_tokens_file=tmp_path / "tokens", proxy_forward_token=forward,
            auth_metrics=True, proxy_to=f"127.0.0.1:{upstream.ports.rest}",
            proxy_grpc_to=f"127.0.0.1:{upstream.ports.grpc}")
        with _proxy_in_process(settings) as ports:
            rest = rest_predict(f"http://127.0.0.1:{ports['rest']}", now, alice)
            code, details, _ = grpc_predict(ports["grpc"], now, alice)
            metrics = f"http://127.0.0.1:{ports['rest']}/monitoring/tfxops/metrics"
            assert requests.get(metrics, timeout=60).status_code == 401       # auth_metrics
            assert requests.get(metrics, headers={"Authorization": f"Bearer {alice}"},
                                timeout=60).status_code == 200
    if forward:
        assert (rest.status_code, code) == (200, "OK")
    else:
        assert rest.status_code == 401 and "needs a bearer token" in rest.json()["error"]
        assert code == "UNAUTHENTICATED" and "needs a bearer token" in details
        assert access.unauthenticated(False).message == rest.json()["error"]
