"""The MLflow mirror of ``tfxops run`` and of monitor windows (one call each, after
the run or the window). Every function is a no-op when ``mlflow_tracking`` is off,
returns None with one warning line when the store cannot be used, and never raises.

- ``log_pipeline_run``: the run in experiment ``mlflow_experiment`` (``pipeline_facts``);
  a pushed version is registered with ``champion`` moved to it (``registry``), its
  model version linked to the run.
- ``log_monitor_window``: each judged version's window in ``<mlflow_experiment>-monitor``
  (``window_facts``); a re-push is registered and becomes the champion.
Writing the same run or window again finds the MLflow run it wrote (``runs``)."""
from typing import Dict, Optional

from core import mlmd
from core.config import Settings
from tracking import registry, store
from tracking.pipeline_facts import pipeline_run_facts
from tracking.runs import write_run
from tracking.window_facts import window_records

ANALYSED = "analysed"          # monitoring.result.ANALYSED: a window judged and committed
REPUSH = "repush"              # the policy's action that publishes a blessed model again


def log_pipeline_run(settings: Settings, summary) -> Optional[str]:
    """Mirror one ``tfxops run`` (its ``RunSummary``); returns the MLflow run id."""
    return store.mirrored(settings, f"run {summary.run_id}", lambda client: _log_run(client, settings, summary))


def log_monitor_window(settings: Settings, window_result) -> Optional[str]:
    """Mirror an analysed window (not a dry run); returns the MLflow run id of the
    current version's window (else the first version's)."""
    if window_result.status != ANALYSED or window_result.dry_run or not window_result.versions:
        return None
    return store.mirrored(settings, f"monitor window {window_result.window}",
                          lambda client: _log_window(client, settings, window_result))


def _log_run(mlflow_client, settings: Settings, summary) -> str:
    experiment = store.experiment_id(mlflow_client, settings.mlflow_experiment,
                                     store.default_artifact_location(settings))
    facts = pipeline_run_facts(settings, summary)
    run_id = write_run(mlflow_client, experiment, facts.record)
    if facts.pushed is not None:
        pushed = facts.pushed
        number = registry.register(mlflow_client, settings, pushed.version, pushed.mlmd_ids,
                                   reason=f"pushed by run {summary.run_id}", run_id=run_id, facts=pushed.model)
        mlflow_client.set_tag(run_id, "tfxops.registered_model_version", number)
    return run_id


def _log_window(mlflow_client, settings: Settings, window_result) -> str:
    experiment = store.experiment_id(mlflow_client, settings.mlflow_experiment + store.MONITOR_EXPERIMENT_SUFFIX,
                                     store.default_artifact_location(settings))
    run_ids = []
    for version, record in zip(window_result.versions, window_records(settings, window_result)):
        run_ids.append(write_run(mlflow_client, experiment, record))
        outcome = version.decision.outcome
        if version.decision.action == REPUSH and outcome is not None and outcome.ok and outcome.pushed:
            registry.register(mlflow_client, settings, int(outcome.pushed_version),
                              _repush_ids(settings, version.mlmd or {}, outcome),
                              reason=f"re-pushed by monitor window {window_result.window}: {version.decision.because}",
                              run_id=run_ids[-1])
    current = [run_id for version, run_id in zip(window_result.versions, run_ids) if version.current]
    return (current or run_ids)[0]


def _repush_ids(settings: Settings, recorded: Dict, outcome) -> Dict[str, int]:
    """The MLMD ids of a re-push: its ``tfxops.Repush`` record, else the store's PushedModel."""
    repush = recorded.get("repush") or {}
    ids = {"model_id": outcome.model_id, "repush_execution_id": repush.get("execution_id"),
           "pushed_model_id": repush.get("output_pushed_model")}
    if ids["pushed_model_id"] is None:
        pushed = mlmd.pushed_model_for_version(mlmd.open_store(settings), outcome.pushed_version)
        ids["pushed_model_id"] = pushed.artifact.id if pushed is not None else None
    return {key: value for key, value in ids.items() if value is not None}
