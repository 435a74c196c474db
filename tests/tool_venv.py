"""Tool virtualenvs of the contract tests: a tool that does not fit the main pins
(docker-compose, kubernetes-validate, openapi-spec-validator, tritonclient, the full
mlflow) gets a virtualenv of its own, built once per machine under .cache/tools-venv-<name>
from a pinned requirements file and reused while the pins are unchanged."""
import fcntl
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.conftest import REPO

CACHE_DIR = REPO / ".cache"
# pip's words for "the package registry cannot be reached": connection errors, or no
# version at all of a package the registry has (a wrong pin lists the versions there are)
UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
               "Network is unreachable", "Connection refused", "ConnectTimeoutError",
               "(from versions: none)")


@dataclass(frozen=True)
class ToolVenv:
    name: str                                   # .cache/tools-venv-<name>
    tool: str                                   # what it holds, for the messages
    requirements: Path                          # the pins (with --hash= lines: hash-checked)
    build_constraints: Optional[Path] = None    # PIP_CONSTRAINT for building its sdists

    @property
    def path(self) -> Path:
        return CACHE_DIR / f"tools-venv-{self.name}"

    def pins(self) -> str:
        extra = self.build_constraints.read_text() if self.build_constraints else ""
        return self.requirements.read_text() + extra

    def hashed(self) -> bool:
        return "--hash=" in self.requirements.read_text()


def _pip_command(venv: ToolVenv) -> list:
    command = [str(venv.path / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-input", "-q"]
    if venv.hashed():       # the file pins every dependency with its sha256
        command += ["--require-hashes", "--no-deps"]
    return command + ["-r", str(venv.requirements)]


def _install(venv: ToolVenv) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv.path)], check=True)
    env = dict(os.environ)
    if venv.build_constraints:
        env["PIP_CONSTRAINT"] = str(venv.build_constraints)      # reaches the sdists' build envs
    pip = subprocess.run(_pip_command(venv), capture_output=True, text=True, env=env)
    if pip.returncode == 0:
        return
    shutil.rmtree(venv.path, ignore_errors=True)
    output = (pip.stdout + pip.stderr).strip()
    last_line = output.splitlines()[-1] if output else "(pip printed nothing)"
    if any(marker in output for marker in UNREACHABLE):
        pytest.skip(f"the package registry is unreachable, so {venv.tool} cannot be installed into "
                    f"{venv.path}: {last_line}")
    pytest.fail(f"pip could not install {venv.requirements.name} ({venv.tool}) into {venv.path}; "
                f"fix the pins in {venv.requirements}:\n{output}")


def ensure(venv: ToolVenv) -> Path:
    """The virtualenv's directory, built if missing or if its pins changed; one builder
    at a time (concurrent test runs wait on .cache/tools-venv-<name>.lock)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    marker, pins = venv.path / ".installed", venv.pins()
    with open(CACHE_DIR / f"tools-venv-{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.is_file() and marker.read_text() == pins):
            _install(venv)
            marker.write_text(pins)
    return venv.path
