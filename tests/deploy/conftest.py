"""The manifests under deploy/k8s/ as data, and the tools virtualenv holding
kubernetes-validate (pinned in k8s-tools-requirements.txt, created once under
.cache/tools-venv-k8s and reused while the pins are unchanged)."""
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from tests import tool_venv
from tests.conftest import REPO

K8S_DIR = REPO / "deploy" / "k8s"
KSERVE_DIR = K8S_DIR / "kserve"
K8S_TOOLS = tool_venv.ToolVenv("k8s", "kubernetes-validate", Path(__file__).with_name("k8s-tools-requirements.txt"))
UNREACHABLE = tool_venv.UNREACHABLE       # read by other test modules from here


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


@pytest.fixture(scope="session")
def kubernetes_validate() -> Path:
    """The kubernetes-validate executable of the tools virtualenv, installed if missing."""
    return tool_venv.ensure(K8S_TOOLS) / "bin" / "kubernetes-validate"
