"""The fairness gate on real pipeline runs: a model trained where one community
area's training rows are all labelled "no tip" (as if the area's tips were not
recorded; its evaluation rows keep their true labels) is refused (not blessed in MLMD, not pushed, the summary names the area, the metric and
the bound); the model of the bundled data passes.

CsvExampleGen puts a row in the eval split by a hash of its whole tf.Example
(SHA-256 of the deterministic serialization, 3 buckets, the last one eval: TFX's
default output config), so a corrupted label would move a row between splits.
``_split_of`` makes each row's tf.Example as CsvExampleGen does (its column types
inferred over the file) and hashes it; each training row of the area gets a tip of
a few cents (no big tip) chosen so that the row still hashes to train, and the test
checks, on the eval split ExampleGen wrote, that the area's evaluation labels are the
true ones. (Coin-flip training labels for the area, tried first, do not make a model
the gate refuses: noise in the area's training labels leaves its ranking of the
area's true labels good enough; labels biased one way do.)"""
import hashlib
import io
import json

import pytest
import tensorflow as tf

from core import config, mlmd
from core import evaluation as E
from core.pushdir import existing_versions
from pipeline import runner
from tests.conftest import E2E_OVERRIDES, SMALL_ROWS, write_rows

CORRUPTED_AREA = "8"     # the largest pickup community area of the sample
HASH_BUCKETS, EVAL_BUCKET = 3, 2                 # TFX's default split: train 2 buckets, eval 1


def _column_types(rows, columns):
    """tfx_bsl's CSV type inference per column: int, float, else string (None: all empty)."""
    order = [None, "int", "float", "string"]

    def kind(cell):
        if not cell:
            return None
        for name, parse in (("int", int), ("float", float)):
            try:
                parse(cell)
                return name
            except ValueError:
                pass
        return "string"
    return {c: max((kind(r[c]) for r in rows), key=order.index) for c in columns}


def _split_of(row, types) -> int:
    """The hash bucket CsvExampleGen gives ``row`` (EVAL_BUCKET: eval)."""
    features = {}
    for column, kind in types.items():
        cell = row[column]
        features[column] = (
            tf.train.Feature(int64_list=tf.train.Int64List(value=[int(cell)] if cell else [])) if kind == "int" else
            tf.train.Feature(float_list=tf.train.FloatList(value=[float(cell)] if cell else [])) if kind == "float"
            else tf.train.Feature(bytes_list=tf.train.BytesList(value=[cell.encode()] if cell else []))
            if kind == "string" else tf.train.Feature())
    serialized = tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)
    return int(hashlib.sha256(serialized).hexdigest(), 16) % HASH_BUCKETS


def _corrupt_training_rows(rows):
    """Area 8's training rows labelled no big tip (a tip of a few cents that keeps each
    in train); its eval rows unchanged. (rows, the eval rows of the area)"""
    types = _column_types(rows, list(rows[0]))
    out, kept = [], []
    for row in rows:
        if row["pickup_community_area"] != CORRUPTED_AREA or not row["fare"] or float(row["fare"]) < 1:
            out.append(row)
            continue
        if _split_of(row, types) == EVAL_BUCKET:
            out.append(row)
            kept.append(row)
            continue
        out.append(next(candidate for k in range(20) for candidate in [dict(row, tips=f"{k / 100:.2f}")]
                        if _split_of(candidate, types) != EVAL_BUCKET))
    assert _column_types(out, list(rows[0])) == types
    return out, kept


@pytest.fixture(scope="module")
def corrupted_run(tmp_path_factory, taxi_rows):
    """The conftest sample with area 8's training rows labelled no big tip, the
    gate at its default settings; (settings, summary, the area's eval rows)."""
    rows, kept = _corrupt_training_rows(taxi_rows[:SMALL_ROWS])
    data = write_rows(tmp_path_factory.mktemp("corrupted") / "data.csv", rows).parent
    home = tmp_path_factory.mktemp("corrupted_home")
    settings = config.load(dict(E2E_OVERRIDES, home=str(home), data_dir=str(data)))
    return settings, runner.run_pipeline(settings, out=io.StringIO()), kept


def _eval_tips_of_the_area(settings, summary):
    """Each evaluation example of the area: its tips, as CsvExampleGen wrote it."""
    store = mlmd.open_store(settings)
    run = mlmd.find_run(store, settings.pipeline_name, summary.run_id)
    (examples,) = {n.node_id: n for n in mlmd.run_executions(store, run, settings.pipeline_name)}[
        "CsvExampleGen"].outputs["examples"]
    tips = []
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(f"{examples.uri}/Split-eval/*"), compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        area = example.features.feature["pickup_community_area"].int64_list.value
        if list(area) == [int(CORRUPTED_AREA)]:
            tips.append(example.features.feature["tips"].float_list.value[0])
    return sorted(tips)


def test_the_areas_evaluation_rows_keep_their_true_labels(corrupted_run):
    settings, summary, kept = corrupted_run
    assert summary.ok, summary.error
    true_tips = sorted(float(tf.constant(float(r["tips"]), tf.float32).numpy()) for r in kept)
    assert len(true_tips) > 50 and _eval_tips_of_the_area(settings, summary) == true_tips


def test_a_model_worse_on_one_area_is_refused_and_not_pushed(corrupted_run):
    settings, summary, _ = corrupted_run
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
    gated = [r for r in summary.fairness if r["feature"] == "pickup_community_area" and r["gated"]]
    # the model learnt that the area's riders do not tip: it misses the area's big tippers most
    assert area["gated"] and area["false_negative_rate"] == max(r["false_negative_rate"] for r in gated)
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
