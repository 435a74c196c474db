"""`tfxops run` as a person runs it (a subprocess, the real CLI) on a copy of the
session's home, every component cached: with a tracking store that cannot be
reached the run succeeds and says so in one warning line; with the default store
it is mirrored (a new MLflow run for the new MLMD run, no new model version: nothing
was pushed). Slow: two CLI runs of the pipeline."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from core import config
from core.ports import free_port
from tests.conftest import E2E_OVERRIDES, REPO
from tracking import store

pytestmark = pytest.mark.slow
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _cli_run(home, data_dir, *sets):
    overrides = [f"--set={k}={v}" for k, v in E2E_OVERRIDES.items()] + [f"--set={s}" for s in sets]
    return subprocess.run([sys.executable, "-m", "tfxops.cli", "run", "--json", "--data", str(data_dir), *overrides],
                          capture_output=True, text=True, env=dict(os.environ, TFXOPS_HOME=str(home)), cwd=REPO,
                          timeout=900)


def test_tfxops_run_goes_on_without_its_tracking_store_and_is_mirrored_with_it(tmp_path, e2e_settings, first_run):
    home = tmp_path / "home"
    shutil.copytree(e2e_settings.home, home)
    (home / "mlflow.db").unlink()
    unreachable = f"http://127.0.0.1:{free_port()}"
    result = _cli_run(home, e2e_settings.data_dir, f"mlflow_tracking_uri={unreachable}")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "MLflow" in line or "mlflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and unreachable in warnings[0] \
        and "mlflow_tracking_uri" in warnings[0], warnings
    assert json.loads(result.stdout)["ok"] is True

    result = _cli_run(home, e2e_settings.data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MLflow" not in result.stderr
    summary = json.loads(result.stdout)
    from mlflow.tracking import MlflowClient

    settings = config.load({"home": str(home)})
    client = MlflowClient(store.tracking_uri(settings), store.tracking_uri(settings))
    experiment = client.get_experiment_by_name("tfxops")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`tfxops.mlmd.run_id` = '{summary['run_id']}'")
    assert run.data.tags["tfxops.cached_push_version"] == first_run.pushed_version
    assert run.data.metrics["pushed"] == 0.0 and run.data.params["data_fingerprint"]
    assert client.search_model_versions(f"name = '{settings.model_name}'") == []    # nothing pushed, nothing registered
