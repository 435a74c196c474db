"""The fairness gate's parts: the Evaluator's eval config, the gate's rule, and the
reader/recorder of per-slice results on a real TFMA evaluation (TFMA run on a
table of labels and scores: the same metric configs the Evaluator uses)."""
import json

import numpy as np
import pandas as pd
import pytest
import tensorflow_model_analysis as tfma

from core import config, mlmd
from core import evaluation as E
from pipeline.fairness import FAIRNESS_GATE_KEY, FairnessGate, rate_metrics
from pipeline.pipeline import create_pipeline, eval_config
from pipeline.runner import fairness_gate, pipeline_arguments

GATE = FairnessGate(features=["payment_type", "pickup_community_area"], decision_threshold=0.4,
                    min_examples_per_class=30, min_slice_auc=0.65, max_fpr_gap=0.2, max_fnr_gap=0.3)


def test_eval_config_adds_the_rates_and_the_sensitive_slices_and_thresholds_stay_overall():
    cfg = eval_config(0.7, 0.6, 0.01, ["trip_start_hour", "payment_type"], GATE)
    keys = [list(spec.feature_keys) for spec in cfg.slicing_specs]
    assert keys == [[], ["trip_start_hour"], ["payment_type"], ["pickup_community_area"]]
    metrics = {m.class_name: m for m in cfg.metrics_specs[0].metrics}
    assert {"ExampleCount", "AUC", "BinaryAccuracy", "FallOut", "MissRate", "PredictedPositiveRate",
            "MeanLabel"} == set(metrics)
    for class_name, name in (("FallOut", E.FALSE_POSITIVE_RATE), ("MissRate", E.FALSE_NEGATIVE_RATE),
                             ("PredictedPositiveRate", E.POSITIVE_RATE)):
        assert json.loads(metrics[class_name].config) == {"thresholds": [0.4], "name": name}
    assert json.loads(metrics["BinaryAccuracy"].config) == {"threshold": 0.4}
    # TFMA thresholds: the overall slice only, none across slices (the gate judges slices)
    for metric in cfg.metrics_specs[0].metrics:
        assert not metric.cross_slice_thresholds
        for per_slice in metric.per_slice_thresholds:
            assert [list(s.feature_keys) for s in per_slice.slicing_specs] == [[]]
    assert not cfg.cross_slicing_specs


def test_the_settings_reach_the_evaluator_as_its_fairness_gate(tmp_path):
    settings = config.load({"home": str(tmp_path), "sensitive_features": "payment_type",
                            "fairness_min_slice_auc": "0.55", "decision_threshold": "0.3"}, environ={})
    nodes = {n.id: n for n in create_pipeline(**pipeline_arguments(settings, "/data")).components}
    gate = FairnessGate.from_json(nodes["Evaluator"].exec_properties[FAIRNESS_GATE_KEY])
    assert gate == fairness_gate(settings)
    assert gate.features == ["payment_type"] and gate.min_slice_auc == 0.55 and gate.decision_threshold == 0.3
    defaults = config.Settings()
    assert (defaults.sensitive_features, defaults.decision_threshold) == (
        ["payment_type", "pickup_community_area"], 0.5)


def _slice(feature, value, count, positives, auc, fpr, fnr):
    return E.SliceMetrics(feature, value, count, positives, auc, 0.8, fpr, fnr, 0.5,
                          gated=min(positives, count - positives) >= GATE.min_examples_per_class)


def test_the_gate_judges_gated_slices_only():
    slices = [_slice("payment_type", "Card", 500, 300, 0.80, 0.10, 0.20),
              _slice("payment_type", "Cash", 900, 40, 0.60, 0.35, 0.25),     # AUC below, FPR gap 0.25
              _slice("payment_type", "Mobile", 40, 5, 0.10, 0.90, 0.90),     # not gated: ignored
              _slice("pickup_community_area", "8", 400, 100, 0.70, 0.20, 0.20)]
    failures = GATE.failures(slices)
    assert [(f.feature, f.slices, f.metric) for f in failures] == [
        ("payment_type", ("Cash",), "auc"), ("payment_type", ("Cash", "Card"), "false_positive_rate")]
    assert failures[1].value == pytest.approx(0.25) and failures[1].bound == 0.2
    assert failures[1].describe() == ("payment_type: false_positive_rate gap = 0.2500 between "
                                      "payment_type=Cash and payment_type=Card, needs <= 0.2")
    assert GATE.failures([s for s in slices if s.value != "Cash"]) == []


@pytest.fixture(scope="module")
def evaluation_uri(tmp_path_factory):
    """TFMA over 3,000 rows: Card scored well, Cash at random, 'No Charge' tiny."""
    rng = np.random.default_rng(0)
    payment = rng.choice(["Card", "Cash", "No Charge"], size=3000, p=[0.5, 0.48, 0.02])
    area = rng.choice([8, 32], size=3000)
    label = rng.integers(0, 2, size=3000)
    score = np.clip(0.6 * label + rng.normal(0.2, 0.15, size=3000), 0, 1)
    score[payment == "Cash"] = rng.uniform(size=(payment == "Cash").sum())
    table = pd.DataFrame({"prediction": score, "label": label, "payment_type": payment,
                          "pickup_community_area": area})
    cfg = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key="label", prediction_key="prediction")],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[f]) for f in GATE.features],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"), tfma.MetricConfig(class_name="AUC"),
            tfma.MetricConfig(class_name="BinaryAccuracy", config=json.dumps({"threshold": 0.4})),
            *rate_metrics(0.4)])])
    uri = str(tmp_path_factory.mktemp("evaluation"))
    tfma.analyze_raw_data(table, cfg, output_path=uri)
    return uri


def test_slice_metrics_reads_every_slice_of_the_sensitive_features(evaluation_uri):
    slices = E.slice_metrics(evaluation_uri, GATE.features, GATE.min_examples_per_class)
    assert [s.name for s in slices][:4] == ["overall", "payment_type=Card", "payment_type=Cash",
                                            "payment_type=No Charge"]
    assert {s.name for s in slices[4:]} == {"pickup_community_area=8", "pickup_community_area=32"}
    overall, card, cash, tiny = slices[:4]
    assert overall.example_count == 3000 and not overall.gated
    assert card.example_count + cash.example_count + tiny.example_count == 3000
    assert card.gated and cash.gated and not tiny.gated
    assert card.auc > 0.95 and 0.4 < cash.auc < 0.6
    assert 0.3 < cash.false_positive_rate < 0.8 and card.false_positive_rate < 0.1
    assert 0 < card.positives < card.example_count
    assert card.positive_rate == pytest.approx(card.positives / card.example_count, abs=0.1)


def test_gate_failures_are_recorded_in_tfmas_validation_result(evaluation_uri):
    slices = E.slice_metrics(evaluation_uri, GATE.features, GATE.min_examples_per_class)
    failures = GATE.failures(slices)
    named = {(f.slices, f.metric) for f in failures}
    assert (("Cash",), "auc") in named
    assert (("Cash", "Card"), "false_positive_rate") in named
    assert not any("No Charge" in f.slices for f in failures)
    E.record_fairness_failures(evaluation_uri, failures)
    assert E.fairness_failures(evaluation_uri) == failures
    assert not tfma.load_validation_result(evaluation_uri).validation_ok
    reasons = mlmd.validation_failures(evaluation_uri)
    assert any(r.startswith("payment_type=Cash vs payment_type=Card: false_positive_rate difference = ")
               and r.endswith("needs <= 0.2") for r in reasons)
    assert any(r.startswith("payment_type=Cash: auc = ") and r.endswith("needs >= 0.65") for r in reasons)


def test_a_feature_with_no_gated_slice_fails_the_gate():
    slices = [_slice("payment_type", "Card", 500, 300, 0.80, 0.10, 0.20),
              _slice("payment_type", "Cash", 900, 10, 0.60, 0.35, 0.25),       # 10 positives: not gated
              _slice("pickup_community_area", "8", 40, 12, 0.70, 0.20, 0.20)]  # 40 examples: not gated
    failures = GATE.failures([s for s in slices if s.value != "Card"])
    assert [(f.feature, f.slices, f.metric, f.value, f.bound) for f in failures] == [
        ("payment_type", (), E.CLASS_EXAMPLES, 10, 30), ("pickup_community_area", (), E.CLASS_EXAMPLES, 12, 30)]
    assert failures[0].describe() == ("payment_type: no slice with >= 30 examples of each label to judge "
                                      "(the most any slice has: 10)")
    assert [f.feature for f in GATE.failures(slices)] == ["pickup_community_area"]
    # a feature absent from the evaluation (no slice at all) fails too
    assert [f.slices for f in GATE.failures([])] == [(), ()]


def test_a_no_gated_slice_failure_is_recorded_and_read_back(evaluation_uri, tmp_path):
    import shutil

    uri = str(tmp_path / "evaluation")
    shutil.copytree(evaluation_uri, uri)
    strict = FairnessGate(**dict(GATE.__dict__, min_examples_per_class=2000))
    failures = strict.failures(E.slice_metrics(uri, strict.features, strict.min_examples_per_class))
    assert [(f.feature, f.slices) for f in failures] == [("payment_type", ()), ("pickup_community_area", ())]
    recorded = len(E.fairness_failures(uri))      # what an earlier test recorded in the shared evaluation
    E.record_fairness_failures(uri, failures)
    assert E.fairness_failures(uri)[recorded:] == failures
    assert not tfma.load_validation_result(uri).validation_ok


def test_config_rejects_a_sensitive_feature_that_is_not_a_raw_feature(tmp_path):
    with pytest.raises(config.ConfigError) as raised:
        config.load({"home": str(tmp_path), "sensitive_features": "payment_type,pickup_comunity_area"},
                    environ={})
    message = str(raised.value)
    assert "'sensitive_features'" in message and "pickup_comunity_area" in message
    assert "pickup_community_area" in message and "payment_type" in message     # the valid names
    with pytest.raises(config.ConfigError):
        config.load({"home": str(tmp_path)}, environ={"TFXOPS_SENSITIVE_FEATURES": '["tips"]'})


def test_the_gate_has_one_source_for_its_settings(tmp_path):
    from pipeline.model_card import card_config

    settings = config.load({"home": str(tmp_path), "decision_threshold": "0.3",
                            "fairness_max_fnr_gap": "0.4"}, environ={})
    gate = FairnessGate.from_settings(settings)
    card = card_config(settings)
    assert (card["sensitive_features"], card["decision_threshold"]) == (gate.features, 0.3)
    assert card["fairness"] == {"min_examples_per_class": gate.min_examples_per_class,
                                "min_slice_auc": gate.min_slice_auc, "max_fpr_gap": gate.max_fpr_gap,
                                "max_fnr_gap": 0.4}


def test_the_cli_refuses_a_misspelt_sensitive_feature_with_exit_2(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    result = subprocess.run([sys.executable, "-m", "tfxops.cli", "run", "--home", str(tmp_path / "home"),
                             "--set", "sensitive_features=payment_typ"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'sensitive_features' names payment_typ" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists()
