"""What a person sees in a terminal, each command run as a user runs it (a subprocess of
``python -m tfxops.cli``): a port in use named before anything loads, a mistyped --home
named, a dead server named by its URL, no library noise (it goes to <home>/logs/tfxops.log),
--version, an example under every command's --help."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import requests

from core.ports import free_port
from tests.conftest import REPO

# Lines TensorFlow, absl and Python print that a user should never see (issue 18).
NOISE = ("cuFFT", "cuDNN", "cuBLAS", "TensorRT", "WARNING:tensorflow", "is deprecated", "absl::",
         "oneDNN", "Traceback")


def tfxops(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfxops.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kwargs)


def quiet(text: str) -> bool:
    return not any(noise in text for noise in NOISE)


@pytest.fixture
def busy_port():
    """A port another process (this one) listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


# ------------------------------------------------------------------ serve: ports
@pytest.mark.parametrize("ports, api, fix", [
    (lambda busy, free: ["--set", f"grpc_port={busy}", "--set", f"rest_port={free}"], "gRPC", "--port PORT"),
    (lambda busy, free: ["--port", str(free), "--rest_api_port", str(busy)], "REST", "--rest_api_port PORT"),
    (lambda busy, free: ["--port", str(busy), "--set", f"rest_port={free}"], "gRPC", "--set grpc_port=PORT"),
    (lambda busy, free: ["--proxy-to", "127.0.0.1:1", "--set", f"rest_port={busy}"], "REST", "--set rest_port=PORT"),
])
def test_serve_names_a_port_in_use_before_loading_anything(tmp_path, busy_port, ports, api, fix):
    """The model directory does not even exist: the port is the first thing checked."""
    started = time.monotonic()
    result = tfxops("serve", "--home", str(tmp_path), "--set", "host=127.0.0.1", *ports(busy_port, free_port()))
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line == (f"tfxops serve: cannot listen for {api} on 127.0.0.1:{busy_port} (in use by another process): "
                    f"stop the process using it, or choose another port with "
                    f"{'--port' if api == 'gRPC' else '--rest_api_port'} PORT (or --set "
                    f"{'grpc_port' if api == 'gRPC' else 'rest_port'}=PORT)")
    assert fix in line
    assert time.monotonic() - started < 60          # no model load, no TensorFlow import


# ------------------------------------------------------------------ predict: no server
def test_predict_names_the_url_of_a_dead_server_and_imports_no_tensorflow(tmp_path):
    port = free_port()
    result = tfxops("predict", "--home", str(tmp_path), "--port", str(port), "--rows", "2")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"tfxops predict: no server at http://127.0.0.1:{port}/v1/models/taxi:predict "
                             f"(connection refused): start one (`tfxops serve`), or pass --host and --port of "
                             f"the one that runs\n")
    grpc = tfxops("predict", "--home", str(tmp_path), "--port", str(port), "--protocol", "grpc")
    assert grpc.returncode == 1
    assert grpc.stderr.startswith(f"tfxops predict: no gRPC server at 127.0.0.1:{port} (connection refused)")
    # REST needs no TensorFlow (importing it takes seconds): the modules the command imported
    probe = ("import sys; from tfxops.cli import main; code = main(sys.argv[1:]); "
             "print(sorted({m.split('.')[0] for m in sys.modules})); sys.exit(code)")
    timed = subprocess.run([sys.executable, "-c", probe, "predict", "--home", str(tmp_path), "--port", str(port)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    imported = set(eval(timed.stdout))                    # noqa: S307 - our own print of a list of names
    assert {"serving", "requests", "core"} <= imported
    assert not imported & {"tensorflow", "tfx", "tensorflow_serving", "apache_beam", "tfx_bsl"}


def test_predict_says_what_each_connection_failure_means(tmp_path):
    """A host that does not resolve; a listener that hangs up without answering (a TLS
    port spoken to in plain text behaves so): an actionable line, never `TypeName: text`."""
    unknown = tfxops("predict", "--home", str(tmp_path), "--host", "no-such-host.invalid", "--port", "8501")
    assert unknown.returncode == 1
    assert unknown.stderr == ("tfxops predict: no server at http://no-such-host.invalid:8501/v1/models/taxi:predict "
                              "(the host name does not resolve): check --host\n")
    with socket.socket() as rude:
        rude.bind(("127.0.0.1", 0))
        rude.listen()
        port = rude.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "tfxops.cli", "predict", "--home", str(tmp_path), "--port",
                                 str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        connection, _ = rude.accept()
        connection.recv(65536)
        connection.close()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err == (f"tfxops predict: the server at http://127.0.0.1:{port}/v1/models/taxi:predict closed the "
                   f"connection without answering: if it serves TLS, pass --ca-file; else look at the server's log\n")
    bad = tmp_path / "rows.json"
    bad.write_text('[{"trip_miles": "far"}]')
    refused = tfxops("predict", "--home", str(tmp_path), "--json", str(bad), "--port", str(free_port()))
    assert refused.returncode == 2
    assert refused.stderr == ("tfxops predict: cannot send the rows: trip_miles: 'far' is not a float "
                              "(the feature's type)\n")
    for result in (unknown, refused):
        assert not re.search(r"\b[A-Z]\w+(Error|Exception): ", result.stderr)


# ------------------------------------------------------------------ monitor --home
def test_monitor_names_a_home_that_is_not_one(tmp_path):
    typo = tmp_path / "outptus"
    result = tfxops("monitor", "--home", str(typo))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"tfxops monitor: {typo} does not exist: found neither a metadata store ({typo}/metadata.sqlite) nor "
        f"request logs ({typo}/request_logs). Pass --home the directory `tfxops run` and `tfxops serve` write "
        f"to (default ./outputs), or set metadata_path and request_log_dir\n")
    assert not typo.exists()                       # nothing created at a typo
    empty = tmp_path / "empty"
    empty.mkdir()
    result = tfxops("monitor", "--home", str(empty))
    assert result.returncode == 2 and f"{empty} holds no tfxops home" in result.stderr


def test_monitor_with_nothing_new_says_so_quietly(tmp_path):
    (tmp_path / "request_logs").mkdir()            # a server made it and wrote nothing yet
    result = tfxops("monitor", "--home", str(tmp_path))
    assert result.returncode == 0
    assert result.stdout == f"no new requests in {tmp_path}/request_logs since the last run; nothing to do\n"
    assert result.stderr == ""


# ------------------------------------------------------------------ serve, predict: quiet
def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"tfxops serve did not listen on {port}:\n{log.read_text()}")


def test_serve_and_predict_print_only_their_own_lines(tmp_path, first_run):
    """A real server and client: the server's terminal has its own log lines (the version
    AVAILABLE) and none of TensorFlow's; those are in <home>/logs/tfxops.log."""
    import shutil

    version = Path(first_run.pushed_path).name
    shutil.copytree(first_run.pushed_path, tmp_path / "serving_model" / "taxi" / version)
    rest, grpc_port = free_port(), free_port()
    terminal = tmp_path / "serve-terminal.txt"
    with open(terminal, "w") as err:
        server = subprocess.Popen([sys.executable, "-m", "tfxops.cli", "serve", "--home", str(tmp_path),
                                   "--set", "host=127.0.0.1", "--set", f"rest_port={rest}", "--set",
                                   f"grpc_port={grpc_port}"], stdout=err, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        _wait_listening(rest, server, terminal)
        predicted = tfxops("predict", "--home", str(tmp_path), "--port", str(rest), "--rows", "3")
        assert predicted.returncode == 0 and predicted.stderr == "", predicted.stderr
        assert [0.0 <= float(p) <= 1.0 for p in predicted.stdout.split()] == [True] * 3
        metrics = requests.get(f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics", timeout=30).text
        assert ':tensorflow:serving:request_count{model_name="taxi",status="OK"} 1' in metrics
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    said = terminal.read_text()
    assert f"model taxi version {version} AVAILABLE" in said and quiet(said), said
    library_log = (tmp_path / "logs" / "tfxops.log").read_text()
    assert "tensorflow" in library_log and "Restoring parameters" in library_log


# ------------------------------------------------------------------ --version, help
def test_version_and_an_example_under_every_commands_help():
    from tfxops import __version__
    from tfxops.cli import EXAMPLES, build_parser

    result = tfxops("--version", timeout=60)
    assert result.returncode == 0 and quiet(result.stdout + result.stderr)
    assert re.fullmatch(rf"tfxops {re.escape(__version__)} \(TFX 1\.16\.\d+, TensorFlow 2\.16\.\d+, "
                        rf"Python 3\.10\.\d+\)\n", result.stdout), result.stdout
    commands = build_parser()._subparsers._group_actions[0].choices      # argparse keeps them there
    missing: List[str] = [name for name in commands if name not in EXAMPLES]
    assert missing == []
    for name, command in commands.items():
        text = command.format_help()
        assert "examples:\n" in text and f"  tfxops {name}" in text, name
    serve = tfxops("serve", "--help", timeout=60).stdout
    assert "--proxy-to HOST:PORT" in serve and "--home DIR" in serve and "tfxops serve --port 9500" in serve
    predict = commands["predict"].format_help()
    for metavar in ("--csv FILE", "--json FILE", "--rows N", "--host HOST", "--port PORT", "--version N",
                    "--token-file FILE", "--token-env NAME", "--ca-file FILE", "--set KEY=VALUE"):
        assert metavar in predict, metavar


def test_library_output_of_a_command_goes_to_its_homes_log(tmp_path):
    """`tfxops config` imports no TensorFlow; a Python warning inside a command (here
    the monitor's, which does) goes to <home>/logs/tfxops.log, as Python's logging of
    the libraries."""
    result = tfxops("config", "--home", str(tmp_path), timeout=60)
    assert result.returncode == 0 and quiet(result.stderr) and result.stderr == ""
    assert (tmp_path / "logs" / "tfxops.log").exists()
    env = dict(os.environ, PYTHONWARNINGS="always")     # every warning a library raises, shown
    (tmp_path / "request_logs").mkdir()
    result = tfxops("monitor", "--home", str(tmp_path), env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr


NESTED = """
import logging, os, sys
from pathlib import Path
from core.env import library_output_to, show_own_logs
home = Path(sys.argv[1])
with library_output_to(home / "command.log", prints_to_terminal=True):     # as tfxops.cli.main
    print("the command says")
    os.write(2, b"E cuda_fft.cc: Unable to register cuFFT factory\\n")       # C++ at import
    show_own_logs(logging.INFO)
    logging.getLogger("tfxops.serving").info("a server says")
    logging.getLogger("tensorflow").warning("load is deprecated")
    terminal = sys.stdout
    with library_output_to(home / "run.log") as console:                    # as a pipeline run
        print("600/600 - 16s - loss: 0.1076")                                 # Keras' progress
        console(terminal).write("[ 9/16] Trainer  executed\\n")
        logging.getLogger("tfxops.pipeline").info("pushed")
    print("the command ends")
"""


def test_library_output_goes_to_the_innermost_log_and_the_commands_own_lines_to_the_terminal(tmp_path):
    result = subprocess.run([sys.executable, "-c", NESTED, str(tmp_path)], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "the command says\n[ 9/16] Trainer  executed\nthe command ends\n"
    assert result.stderr.endswith("INFO a server says\n") and quiet(result.stderr)
    command_log = (tmp_path / "command.log").read_text()
    assert "cuFFT" in command_log and "W tensorflow: load is deprecated" in command_log
    run_log = (tmp_path / "run.log").read_text()
    assert "loss: 0.1076" in run_log and "I tfxops.pipeline: pushed" in run_log
    assert "loss" not in command_log and "Trainer" not in run_log
