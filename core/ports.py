"""TCP ports: one nothing listens on now, for servers and services started on this
machine (tests, the demo, benchmarks, Beam's local job service and worker pool)."""
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free on ``host`` now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
