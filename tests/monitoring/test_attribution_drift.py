"""Feature attribution drift on the model the first pipeline run pushed (its
push-time attributions written by the pipeline's FeatureAttributor), with request
logs written by the real log writer: rows resampled from held-out data keep the
ranking; rows where one feature carries the decision (only it varies, every other
feature held at one trip's values) flag it, with that feature the top mover.
The NDCG itself against hand-computed values, and the row sample's independence
of reading order."""
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from core import attribution, mlmd
from core import features as F
from monitoring import attribution_drift, monitor, policy, record
from monitoring.sample import RowSample
from tests.monitoring.conftest import log_records, monitor_settings, write_logs


# ------------------------------------------------------------------ NDCG
def test_ndcg_of_the_same_order_is_one_and_of_a_reversal_by_hand():
    push = {"a": 0.7, "b": 0.5, "c": 0.05}
    assert attribution_drift.ndcg(push, {"a": 0.3, "b": 0.2, "c": 0.1}) == pytest.approx(1.0)
    # SageMaker's example: live a=0.10, b=0.20, c=0.70 in the push-time order a, b, c
    dcg = 0.10 / math.log2(2) + 0.20 / math.log2(3) + 0.70 / math.log2(4)      # 0.57619
    idcg = 0.70 / math.log2(2) + 0.20 / math.log2(3) + 0.10 / math.log2(4)     # 0.87619
    assert attribution_drift.ndcg(push, {"a": 0.10, "b": 0.20, "c": 0.70}) == pytest.approx(dcg / idcg)
    assert attribution_drift.ndcg(push, {"a": 0.10, "b": 0.20, "c": 0.70}) == pytest.approx(0.65761, abs=1e-5)


def test_ndcg_weighs_the_top_of_the_ranking():
    push = {"a": 0.5, "b": 0.2, "c": 0.1, "d": 0.05}
    minor_swap = attribution_drift.ndcg(push, {"a": 0.5, "b": 0.2, "c": 0.05, "d": 0.1})
    top_swap = attribution_drift.ndcg(push, {"a": 0.2, "b": 0.5, "c": 0.1, "d": 0.05})
    assert 0.99 < minor_swap < 1.0 and top_swap < minor_swap
    # a feature missing on one side scores 0 there (ranked last at push: 1 / log2(5 + 1));
    # nothing attributed at all: nothing to rank
    assert attribution_drift.ndcg(push, {"e": 1.0}) == pytest.approx(1 / math.log2(6))
    assert attribution_drift.ndcg(push, {}) == 1.0


def test_compare_lists_the_top_movers_by_their_change_of_share():
    push = attribution.Attributions("sampled-shapley", 200, {"a": 0.6, "b": 0.3, "c": 0.1})
    window = attribution.Attributions("sampled-shapley", 50, {"a": 0.2, "b": 0.2, "c": 0.6})
    drift = attribution_drift.compare(push, window, threshold=0.9)
    assert drift.drifted and drift.ndcg < 0.9
    assert [s.name for s in drift.top_movers()] == ["c", "a", "b"]
    assert drift.shifts[0].change == pytest.approx(0.6 - 0.1) and drift.shifts[0].window_rank == 1
    assert "top movers: c 0.10 -> 0.60 (rank 3 -> 1)" in drift.finding()


# ------------------------------------------------------------------ the row sample
def test_the_sample_does_not_depend_on_the_reading_order_or_the_split_into_parts():
    ids = [f"req-{i // 10}" for i in range(5000)]
    rows = np.arange(5000) % 10
    payload = [f"row{i}".encode() for i in range(5000)]
    whole = RowSample(capacity=100)
    whole.add(payload, ids, rows)
    parts = []
    for start in (3000, 0, 1700):                    # another order, another split
        stop = {3000: 5000, 0: 1700, 1700: 3000}[start]
        part = RowSample(capacity=100)
        part.add(payload[start:stop], ids[start:stop], rows[start:stop])
        parts.append(part)
    merged = RowSample(capacity=0)
    for part in parts:
        merged.merge(part)
    assert merged.rows == whole.rows and len(whole.rows) == 100
    assert list(whole.keys) == sorted(whole.keys)
    small = RowSample(capacity=10)
    small.add(payload, ids, rows)
    assert small.rows == whole.rows[:10]             # the first k rows are the bottom-k sample


# ------------------------------------------------------------------ at push: the pipeline's FeatureAttributor
def test_the_pipeline_records_the_attributions_of_the_model_it_pushed(e2e_settings, first_run):
    store = mlmd.open_store(e2e_settings)
    pushed = mlmd.pushed_model_for_version(store, first_run.pushed_version)
    (model,) = mlmd.input_artifacts(store, mlmd.producer(store, pushed.artifact.id).id)["model"]
    artifact = attribution.artifact_for_model(store, model.id)
    assert mlmd.node_and_run(store, mlmd.producer(store, artifact.id).id, e2e_settings.pipeline_name)[0] \
        == "FeatureAttributor"
    found = attribution.for_model(store, model.id)
    assert found.method == attribution.METHOD and found.rows == e2e_settings.attribution_rows
    assert len(found.background) == e2e_settings.attribution_background_rows
    assert sorted(found.mean_abs) == sorted(F.MODEL_FEATURES)       # the raw signature's inputs
    assert found.cost["model_rows"] == found.rows * found.samples * (len(F.MODEL_FEATURES) + 1)
    assert mlmd.custom(artifact, "ranking").split(",") == found.ranking()
    assert found.shares()[found.ranking()[0]] > found.shares()[found.ranking()[-1]] >= 0


# ------------------------------------------------------------------ the monitor, on a real model
@pytest.fixture(scope="module")
def attribution_home(tmp_path_factory, e2e_settings, first_run):
    return monitor_settings(tmp_path_factory.mktemp("attribution"), e2e_settings, first_run)


def _monitor(settings, rows, version, prefix):
    chunks = [rows[i:i + 20] for i in range(0, len(rows), 20)]
    write_logs(settings.request_logs_path, log_records(chunks, version, prefix=prefix), rotate_records=10)
    return monitor.monitor_once(settings)


@pytest.fixture(scope="module")
def healthy(attribution_home, first_run, held_out_rows):
    rng = random.Random(15)
    rows = [rng.choice(held_out_rows) for _ in range(600)]          # resampled from the data
    return _monitor(attribution_home, rows, int(first_run.pushed_version), "healthy")


@pytest.fixture(scope="module")
def carried(attribution_home, first_run, held_out_rows, healthy):
    """Served rows where one feature carries the decision: the numeric feature the
    model relied on least at push varies from 0 to 100 times its largest held-out
    value (as a client sending it in another unit would), every other feature is
    held at one card-paid trip's values."""
    (group,) = healthy.versions
    push_rank = {s.name: s.push_rank for s in group.attribution.shifts}
    feature = max(F.DENSE_FLOAT_FEATURES, key=lambda name: push_rank[name])
    trip = next(r for r in held_out_rows if r["payment_type"] == "Credit Card" and r["fare"] and r["trip_miles"])
    top = max(float(r[feature] or 0) for r in held_out_rows)
    rows = [dict(trip, **{feature: str(value)}) for value in np.linspace(0, 100 * top, 300)]
    return feature, _monitor(attribution_home, rows, int(first_run.pushed_version), "carried")


def test_rows_resampled_from_the_data_keep_the_push_time_ranking(healthy, attribution_home):
    (group,) = healthy.versions
    drift = group.attribution
    assert drift.available, drift.reason
    assert drift.rows == attribution_home.attribution_rows and drift.push_rows == attribution_home.attribution_rows
    assert not drift.drifted and drift.ndcg >= 0.95
    assert max(abs(s.change) for s in drift.shifts) < 0.1
    assert drift.cost["model_calls"] >= 1 and drift.cost["model_rows"] == 200 * 8 * (len(drift.shifts) + 1)
    assert "attribution drift" not in healthy.summary_line()
    assert not any("attribution" in r for r in healthy.decision.reasons)


def test_one_feature_carrying_the_decision_flags_attribution_drift(carried, attribution_home):
    feature, result = carried
    (group,) = result.versions
    drift = group.attribution
    assert drift.available and drift.drifted, drift.as_dict()
    assert drift.ndcg < attribution_home.attribution_min_ndcg
    assert drift.top_movers()[0].name == feature and drift.top_movers()[0].change > 0.2
    assert drift.top_movers()[0].window_rank == 1 < drift.top_movers()[0].push_rank
    assert f"attribution drift (version {group.version}): NDCG {drift.ndcg:.3f}" in result.summary_line()
    # the report a person reads: the NDCG and the top movers; the JSON: the same numbers
    html = Path(result.report.html).read_text()
    assert "Feature attribution drift" in html and f"{feature} (top mover)" in html
    document = json.loads(Path(result.report.json).read_text())["versions"][0]["attribution"]
    assert document["drifted"] and document["top_movers"][0] == feature
    assert document["ndcg"] == pytest.approx(drift.ndcg)
    # MLMD: the monitor's execution read the push-time attributions of the model it judged
    store = mlmd.open_store(attribution_home)
    execution = record.find_run(store, result.window, str(group.version))
    inputs = mlmd.input_artifacts(store, execution.id)
    assert inputs["attributions"][0].id == drift.artifact_id
    assert attribution.artifact_for_model(store, group.baseline.model.id).id == drift.artifact_id
    assert mlmd.custom(execution, "attribution_ndcg") == pytest.approx(drift.ndcg)


def test_attribution_drift_alerts_by_default_and_is_a_reason_when_its_trigger_is_on(carried, attribution_home):
    import dataclasses

    drift = carried[1].versions[0].attribution
    quiet = dict(features=[], prediction={}, quality={})
    assert policy.reasons_for(attribution_home, attribution=drift, **quiet) == []
    decision = policy.decide(attribution_home, reasons=[], rows=300, is_current=True, window_action=None,
                             last_action=None, dry_run=False, attribution=drift)
    assert decision.action == policy.ALERT and "feature attribution drift" in decision.reasons[0]
    on = dataclasses.replace(attribution_home, trigger_on_attribution_drift=True)
    assert policy.reasons_for(on, attribution=drift, **quiet) == [drift.finding()]
