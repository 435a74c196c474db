"""Authenticated, encrypted, rate-limited inference (issue 16 part 2): a real
``tfxops serve`` with tokens, TLS (a self-signed certificate made here) and a
per-client rate limit, attacked over REST and gRPC; the server bound beyond
loopback without tokens warns; the global concurrency limit answers 429 /
RESOURCE_EXHAUSTED with a Retry-After; request logs name the client."""
import json
import os
import secrets
import subprocess
import sys
from collections import namedtuple

import grpc
import pytest
import requests
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from core import config, request_log
from serving import access
from serving.client import GrpcClient, RestClient, ServingError, read_token
from serving.server import BackgroundServer
from tests.security.access_setup import (WAITER_PREDICT, grpc_predict, rest_predict, self_signed,
                                         token_file)
from tests.serving import conftest as serving_fixtures
from tests.serving.conftest import copy_version, waiter_settings
from tests.serving.serve_proc import ServeProcess, answer, post, until, waiter_body

waiting_model = serving_fixtures.waiting_model     # the session fixture (a real SavedModel)
TOKEN_ENV = "TFXOPS_TEST_ACCESS_TOKEN"
Secured = namedtuple("Secured", "server settings tokens env_token cert base now")


@pytest.fixture(scope="module")
def secured(tmp_path_factory, waiting_model):
    """``tfxops serve`` of the waiting model with tokens (a file and a variable),
    TLS, and 0.5 calls/s per client with a burst of 4; every record in its own file."""
    tmp = tmp_path_factory.mktemp("secured")
    cert, key = self_signed(tmp / "tls")
    tokens = token_file(tmp / "tokens", ["alice", "bob", "carol", "dave", "erin"])
    env_token = secrets.token_urlsafe(24)
    settings = waiter_settings(tmp, log_rotate_records=1)
    copy_version(waiting_model, settings.model_push_dir, 1)
    args = ["--set", f"auth_tokens_file={tmp / 'tokens'}", "--set", f"auth_token_env={TOKEN_ENV}",
            "--set", f"tls_cert_file={cert}", "--set", f"tls_key_file={key}",
            "--set", "rate_limit_per_second=0.5", "--set", "rate_limit_burst=4"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKEN_ENV, env_token)
        with ServeProcess(settings, tmp, args) as server:
            yield Secured(server, settings, tokens, env_token, cert,
                          f"https://127.0.0.1:{settings.rest_port}",
                          waiting_model / "saved_model.pb")


def test_rest_calls_need_a_valid_bearer_token(secured):
    base, ca, alice = secured.base, str(secured.cert), secured.tokens["alice"]
    missing = rest_predict(base, secured.now, verify=ca)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == access.REALM
    assert "Authorization: Bearer" in missing.json()["error"]
    for wrong in (alice[:-1] + ("x" if alice[-1] != "x" else "y"), "", secured.env_token + "a"):
        refused = rest_predict(base, secured.now, wrong, verify=ca)
        assert refused.status_code == 401, wrong
    basic = requests.post(base + WAITER_PREDICT, json={"instances": [str(secured.now)]},
                          auth=("alice", alice), verify=ca, timeout=60)     # not a bearer token
    assert basic.status_code == 401
    for path in ("/v1/models/waiter", "/v1/models/waiter/metadata"):    # status and metadata
        assert requests.get(base + path, verify=ca, timeout=60).status_code == 401
        assert requests.get(base + path, verify=ca, timeout=60,
                            headers={"Authorization": f"Bearer {alice}"}).status_code == 200
    answered = rest_predict(base, secured.now, alice, verify=ca)
    assert answered.status_code == 200 and len(answered.json()["predictions"]) == 1
    assert rest_predict(base, secured.now, secured.env_token, verify=ca).status_code == 200
    metrics = requests.get(base + "/monitoring/prometheus/metrics", verify=ca, timeout=60)
    assert metrics.status_code == 200            # open to scrapers unless auth_metrics
    assert 'tfxops_serving_access_denied_total{code="UNAUTHENTICATED"}' in metrics.text


def test_grpc_calls_need_a_valid_bearer_token(secured):
    port, cert, bob = secured.settings.grpc_port, secured.cert, secured.tokens["bob"]
    code, details, _ = grpc_predict(port, secured.now, ca=cert)
    assert code == "UNAUTHENTICATED" and "authorization" in details
    assert grpc_predict(port, secured.now, secured.tokens["alice"][::-1], ca=cert)[0] == \
        "UNAUTHENTICATED"
    assert grpc_predict(port, secured.now, bob, ca=cert)[0] == "OK"
    with grpc.secure_channel(f"127.0.0.1:{port}",
                             grpc.ssl_channel_credentials(cert.read_bytes())) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "waiter"
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetModelStatus(request, timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        status = stub.GetModelStatus(request, timeout=60,
                                     metadata=(("authorization", f"Bearer {bob}"),))
        assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_plain_text_or_an_untrusted_certificate_gets_nothing_from_tls_ports(secured):
    port, alice = secured.settings.rest_port, secured.tokens["alice"]
    with pytest.raises(requests.ConnectionError):
        rest_predict(f"http://127.0.0.1:{port}", secured.now, alice)
    with pytest.raises(requests.exceptions.SSLError):      # the system's CAs do not trust it
        rest_predict(secured.base, secured.now, alice)
    code, _, _ = grpc_predict(secured.settings.grpc_port, secured.now, alice)   # insecure channel
    assert code == "UNAVAILABLE"


def test_a_client_over_its_rate_gets_429_with_retry_after_while_another_is_served(secured):
    base, ca, carol = secured.base, str(secured.cert), secured.tokens["carol"]
    answers = [rest_predict(base, secured.now, carol, verify=ca) for _ in range(8)]
    codes = [a.status_code for a in answers]
    assert codes[:4] == [200] * 4 and codes[-1] == 429 and set(codes) == {200, 429}, codes
    refused = answers[-1]
    assert int(refused.headers["Retry-After"]) >= 1
    assert "rate_limit_per_second" in refused.json()["error"]
    code, details, trailing = grpc_predict(secured.settings.grpc_port, secured.now, carol,
                                           ca=secured.cert)
    assert code == "RESOURCE_EXHAUSTED" and int(trailing["retry-after"]) >= 1, (code, trailing)
    assert rest_predict(base, secured.now, secured.tokens["dave"], verify=ca).status_code == 200


def test_request_log_names_the_client_of_each_call(secured):
    alice, bob = secured.tokens["alice"], secured.tokens["bob"]
    assert rest_predict(secured.base, secured.now, alice, verify=str(secured.cert)).ok
    assert grpc_predict(secured.settings.grpc_port, secured.now, bob, ca=secured.cert)[0] == "OK"
    logs = secured.settings.request_logs_path

    def clients():
        seen = {r.client for r in request_log.read_request_log(logs)}
        return seen if {"alice", "bob"} <= seen else None
    seen = until(clients, "records of alice's and bob's calls")
    assert seen <= set(secured.tokens) | {TOKEN_ENV}, seen      # names, never "" or an address


def test_clients_send_the_token_and_trust_the_ca(secured, tmp_path):
    port, grpc_port, cert = secured.settings.rest_port, secured.settings.grpc_port, secured.cert
    erin = secured.tokens["erin"]
    rest = RestClient("127.0.0.1", port, "waiter", token=erin, ca_file=str(cert))
    assert rest.status()["model_version_status"][0]["state"] == "AVAILABLE"
    rest.close()
    with pytest.raises(ServingError) as refused:      # past the token: the model is unknown
        GrpcClient("127.0.0.1", grpc_port, "nosuch", token=erin,
                   ca_file=str(cert)).predict_serialized([b""])
    assert refused.value.status == "NOT_FOUND"
    token = tmp_path / "token"
    token.write_text(erin + "\n")
    token.chmod(0o600)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"trip_miles": 1.0}]))
    predict = [sys.executable, "-m", "tfxops.cli", "predict", "--home", str(tmp_path),
               "--json", str(rows), "--host", "127.0.0.1", "--port", str(port),
               "--set", "model_name=nosuch", "--ca-file", str(cert)]
    sent = subprocess.run(predict + ["--token-file", str(token)], capture_output=True,
                          text=True, timeout=300)
    assert sent.returncode == 1 and "server answered 404" in sent.stderr, sent.stderr
    token.chmod(0o666)                                 # others may change it: refused
    with pytest.raises(access.AccessError, match="chmod 600"):
        read_token(str(token))


def test_beyond_loopback_without_a_token_warns_and_the_concurrency_limit_answers_429(
        tmp_path, waiting_model, capsys):
    """Bound to 0.0.0.0 with no token: a loud warning. Beyond max_concurrent_requests:
    429 / RESOURCE_EXHAUSTED with Retry-After 1 (was 503 / UNAVAILABLE, which now
    means only "shutting down"); the calls answered are logged with the caller's address."""
    settings = waiter_settings(tmp_path, host="0.0.0.0", max_concurrent_requests=1,
                               log_rotate_records=1)
    copy_version(waiting_model, settings.model_push_dir, 1)
    go, now = tmp_path / "go", waiting_model / "saved_model.pb"
    with BackgroundServer(settings) as server:
        warned = capsys.readouterr().err
        assert "WITHOUT AUTHENTICATION" in warned and "0.0.0.0" in warned
        port, grpc_port = server.ports.rest, server.ports.grpc
        computing = post(port, waiter_body(go), WAITER_PREDICT)     # takes the only slot
        refused, = until(lambda: _refused(port, now), "a call refused with 429")
        assert refused.headers["Retry-After"] == "1"
        assert "max_concurrent_requests" in refused.json()["error"]
        code, _, trailing = grpc_predict(grpc_port, now)
        assert code == "RESOURCE_EXHAUSTED" and trailing["retry-after"] == "1"
        go.touch()
        assert answer(computing).startswith(b"HTTP/1.1 200")
        assert grpc_predict(grpc_port, now)[0] == "OK"
    clients = {r.client for r in request_log.read_request_log(settings.request_logs_path)}
    assert clients == {"127.0.0.1"}


def _refused(port, now):
    """(the answer,) to a predict of the waiting model if it is a 429, else None."""
    response = rest_predict(f"http://127.0.0.1:{port}", now)
    return (response,) if response.status_code == 429 else None


def test_loopback_and_secured_binds_do_not_warn():
    tokens = access.Access(access.token_table([("a", "x" * 16)], "test"), None, False)
    tls = access.Tls("c", "k", b"", b"")
    assert access.exposure_warnings("127.0.0.1", None, None) == []
    assert access.exposure_warnings("localhost", None, None) == []
    assert access.exposure_warnings("0.0.0.0", tokens, tls) == []
    assert "WITHOUT TLS" in access.exposure_warnings("0.0.0.0", tokens, None)[0]
    unauthenticated = access.exposure_warnings("", None, None)[0]
    assert "WITHOUT AUTHENTICATION" in unauthenticated
    assert "silence this warning), set auth_tokens_file" in unauthenticated     # the one way to silence it


def test_unusable_access_settings_are_refused_before_the_model_loads(tmp_path, capsys):
    from tfxops.cli import main

    with pytest.raises(config.ConfigError, match="tls_key_file"):
        config.load({"tls_cert_file": "/x.crt"})
    with pytest.raises(config.ConfigError, match="rate_limit_burst"):
        config.load({"rate_limit_per_second": "5"})
    cert, key = self_signed(tmp_path / "tls")
    home = ["--home", str(tmp_path), "--set", f"serving_dir={tmp_path}"]
    missing = tmp_path / "missing.crt"
    assert main(["serve", *home, "--set", f"tls_cert_file={missing}",
                 "--set", f"tls_key_file={key}"]) == 2
    assert f"cannot read {missing}" in capsys.readouterr().err
    assert main(["serve", *home, "--set", f"tls_cert_file={key}",        # a key is no certificate
                 "--set", f"tls_key_file={key}"]) == 2
    assert "not a PEM certificate and its private key" in capsys.readouterr().err
    tokens = tmp_path / "tokens"
    tokens.write_text("alice short\n")
    tokens.chmod(0o600)
    assert main(["serve", *home, "--set", f"auth_tokens_file={tokens}"]) == 2
    said = capsys.readouterr().err
    assert "fewer than 16" in said and "short" not in said          # the token is not echoed
    tokens.write_text(f"alice {'a' * 20}\n")
    tokens.chmod(0o620)
    assert main(["serve", *home, "--set", f"auth_tokens_file={tokens}"]) == 2
    assert "chmod 600" in capsys.readouterr().err
    os.environ.pop(TOKEN_ENV, None)
    assert main(["serve", *home, "--set", f"auth_token_env={TOKEN_ENV}"]) == 2
    assert f"{TOKEN_ENV}, which is not set" in capsys.readouterr().err


def test_tokens_are_all_compared_and_names_come_from_the_match():
    table = access.token_table([("alice", "a" * 20), ("bob", "b" * 20)], "test")
    assert table.identify("a" * 20) == "alice" and table.identify("b" * 20) == "bob"
    assert table.identify("a" * 19) is None and table.identify("") is None
    with pytest.raises(access.AccessError, match="twice"):
        access.token_table([("alice", "a" * 20), ("eve", "a" * 20)], "test")
    assert access.bearer_token("Bearer  abc ") == "abc" and access.bearer_token("Basic abc") is None


def test_rate_limiter_memory_stays_bounded_under_many_clients():
    """Before: nothing limited calls; a limiter keeping a bucket per address for
    ever would grow with every address an attacker sends from."""
    clock = [0.0]
    limiter = access.RateLimiter(rate=10, burst=2, max_clients=1000, clock=lambda: clock[0])
    for i in range(50_000):
        assert limiter.take(f"10.0.{i // 256}.{i % 256}") is None
    assert len(limiter) == 1000
    assert limiter.take("one") is None and limiter.take("one") is None
    assert limiter.take("one") == 1                        # over: retry after 1 s
    clock[0] += 1.0                                        # all idle long enough to be full
    assert limiter.take("new") is None and len(limiter) == 1


def test_ipv6_clients_share_a_bucket_per_64_network():
    """Before: a bucket per IPv6 address, so one host's /64 (2^64 addresses) got
    unlimited calls and evicted every other client's bucket (rate_limit_max_clients)."""
    assert access.rate_limit_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert access.rate_limit_key("2001:db8:1:2:ffff:ffff:ffff:fffe") == "2001:db8:1:2::/64"
    assert access.rate_limit_key("fe80::1%eth0") == "fe80::/64"
    assert access.rate_limit_key("203.0.113.7") == "203.0.113.7"
    assert access.rate_limit_key("::ffff:203.0.113.7") == "203.0.113.7"      # IPv4 on a dual-stack socket
    assert access.rate_limit_key("unix:/tmp/s") == "unix:/tmp/s"
    limited = access.Access(None, access.RateLimiter(rate=0.01, burst=2, max_clients=3), False)
    admitted = [limited.admit(None, f"2001:db8:1:2::{i:x}") for i in range(1, 200)]
    assert [refusal is None for _, refusal in admitted[:3]] == [True, True, False]
    assert all(refusal is not None and refusal.code == "RESOURCE_EXHAUSTED" for _, refusal in admitted[2:])
    assert admitted[5][0] == "2001:db8:1:2::6"                     # the log still names the address
    assert len(limited.limiter) == 1
    assert limited.admit(None, "2001:db8:1:3::1")[1] is None       # another /64: its own bucket
    assert limited.admit(None, "203.0.113.7")[1] is None and limited.admit(None, "203.0.113.8")[1] is None


def test_predict_names_the_unusable_file_and_the_fix_without_python_errors(tmp_path):
    """Before: a token file that cannot be read printed Python's exception text, and a
    wrong --ca-file a traceback (the gRPC client opened it outside any check)."""
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"trip_miles": 1.0}]))
    not_a_cert = tmp_path / "ca.pem"
    not_a_cert.write_text("not a certificate\n")
    token_dir = tmp_path / "token"
    token_dir.mkdir()
    predict = [sys.executable, "-m", "tfxops.cli", "predict", "--home", str(tmp_path), "--json", str(rows),
               "--port", "1"]
    for args, said in (
            (["--token-file", str(token_dir)], f"--token-file {token_dir}: cannot read it (Is a directory)"),
            (["--protocol", "grpc", "--ca-file", str(tmp_path / "missing.pem")],
             f"--ca-file {tmp_path / 'missing.pem'}: cannot read it (No such file or directory)"),
            (["--ca-file", str(not_a_cert)], f"--ca-file {not_a_cert} holds no PEM certificate")):
        sent = subprocess.run(predict + args, capture_output=True, text=True, timeout=300)
        assert sent.returncode == 2, sent.stderr
        assert said in sent.stderr, sent.stderr
        for python in ("Traceback", "Errno", "Error:"):
            assert python not in sent.stderr, sent.stderr


def test_an_unauthenticated_call_over_the_size_limit_gets_401_not_a_bare_400(secured):
    """Before: a Content-Length over max_request_bytes without a token got tornado's
    bare 400 (the size checked before the token); now 401, JSON, the body unread."""
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(secured.cert))
    head = (f"POST {WAITER_PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {secured.settings.max_request_bytes + 1}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", secured.settings.rest_port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(head)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 401"), answer[:300]
    assert b"www-authenticate: bearer" in headers.lower() and b"connection: close" in headers.lower()
    assert "Authorization: Bearer" in json.loads(body)["error"]
