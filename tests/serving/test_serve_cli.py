"""``tfxops serve`` as a user runs it: its own process, on its busy-polling loop;
answers ``tfxops predict`` over REST and gRPC, and on SIGTERM stops cleanly (exit 0)
with every answered request in a closed request-log file, under the request id
``tfxops predict`` printed. Plus the busy-polling selector itself."""
import json
import selectors
import signal
import socket
import subprocess
import sys

import pytest

from core import request_log
from serving import busy_poll
from serving import client
from tests.serving.conftest import copy_version, serving_settings


def test_busy_poll_selector_returns_ready_sockets_and_times_out():
    sel = busy_poll.BusyPollSelector(0.002)
    a, b = socket.socketpair()
    try:
        sel.register(a, selectors.EVENT_READ, "a")
        assert sel.select(0) == []
        assert sel.select(0.01) == []                 # spun, then slept out the timeout
        b.send(b"x")
        ready = sel.select(None)                      # found while spinning
        assert [(key.data, events) for key, events in ready] == [("a", selectors.EVENT_READ)]
        assert sel.get_key(a).data == "a" and a in sel.get_map()
        sel.modify(a, selectors.EVENT_READ, "a2")
        assert sel.select(1.0)[0][0].data == "a2"
        sel.unregister(a)
        assert len(sel.get_map()) == 0
    finally:
        sel.close()
        a.close()
        b.close()


def test_busy_poll_run_serves_asyncio_streams():
    import asyncio

    async def main():
        async def echo(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        line = await reader.readline()
        writer.close()
        server.close()
        await server.wait_closed()
        return line

    assert busy_poll.run(main(), 300) == b"ping\n"
    assert busy_poll.run(main(), 0) == b"ping\n"


def wait_listening(port, proc):
    try:
        client.wait_listening(port, proc)
    except RuntimeError as exc:
        raise AssertionError(f"tfxops serve: {exc}:\n{proc.stderr.read()}") from None


@pytest.mark.parametrize("busy_poll_micros", [500, 0])
def test_tfxops_serve_process_serves_and_stops_cleanly_on_sigterm(
        tmp_path, pushed_model, busy_poll_micros):
    settings = serving_settings(tmp_path, busy_poll_micros=busy_poll_micros)
    copy_version(pushed_model, settings.model_push_dir, 3)
    command = [sys.executable, "-m", "tfxops.cli", "serve", "--home", str(tmp_path)]
    for key in ("serving_dir", "rest_port", "grpc_port", "request_log_dir", "busy_poll_micros"):
        command += ["--set", f"{key}={getattr(settings, key)}"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(settings.rest_port, proc)
        wait_listening(settings.grpc_port, proc)
        answers = {}   # what `tfxops predict` prints, over both protocols
        for protocol, port, rid in (("rest", settings.rest_port, []),
                                    ("grpc", settings.grpc_port, ["--request-id", "cli-grpc"])):
            out = subprocess.run(
                [sys.executable, "-m", "tfxops.cli", "predict", "--home", str(tmp_path),
                 "--protocol", protocol, "--port", str(port), "--rows", "4", "--output", "json",
                 *rid], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            answers[protocol] = json.loads(out.stdout)
        assert answers["rest"]["predictions"] == pytest.approx(answers["grpc"]["predictions"], abs=1e-6)
        assert len(answers["rest"]["predictions"]) == 4
        assert all(0.0 <= p <= 1.0 for p in answers["rest"]["predictions"])
        assert answers["grpc"]["request_id"] == "cli-grpc" and answers["rest"]["request_id"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    files = request_log.closed_log_files(settings.request_logs_path)
    assert files, "no closed request-log file after SIGTERM"
    logged = list(request_log.read_request_log(files))
    assert len(logged) == 2                           # one REST, one gRPC request of 4 rows
    assert sorted(len(r.examples) for r in logged) == [4, 4]
    # the ids printed are the ids logged: what a feedback CSV refers to
    assert {r.request_id for r in logged} == {a["request_id"] for a in answers.values()}
    assert not [p for p in settings.request_logs_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("busy", ["grpc_port", "rest_port"])
def test_a_port_in_use_is_named_with_the_setting_to_change(tmp_path, pushed_model, busy):
    """A gRPC port in use gave grpc's RuntimeError traceback; a REST one '[Errno 98]'."""
    settings = serving_settings(tmp_path)
    copy_version(pushed_model, settings.model_push_dir, 3)
    taken = socket.socket()
    taken.bind(("127.0.0.1", getattr(settings, busy)))
    taken.listen()
    try:
        command = [sys.executable, "-m", "tfxops.cli", "serve", "--home", str(tmp_path)]
        for key in ("serving_dir", "rest_port", "grpc_port", "request_log_dir"):
            command += ["--set", f"{key}={getattr(settings, key)}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        taken.close()
    assert done.returncode == 1
    port = getattr(settings, busy)
    assert f"127.0.0.1:{port}" in done.stderr and f"--set {busy}=PORT" in done.stderr
    assert "Traceback" not in done.stderr and "RuntimeError" not in done.stderr
