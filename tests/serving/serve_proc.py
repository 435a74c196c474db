"""``tfxops serve`` as its own process, for the tests that signal or kill it, and
what those tests read from it: the Prometheus counters, the request log."""
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from serving import client, request_log

PASSED_SETTINGS = ("serving_dir", "rest_port", "grpc_port", "request_log_dir",
                   "log_rotate_records", "log_rotate_seconds", "poll_seconds",
                   "max_concurrent_requests")


class ServeProcess:
    """A running ``tfxops serve`` with ``settings``; ``with`` stops it (SIGKILL if
    it is still running at the end of the block)."""

    def __init__(self, settings, home, args=()):
        command = [sys.executable, "-m", "tfxops.cli", "serve", "--home", str(home), *args]
        for key in PASSED_SETTINGS:
            if hasattr(settings, key):
                command += ["--set", f"{key}={getattr(settings, key)}"]
        self.settings = settings
        # its log goes to a file: a pipe nobody reads would block the server once full
        Path(home).mkdir(parents=True, exist_ok=True)
        self.log_path = Path(home) / f"serve-{settings.rest_port}.log"
        with open(self.log_path, "a") as log:
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
    return [r.log_metadata.request_origin for r in request_log.read_prediction_logs(files)]


def hidden_files(directory) -> list:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


PREDICT_PATH = "/v1/models/taxi:predict"


def hold(port: int, body: bytes) -> socket.socket:
    """A predict request whose body is only half sent: in flight at the server until
    the rest comes (``sock.sendall(body[len(body) // 2:])``)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % (PREDICT_PATH.encode(), len(body))
                 + body[:len(body) // 2])
    return sock


def until(predicate, what: str, timeout: float = 60.0):
    """Poll ``predicate`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")
