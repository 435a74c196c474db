"""The manifests under deploy/k8s/ as data, and the tools virtualenv holding
kubernetes-validate (pinned in k8s-tools-requirements.txt, created once under
.cache/tools-venv-k8s and reused while the pins are unchanged)."""
import fcntl
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from tests.conftest import REPO

K8S_DIR = REPO / "deploy" / "k8s"
KSERVE_DIR = K8S_DIR / "kserve"
TOOLS_VENV = REPO / ".cache" / "tools-venv-k8s"
TOOLS_REQUIREMENTS = Path(__file__).with_name("k8s-tools-requirements.txt")
# pip's words for "the package registry cannot be reached": connection errors, or no
# version at all of a package the registry has (a wrong pin lists the versions there are)
UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
               "Network is unreachable", "Connection refused", "ConnectTimeoutError",
               "(from versions: none)")


def manifest_files(directory: Path = K8S_DIR) -> List[Path]:
    return sorted(directory.glob("*.yaml"))


def load_manifests(directory: Path = K8S_DIR) -> Dict[str, dict]:
    """Every resource in ``directory``'s YAML files, by ``Kind/name``."""
    resources = {}
    for path in manifest_files(directory):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                resources[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return resources


@pytest.fixture(scope="session")
def manifests() -> Dict[str, dict]:
    return load_manifests()


def _install_tools_venv() -> None:
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(TOOLS_VENV)], check=True)
    pip = subprocess.run(
        [str(TOOLS_VENV / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-input",
         "-q", "-r", str(TOOLS_REQUIREMENTS)], capture_output=True, text=True)
    if pip.returncode == 0:
        return
    shutil.rmtree(TOOLS_VENV, ignore_errors=True)
    output = pip.stdout + pip.stderr
    if any(marker in output for marker in UNREACHABLE):
        pytest.skip(f"the package registry is unreachable, so kubernetes-validate cannot be "
                    f"installed into {TOOLS_VENV}: {output.strip().splitlines()[-1]}")
    pytest.fail(f"pip could not install {TOOLS_REQUIREMENTS.name} into {TOOLS_VENV}:\n{output}")


@pytest.fixture(scope="session")
def kubernetes_validate() -> Path:
    """The kubernetes-validate executable of the tools virtualenv, installed if missing."""
    TOOLS_VENV.parent.mkdir(parents=True, exist_ok=True)
    marker = TOOLS_VENV / ".installed"
    pins = TOOLS_REQUIREMENTS.read_text()
    with open(TOOLS_VENV.parent / "tools-venv-k8s.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # one installer at a time (parallel test runs)
        if not (marker.is_file() and marker.read_text() == pins):
            _install_tools_venv()
            marker.write_text(pins)
    return TOOLS_VENV / "bin" / "kubernetes-validate"
