"""Write a ``RunRecord`` as an MLflow run, once: the run is found again by its key and
store tags, and a run already written whole is left as it is (idempotent). A run
left half written (the process died) is completed: parameters, metrics (at the
record's fixed timestamps) and tags are the same the second time."""
import itertools
from typing import Iterable, List

from tracking.run_record import COMPLETE_TAG, KEY_TAG, STORE_TAG, RunRecord, key_filter

METRICS_PER_BATCH = 1000             # MLflow's log_batch limits
PARAMS_OR_TAGS_PER_BATCH = 100


def write_run(mlflow_client, experiment_id: str, record: RunRecord) -> str:
    """The id of the MLflow run holding ``record`` (written now unless it already is)."""
    existing = find_run(mlflow_client, experiment_id, record.key, record.store)
    if existing is not None and existing.data.tags.get(COMPLETE_TAG):
        return existing.info.run_id
    if existing is not None:
        run_id = existing.info.run_id
    else:
        run_id = mlflow_client.create_run(experiment_id, start_time=record.start_ms, run_name=record.name,
                                          tags={KEY_TAG: record.key, STORE_TAG: record.store}).info.run_id
    _log(mlflow_client, run_id, record)
    mlflow_client.set_terminated(run_id, status=record.status, end_time=record.end_ms)
    mlflow_client.set_tag(run_id, COMPLETE_TAG, "true")
    return run_id


def find_run(mlflow_client, experiment_id: str, key: str, store: str):
    """The (not deleted) run mirroring ``key`` of the MLMD store ``store``, or None."""
    runs = mlflow_client.search_runs([experiment_id], key_filter(key), max_results=100)
    return next((run for run in runs if run.data.tags.get(STORE_TAG) == store), None)


def _log(mlflow_client, run_id: str, record: RunRecord) -> None:
    from mlflow.entities import Metric, Param, RunTag

    metrics = [Metric(name, value, record.start_ms, 0) for name, value in sorted(record.metrics.items())]
    params = [Param(name, value) for name, value in sorted(record.params.items())]
    tags = [RunTag(name, value) for name, value in sorted(record.tags.items())]
    for chunk in _chunks(metrics, METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=chunk)
    for chunk in _chunks(params, PARAMS_OR_TAGS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=chunk)
    for chunk in _chunks(tags, PARAMS_OR_TAGS_PER_BATCH):
        mlflow_client.log_batch(run_id, tags=chunk)


def _chunks(items: List, size: int) -> Iterable[List]:
    iterator = iter(items)
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk

