"""``tfxops serve`` as its own process, for the tests that signal or kill it, and
what those tests read from it: the Prometheus counters, the request log."""
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from core import request_log
from serving import client

PASSED_SETTINGS = ("serving_dir", "rest_port", "grpc_port", "request_log_dir",
                   "log_rotate_records", "log_rotate_seconds", "poll_seconds",
                   "max_concurrent_requests", "model_name", "enable_batching",
                   "request_body_timeout_seconds")


class ServeProcess:
    """A running ``tfxops serve`` with ``settings`` (and the open files limits
    ``open_files``: (soft, hard)); ``with`` stops it (SIGKILL if it is still
    running at the end of the block)."""

    def __init__(self, settings, home, args=(), open_files=None):
        command = [sys.executable, "-m", "tfxops.cli", "serve", "--home", str(home), *args]
        for key in PASSED_SETTINGS:
            if hasattr(settings, key):
                command += ["--set", f"{key}={getattr(settings, key)}"]
        self.settings = settings
        # its log goes to a file: a pipe nobody reads would block the server once full
        Path(home).mkdir(parents=True, exist_ok=True)
        self.log_path = Path(home) / f"serve-{settings.rest_port}.log"
        with open(self.log_path, "a") as log:
            if open_files is not None:    # the shell's ulimit: no preexec_fn in a threaded process
                command = ["sh", "-c", f"ulimit -Sn {open_files[0]} && ulimit -Hn {open_files[1]} "
                                       f'&& exec "$@"', "sh", *command]
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            client.wait_listening(settings.rest_port, self.proc)
            client.wait_listening(settings.grpc_port, self.proc)
        except RuntimeError as exc:
            self.kill()
            raise AssertionError(f"tfxops serve: {exc}:\n{self.log()}") from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.proc.poll() is None:
            self.kill()
        if exc_type is not None:   # the server's side of a failure, in pytest's report
            print(self.log()[-20000:])

    def log(self) -> str:
        """What the server wrote to stderr (its log)."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """``kill -9``."""
        self.proc.kill()
        self.proc.wait(60)

    def terminate(self) -> int:
        """SIGTERM; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)

    def counter(self, name: str) -> float:
        """A counter's value on the metrics page (summed over its labels)."""
        text = requests.get(f"http://127.0.0.1:{self.settings.rest_port}"
                            f"/monitoring/prometheus/metrics", timeout=30).text
        return sum(float(m.group(1)) for m in
                   re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    def wait_counter(self, name: str, value: float, timeout: float = 60.0) -> float:
        """Poll until ``name`` reaches ``value`` (or ``timeout``); its last value."""
        deadline = time.monotonic() + timeout
        seen = self.counter(name)
        while seen < value and time.monotonic() < deadline:
            time.sleep(0.05)
            seen = self.counter(name)
        return seen


def logged_ids(directory) -> list:
    """The request ids in the closed log files of ``directory`` (one per record)."""
    files = request_log.closed_log_files(directory)
    return [r.request_id for r in request_log.read_request_log(files)]


def hidden_files(directory) -> list:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


PREDICT_PATH = "/v1/models/taxi:predict"


def post(port: int, body: bytes, path: str = PREDICT_PATH, sent=None,
         request_id: str = "") -> socket.socket:
    """A POST of ``body`` to ``path`` on its own connection, only its first ``sent``
    bytes sent (default: all); read the answer with ``answer(sock)``."""
    sock = socket.create_connection(("127.0.0.1", port))
    rid = b"X-Request-Id: %s\r\n" % request_id.encode() if request_id else b""
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                 b"Content-Length: %d\r\n\r\n" % (path.encode(), rid, len(body))
                 + body[:len(body) if sent is None else sent])
    return sock


def hold(port: int, body: bytes, path: str = PREDICT_PATH) -> socket.socket:
    """A request whose body is only half sent: still arriving at the server until
    the rest comes (``sock.sendall(body[len(body) // 2:])``)."""
    return post(port, body, path, sent=len(body) // 2)


def answer(sock: socket.socket) -> bytes:
    """The HTTP answer read from ``sock`` (head and body; what came before the
    server closed the connection, b"" when it closed it without answering)."""
    sock.settimeout(120)
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _answer_length(data):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
    return data


def _answer_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return len(head) + 4 + int(length.group(1) if length else 0)


# ------------------------------------------------ calls of conftest.waiting_model
WAITER_PATH = "/v1/models/waiter:predict"


def waiter_body(path) -> bytes:
    """A predict body for the waiting model: answered once a file is at ``path``."""
    return json.dumps({"instances": [str(path)]}).encode()


def waiter_grpc(port: int, path, timeout: float = 60) -> tuple:
    """(status code name, details) of a gRPC Predict of the waiting model."""
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "waiter"
    request.inputs["path"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[str(path).encode()],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=timeout)
        except grpc.RpcError as err:
            return err.code().name, err.details()
    return "OK", ""


def rest_status(port: int, body: bytes, path: str = WAITER_PATH) -> tuple:
    """(HTTP status, JSON body) of a POST on a new connection."""
    response = requests.post(f"http://127.0.0.1:{port}{path}", data=body, timeout=60)
    return response.status_code, response.json()


def connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 5).close()
    except ConnectionRefusedError:
        return True
    return False


def until(predicate, what: str, timeout: float = 60.0):
    """Poll ``predicate`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")
