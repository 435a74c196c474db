"""How a person looks at the mirror: mlflow-skinny has no UI server (``mlflow ui``
needs Flask and the web app, which only the full ``mlflow`` ships), so the README
says to run the full MLflow of the same version in a virtualenv of its own against
the same store. This does exactly that (a tools virtualenv pinned in
mlflow-ui-requirements.txt, built once under .cache/tools-venv-mlflow-ui) on a copy of
the session's store, and reads the mirrored run, the registered version and the
champion alias through the UI server's REST API. Slow: the virtualenv's first build
takes minutes."""
import fcntl
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from core.ports import free_port
from tests.conftest import REPO
from tracking import store

pytestmark = pytest.mark.slow
TOOLS_VENV = REPO / ".cache" / "tools-venv-mlflow-ui"
TOOLS_REQUIREMENTS = Path(__file__).with_name("mlflow-ui-requirements.txt")
UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
               "Network is unreachable", "Connection refused", "(from versions: none)")


def _install_tools_venv() -> None:
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(TOOLS_VENV)], check=True)
    pip = subprocess.run([str(TOOLS_VENV / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-input",
                          "-q", "-r", str(TOOLS_REQUIREMENTS)], capture_output=True, text=True)
    if pip.returncode == 0:
        return
    shutil.rmtree(TOOLS_VENV, ignore_errors=True)
    output = pip.stdout + pip.stderr
    if any(marker in output for marker in UNREACHABLE):
        pytest.skip(f"the package registry is unreachable, so mlflow cannot be installed into {TOOLS_VENV}")
    pytest.fail(f"pip could not install {TOOLS_REQUIREMENTS.name} into {TOOLS_VENV}:\n{output}")


@pytest.fixture(scope="module")
def full_mlflow() -> Path:
    TOOLS_VENV.parent.mkdir(parents=True, exist_ok=True)
    marker, pins = TOOLS_VENV / ".installed", TOOLS_REQUIREMENTS.read_text()
    with open(TOOLS_VENV.parent / "tools-venv-mlflow-ui.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.is_file() and marker.read_text() == pins):
            _install_tools_venv()
            marker.write_text(pins)
    return TOOLS_VENV / "bin" / "mlflow"


def _wait_for(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    raise AssertionError(f"mlflow ui never answered at {url}: {log.read_text()[-3000:]}")


def test_full_mlflow_ui_shows_the_mirrored_run_and_the_champion(tmp_path, full_mlflow, e2e_settings, first_run):
    database = tmp_path / "mlflow.db"
    shutil.copy(store.tracking_uri(e2e_settings)[len("sqlite:///"):], database)
    port, log = free_port(), tmp_path / "ui.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(full_mlflow), "ui", "--backend-store-uri", f"sqlite:///{database}",
                                   "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(base + "/", server, log)
        assert "<title>MLflow" in requests.get(base + "/", timeout=10).text
        api = base + "/api/2.0/mlflow"
        experiment = requests.get(api + "/experiments/get-by-name", params={"experiment_name": "tfxops"},
                                  timeout=10).json()["experiment"]
        runs = requests.post(api + "/runs/search", timeout=10, json={
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.`tfxops.mlmd.run_id` = '{first_run.run_id}'"}).json()["runs"]
        assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
        champion = requests.get(api + "/registered-models/alias", timeout=10,
                                params={"name": e2e_settings.model_name, "alias": "champion"}).json()["model_version"]
        assert champion["source"] == first_run.pushed_path and champion["run_id"] == runs[0]["info"]["run_id"]
    finally:
        server.terminate()
        server.wait(timeout=30)
