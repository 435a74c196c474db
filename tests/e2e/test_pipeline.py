"""End to end: the whole pipeline on a 3,000-row sample, with few training steps.

Runs in order: a first run (everything executes, a blessed model is pushed; no
baseline), a rerun (everything cached, nothing pushed again), a run on other rows
(a new candidate, judged against the first run's served model, not itself), and a
run on data with anomalies (stops at DataGate, before Transform and Trainer;
nothing pushed).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from core import config
from core import features as F
from core.pushdir import write_marker
from pipeline import runner
from pipeline.baseline import BASELINE_SOURCE_URI, BASELINE_VERSION, served_baseline
from core.pushdir import existing_versions
from tests.conftest import E2E_OVERRIDES, REPO, SMALL_ROWS, write_rows
from core import mlmd
from core.examples import row_to_example

PIPELINE_NODES = {"CsvExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataGate",
                  "Transform", "Trainer", "baseline_model_resolver", "Evaluator", "FeatureAttributor",
                  "ModelCardGenerator", "InputDomainGen", "TrustedHoldoutExampleGen", "HoldoutEvaluator", "InfraValidator",
                  "Pusher"}


def _cli_run(settings, *args):
    """`tfxops run` in a subprocess with the end-to-end home and settings."""
    env = dict(os.environ, TFXOPS_HOME=settings.home)
    overrides = [f"--set={k}={v}" for k, v in E2E_OVERRIDES.items()]
    return subprocess.run(
        [sys.executable, "-m", "tfxops.cli", "run", "--data", str(settings.data_dir), *overrides, *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


def _executions(settings, run_id=None):
    store = mlmd.open_store(settings)
    run = mlmd.find_run(store, settings.pipeline_name, run_id)
    return {n.node_id: n for n in mlmd.run_executions(store, run, settings.pipeline_name, with_inputs=True)}


def _states(settings, run_id=None):
    return {node: n.state for node, n in _executions(settings, run_id).items()}


def _summary(result) -> runner.RunSummary:
    """The RunSummary `tfxops run --json` printed."""
    document = json.loads(result.stdout)
    return runner.RunSummary(**dict(document, nodes=[runner.NodeReport(**n) for n in document["nodes"]]))


def test_first_run_executes_every_component_and_pushes_a_blessed_model(first_run, e2e_settings):
    assert first_run.ok, first_run.error
    states = _states(e2e_settings, first_run.run_id)
    assert set(states) == PIPELINE_NODES
    assert all(state == "COMPLETE" for state in states.values()), states
    # progress shows every component with its outcome
    for node in PIPELINE_NODES:
        assert node in first_run.progress_text
    assert first_run.blessed is True
    auc = next(m for m in first_run.metrics if m["metric"] == "auc")
    assert auc["value"] >= e2e_settings.min_auc
    assert first_run.pushed
    assert existing_versions(str(e2e_settings.model_push_dir)) == [int(first_run.pushed_version)]
    # nothing half-written is left beside the versions
    assert os.listdir(e2e_settings.model_push_dir) == [first_run.pushed_version]
    # nothing was served yet: no baseline, change thresholds skipped
    [baseline] = _executions(e2e_settings, first_run.run_id)["Evaluator"].inputs["baseline_model"]
    assert mlmd.custom(baseline, BASELINE_VERSION) == ""
    assert all(metric["baseline"] is None for metric in first_run.metrics)


def test_pushed_model_answers_on_both_signatures(first_run, small_data_dir, taxi_rows):
    model = tf.saved_model.load(first_run.pushed_path)
    assert {F.DEFAULT_SIGNATURE, F.RAW_SIGNATURE, F.TRANSFORM_SIGNATURE} <= set(model.signatures)
    rows = taxi_rows[-20:]   # rows the sample did not include

    serialized = tf.constant([row_to_example(r, F.SERVING_FEATURES).SerializeToString() for r in rows])
    by_example = model.signatures[F.DEFAULT_SIGNATURE](examples=serialized)[F.PREDICTION_KEY].numpy()

    raw_fn = model.signatures[F.RAW_SIGNATURE]
    raw_inputs = {}
    for name, spec in raw_fn.structured_input_signature[1].items():
        values = [r[name] or F.default_value(name) for r in rows]
        if spec.dtype == tf.string:
            raw_inputs[name] = tf.constant([str(v) for v in values])
        else:
            raw_inputs[name] = tf.constant([float(v) for v in values], dtype=tf.float64)
            raw_inputs[name] = tf.cast(raw_inputs[name], spec.dtype)
    by_raw = raw_fn(**raw_inputs)[F.PREDICTION_KEY].numpy()

    assert by_example.shape == (20,)
    assert np.all((by_example >= 0) & (by_example <= 1))
    np.testing.assert_allclose(by_example, by_raw, atol=1e-5)
    assert by_example.std() > 0   # not a constant answer


def test_rerun_on_unchanged_data_is_fully_cached(first_run, e2e_settings):
    """Through the CLI with --json: stdout is one JSON document (progress goes to
    stderr), and a cached Pusher is reported as nothing pushed, with the version
    that already holds this model."""
    result = _cli_run(e2e_settings, "--json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Pusher" in result.stderr and "cached" in result.stderr
    summary = _summary(result)
    assert summary.ok
    states = _states(e2e_settings, summary.run_id)
    assert summary.run_id != first_run.run_id
    # the baseline resolver too: the served model is now the candidate itself,
    # and it is not asked again
    assert set(states) == PIPELINE_NODES
    not_cached = {n: s for n, s in states.items() if s != "CACHED"}
    assert not not_cached, not_cached
    # the same model, not a second copy of it, and not reported as pushed
    assert existing_versions(str(e2e_settings.model_push_dir)) == [int(first_run.pushed_version)]
    assert summary.pushed is False and summary.pushed_version is None
    assert summary.cached_push_version == first_run.pushed_version
    assert f"pushed: nothing new (version {first_run.pushed_version} already serving)" in runner.render(summary)


def test_a_new_candidate_is_judged_against_the_served_model_not_itself(
        first_run, e2e_settings, taxi_rows, tmp_path):
    # A copy of the shared home (its store and pushes): the lineage tests read the
    # shared one's push history and must not see this run's push.
    settings = config.load(dict(E2E_OVERRIDES, home=str(tmp_path / "home"), data_dir=str(e2e_settings.data_dir)))
    shutil.copytree(e2e_settings.home, settings.home)
    write_rows(tmp_path / "other" / "data.csv", taxi_rows[SMALL_ROWS:2 * SMALL_ROWS], F.CSV_COLUMNS)
    result = _cli_run(settings, "--data", str(tmp_path / "other"), "--json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = _summary(result)
    executions = _executions(settings, summary.run_id)
    assert executions["Trainer"].state == "COMPLETE"       # a new candidate
    [candidate] = executions["Trainer"].outputs["model"]
    [baseline] = executions["Evaluator"].inputs["baseline_model"]
    [first_model] = _executions(e2e_settings, first_run.run_id)["Trainer"].outputs["model"]
    assert mlmd.custom(baseline, BASELINE_VERSION) == first_run.pushed_version
    assert mlmd.custom(baseline, BASELINE_SOURCE_URI) == first_model.uri != candidate.uri
    assert all(metric["baseline"] is not None for metric in summary.metrics), summary.metrics


def test_the_baseline_is_the_newest_served_version_not_pushed_from_the_candidate(tmp_path):
    served = tmp_path / "serving"
    for version, model_uri in ((100, "/runs/Trainer/model/1"), (200, "/runs/Trainer/model/2"), (300, None)):
        (served / str(version)).mkdir(parents=True)
        if model_uri:
            write_marker(str(served / str(version)), {"model_uri": model_uri})
    assert served_baseline(str(served), "/runs/Trainer/model/3") == "300"   # no marker: not the candidate
    (served / "300").rmdir()
    assert served_baseline(str(served), "/runs/Trainer/model/2") == "100"
    assert served_baseline(str(served), "/runs/Trainer/model/1") == "200"
    (served / "200" / ".tfxops-push.json").unlink()
    (served / "100").rename(served / ".orphaned-100")
    assert served_baseline(str(served), "/runs/Trainer/model/2") == "200"
    assert served_baseline(str(tmp_path / "nothing-served"), "/runs/Trainer/model/2") is None
    only_the_candidate = tmp_path / "only" / "400"
    only_the_candidate.mkdir(parents=True)
    write_marker(str(only_the_candidate), {"model_uri": "/runs/Trainer/model/4"})
    assert served_baseline(str(only_the_candidate.parent), "/runs/Trainer/model/4") is None


@pytest.fixture
def anomalous_data_dir(tmp_path, taxi_rows):
    rows = [dict(r) for r in taxi_rows[:1500]]
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["payment_type"] = "Bitcoin"      # not in the schema's payment types
        if i % 5 == 0:
            row["trip_start_hour"] = "31"        # outside 0..23
    write_rows(tmp_path / "data" / "data.csv", rows, F.CSV_COLUMNS)
    return tmp_path / "data"


def test_data_with_anomalies_stops_before_training_and_pushes_nothing(
        first_run, e2e_settings, anomalous_data_dir):
    before = existing_versions(str(e2e_settings.model_push_dir))
    result = _cli_run(e2e_settings, "--data", str(anomalous_data_dir))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "stopped at DataGate" in result.stdout
    assert "payment_type" in result.stdout and "trip_start_hour" in result.stdout
    assert "pushed: nothing" in result.stdout

    states = _states(e2e_settings)
    assert states["DataGate"] == "FAILED"
    assert "Transform" not in states and "Trainer" not in states and "Pusher" not in states
    assert existing_versions(str(e2e_settings.model_push_dir)) == before
