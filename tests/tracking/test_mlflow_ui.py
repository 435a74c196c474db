"""How a person looks at the mirror: mlflow-skinny has no UI server (``mlflow ui``
needs Flask and the web app, which only the full ``mlflow`` ships), so the README
says to run the full MLflow of the same version in a virtualenv of its own against
the same store. This does exactly that (a tools virtualenv pinned in
mlflow-ui-requirements.txt, built once under .cache/tools-venv-mlflow-ui) on a copy of
the session's store, and reads the mirrored run, the registered version and the
champion alias through the UI server's REST API. Slow: the virtualenv's first build
takes minutes."""
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from core.ports import free_port
from tests import tool_venv
from tracking import store

pytestmark = pytest.mark.slow
TOOLS = tool_venv.ToolVenv("mlflow-ui", "the full mlflow", Path(__file__).with_name("mlflow-ui-requirements.txt"))


@pytest.fixture(scope="module")
def full_mlflow() -> Path:
    return tool_venv.ensure(TOOLS) / "bin" / "mlflow"


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
