"""A real monitor window (the real request-log writer, the monitor's pass) mirrored as
an MLflow run of its own by the monitor, read back through MLflow's client; then a
real re-push of the blessed model (``monitoring.act.repush``) as that window's
outcome: registered, the champion alias moved to it with the window's reason."""
import os

from core import mlmd
from monitoring import act, monitor, policy
from monitoring.reuse import ReuseCandidate
from tests.conftest import SMALL_ROWS
from tests.monitoring.conftest import log_records, monitor_settings, write_logs
from tracking import mirror, registry, store

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _windows(tmp_path, e2e_settings, first_run, taxi_rows):
    """Two windows of 200 rows (the second's drift is measured against the first's)."""
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    results = []
    for start in (SMALL_ROWS, SMALL_ROWS + 200):
        rows = taxi_rows[start:start + 200]
        chunks = [rows[i:i + 20] for i in range(0, len(rows), 20)]
        write_logs(settings.request_logs_path, log_records(chunks, int(first_run.pushed_version), prefix=str(start)), 10)
        results.append(monitor.monitor_once(settings))
    return settings, results


def test_a_monitor_window_is_an_mlflow_run_and_a_repush_moves_the_champion(tmp_path, e2e_settings, first_run,
                                                                          taxi_rows):
    settings, (earlier, result) = _windows(tmp_path, e2e_settings, first_run, taxi_rows)
    assert earlier.status == result.status == "analysed"
    client = _client(store.tracking_uri(settings))
    experiment = client.get_experiment_by_name("tfxops-monitor")
    assert len(client.search_runs([experiment.experiment_id])) == 2      # a run per window
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`tfxops.window` = '{result.window}'")
    (version,) = result.versions
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["rows"] == version.rows == 200
    measured = {f.name: f.drift for f in version.features if f.drift is not None}
    assert measured and all(metrics[f"drift/{name}"] == value for name, value in measured.items())
    skews = {f.name: f.skew for f in version.features if f.skew is not None}
    assert skews and all(metrics[f"skew/{name}"] == value for name, value in skews.items())
    assert metrics["prediction_drift"] == version.prediction["distance"]
    assert tags["tfxops.decision"] == version.decision.action and tags["tfxops.model_version"] == first_run.pushed_version
    assert tags["tfxops.mlmd.execution_id"] == str(version.mlmd["execution_id"])
    # the same window again: the same run
    assert mirror.log_monitor_window(settings, result) == run.info.run_id
    assert len(client.search_runs([experiment.experiment_id], f"tags.`tfxops.window` = '{result.window}'")) == 1

    # the window's outcome is a re-push of the blessed model: a new version, champion moved to it
    db = mlmd.open_store(settings, readonly=False)
    model = mlmd.artifact(db, version.baseline.model.id)
    candidate = ReuseCandidate(model_id=model.id, model_uri=model.uri, model_path=f"{model.uri}/Format-Serving",
                               over=[], errors=0, matches=True, score=0.0, why="matches the window")
    outcome = act.repush(settings, candidate)
    version.decision = policy.Decision(action=policy.REPUSH, triggered=True, reasons=["fare over its skew threshold"],
                                       because="re-push blessed model", outcome=outcome)
    version.mlmd["repush"] = monitor.record_repush(db, settings.pipeline_name, outcome, window=result.window,
                                                   because="re-push blessed model", replaced_version=version.version,
                                                   monitor_execution=version.mlmd["execution_id"])
    mirror.log_monitor_window(settings, result)
    champion = client.get_model_version_by_alias(settings.model_name, registry.CHAMPION)
    assert champion.tags["tfxops.version"] == outcome.pushed_version != first_run.pushed_version
    assert champion.tags["tfxops.champion_reason"] == f"re-pushed by monitor window {result.window}: re-push blessed model"
    assert champion.tags["tfxops.mlmd.pushed_model_id"] == str(version.mlmd["repush"]["output_pushed_model"])
    assert champion.source == outcome.pushed_destination
    # its fingerprints come from the reused model's lineage
    assert champion.tags["tfxops.code_fingerprint"] == \
        mlmd.properties(mlmd.producer(db, model.id))["custom_config"]["code_fingerprint"]
