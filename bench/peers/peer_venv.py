"""The peer servers of bench/serving.py: their virtualenv (built once per machine
under ``~/.cache/tfxops-bench/`` from requirements-peers.txt, rebuilt when the pins
change) and their processes."""
import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

PEERS = Path(__file__).resolve().parent
REQUIREMENTS = PEERS / "requirements-peers.txt"
CACHE = Path(os.environ.get("TFXOPS_BENCH_CACHE", Path.home() / ".cache" / "tfxops-bench"))
VENV = CACHE / "peers-venv"
PEER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}


class PeerSetupError(RuntimeError):
    """The peers' virtualenv could not be built (the message names the log)."""


def base_python() -> str:
    """The interpreter the project's venv was made from (the same Python version)."""
    candidate = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return str(candidate if candidate.exists() else sys.executable)


def peer_python() -> Path:
    """The peers' virtualenv's python, built first if missing or out of date."""
    CACHE.mkdir(parents=True, exist_ok=True)
    marker, pins = VENV / ".installed", REQUIREMENTS.read_text()
    with open(CACHE / "peers-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.is_file() and marker.read_text() == pins):
            _build(CACHE / "peers-venv-install.log")
            marker.write_text(pins)
    return VENV / "bin" / "python"


def _build(log_path: Path) -> None:
    print(f"building the peers' virtualenv in {VENV} (about 2.3 GB, a few minutes; "
          f"log: {log_path}) ...", flush=True)
    with open(log_path, "w") as log:
        steps = [[base_python(), "-m", "venv", "--clear", str(VENV)],
                 [str(VENV / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-input",
                  "--require-hashes", "--no-deps", "-r", str(REQUIREMENTS)]]
        for step in steps:
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise PeerSetupError(f"could not build the peers' virtualenv {VENV}: see {log_path} "
                                     f"(pins: {REQUIREMENTS})")


def start(command: List[str], log_path: Path) -> subprocess.Popen:
    """A peer server process (stderr to ``log_path``), in the peers' environment."""
    env: Dict[str, str] = {**os.environ, **PEER_ENV}
    env.pop("PYTHONPATH", None)
    with open(log_path, "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PEERS)


def fastapi(python: Path, model_dir: str, port: int, log_path: Path) -> subprocess.Popen:
    return start([str(python), str(PEERS / "fastapi_server.py"), model_dir, str(port)], log_path)


def kserve(python: Path, model_dir: str, http_port: int, grpc_port: int,
           log_path: Path) -> subprocess.Popen:
    return start([str(python), str(PEERS / "kserve_server.py"), "--model_dir", model_dir,
                  "--http_port", str(http_port), "--grpc_port", str(grpc_port), "--workers", "1"],
                 log_path)


V2_REQUEST = r"""
import sys
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
request = pb.ModelInferRequest(model_name="taxi")
tensor = request.inputs.add(name="examples", datatype="BYTES", shape=[1])
tensor.contents.bytes_contents.append(sys.stdin.buffer.read())
sys.stdout.buffer.write(request.SerializeToString())
"""


def v2_infer_request(python: Path, serialized_example: bytes) -> bytes:
    """A serialized V2 ``ModelInferRequest`` for model taxi: one BYTES input
    ``examples`` holding ``serialized_example`` (built with KServe's own proto)."""
    return subprocess.run([str(python), "-c", V2_REQUEST], input=serialized_example,
                          capture_output=True, check=True, env={**os.environ, **PEER_ENV}).stdout


if __name__ == "__main__":
    print(peer_python())
