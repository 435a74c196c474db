"""The fairness gate on real pipeline runs: a model trained where one community
area's labels are coin flips is refused (not blessed in MLMD, not pushed, the summary
names the area, the metric and the bound); the model of the bundled data passes."""
import io
import json
import random

import pytest

from core import config, mlmd
from core import evaluation as E
from core.pushdir import existing_versions
from pipeline import runner
from tests.conftest import E2E_OVERRIDES, SMALL_ROWS, write_rows

CORRUPTED_AREA = "8"     # the largest pickup community area of the sample


@pytest.fixture(scope="module")
def corrupted_run(tmp_path_factory, taxi_rows):
    """The conftest sample with area 8's labels replaced by coin flips (a tip of half
    the fare or none), the gate at its default settings."""
    flips = random.Random(15)
    rows = [dict(row, tips=f"{float(row['fare']) / 2:.2f}" if flips.random() < 0.5 else "0.0")
            if row["pickup_community_area"] == CORRUPTED_AREA else row for row in taxi_rows[:SMALL_ROWS]]
    data = write_rows(tmp_path_factory.mktemp("corrupted") / "data.csv", rows).parent
    home = tmp_path_factory.mktemp("corrupted_home")
    settings = config.load(dict(E2E_OVERRIDES, home=str(home), data_dir=str(data)))
    return settings, runner.run_pipeline(settings, out=io.StringIO())


def test_a_model_worse_on_one_area_is_refused_and_not_pushed(corrupted_run):
    settings, summary = corrupted_run
    assert summary.ok, summary.error
    assert summary.blessed is False and not summary.pushed
    assert existing_versions(str(settings.model_push_dir)) == []
    failures = summary.fairness_failures
    # the area is named; no other area fails on its own (card and cash payers' slices
    # may fail too: a third of their trips start in the area)
    areas = [f for f in failures if f["feature"] == "pickup_community_area"]
    assert areas and all(CORRUPTED_AREA in f["slices"] for f in areas)
    area = next(r for r in summary.fairness if r["feature"] == "pickup_community_area"
                and r["value"] == CORRUPTED_AREA)
    assert area["gated"] and area["auc"] < 0.7
    # the blessing in MLMD says not blessed
    store = mlmd.open_store(settings)
    run = mlmd.find_run(store, settings.pipeline_name, summary.run_id)
    evaluator = {n.node_id: n for n in mlmd.run_executions(store, run, settings.pipeline_name)}["Evaluator"]
    assert mlmd.custom(evaluator.outputs["blessing"][0], "blessed") == 0
    recorded = E.fairness_failures(evaluator.outputs["evaluation"][0].uri)
    assert [f.describe() for f in recorded] == [f["text"] for f in failures]
    # the text names the area, the metric and the bound
    text = runner.render(summary)
    assert "fairness: FAILED" in text and "pushed: nothing (the model was not blessed)" in text
    reason = next(r for r in summary.blessing_reasons if f"pickup_community_area={CORRUPTED_AREA}" in r)
    assert f"    - {reason}" in text
    assert any(f"needs >= {settings.fairness_min_slice_auc:g}" in r or
               f"needs <= {settings.fairness_max_fpr_gap:g}" in r or
               f"needs <= {settings.fairness_max_fnr_gap:g}" in r for r in summary.blessing_reasons)
    assert json.loads(summary.to_json())["fairness_failures"] == failures


def test_the_bundled_data_passes_the_gate(first_run, e2e_settings):
    assert first_run.blessed is True and first_run.fairness_failures == []
    assert first_run.fairness_gate["features"] == e2e_settings.sensitive_features
    assert first_run.fairness_gate["min_slice_auc"] == config.Settings().fairness_min_slice_auc
    gated = [r for r in first_run.fairness if r["gated"]]
    assert {r["feature"] for r in gated} == set(e2e_settings.sensitive_features)
    assert all(r["auc"] >= e2e_settings.fairness_min_slice_auc for r in gated)
    small = [r for r in first_run.fairness if not r["gated"]]
    assert small and all(min(r["positives"], r["negatives"]) < e2e_settings.fairness_min_examples_per_class
                         for r in small)
    assert "fairness: passed" in runner.render(first_run)
