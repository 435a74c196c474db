"""Bias drift in the monitor (``monitoring.bias``): held-out rows scored by the real
served model stay quiet; a window in which one group's served predictions move
(Credit Card trips logged with five times their fare: the model predicts a big
tip for far fewer of them) flags that group, and one in which the labels of a
group come back flipped flags its accuracy; the policy alerts with
``trigger_on_bias_drift`` off and acts with it on; both engines tally the slices alike.
"""
import dataclasses
import json
from pathlib import Path

import pytest

from core import mlmd
from monitoring import bias, engine as engine_lib, monitor, policy, traffic as traffic_lib, window as window_lib
from monitoring.beam_engine import BeamEngine
from serving.server import BackgroundServer
from tests.monitoring.conftest import monitor_settings, send, write_feedback

CARD, CASH = "payment_type=Credit Card", "payment_type=Cash"


def _fare_times_five(row):
    return dict(row, fare=str(float(row["fare"]) * 5)) if row["fare"] else row


def _window(tmp_path_factory, e2e_settings, first_run, rows, name):
    """A home whose request logs hold ``rows`` served by the real model; the requests sent."""
    settings = monitor_settings(tmp_path_factory.mktemp(name), e2e_settings, first_run)
    with BackgroundServer(settings) as server:
        sent = send(server, rows, prefix=name)
    return settings, sent


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, e2e_settings, first_run, held_out_rows):
    settings, sent = _window(tmp_path_factory, e2e_settings, first_run, held_out_rows, "healthy")
    write_feedback(settings, sent)
    return settings, monitor.monitor_once(settings, dry_run=True), sent


@pytest.fixture(scope="module")
def shifted(tmp_path_factory, e2e_settings, first_run, held_out_rows):
    rows = [_fare_times_five(r) if r["payment_type"] == "Credit Card" else r for r in held_out_rows]
    settings, _ = _window(tmp_path_factory, e2e_settings, first_run, rows, "shifted")
    return settings, monitor.monitor_once(settings, dry_run=True)


def _slice(result, name):
    (version,) = result.versions
    return next(s for s in version.bias.slices if s.name == name)


def _comparison(result, name, metric):
    return next(c for c in _slice(result, name).comparisons if c.metric == metric)


def test_healthy_traffic_flags_no_bias_drift(healthy):
    settings, result, _ = healthy
    (version,) = result.versions
    drift = version.bias
    assert drift.available and drift.flagged_slices == [] and not any(g.flagged for g in drift.gaps)
    assert result.decision.action == "none" and not result.decision.triggered
    card = _comparison(result, CARD, bias.POSITIVE_RATE)
    assert card.evaluation is not None and card.window_count >= settings.bias_min_slice_rows and not card.note
    assert abs(card.change) < settings.bias_max_rate_change
    for metric in (bias.ACCURACY, bias.AUC):       # labels came back for every row
        assert _comparison(result, CARD, metric).window is not None
    assert any(g.feature == "payment_type" and g.metric == bias.POSITIVE_RATE for g in drift.gaps)
    document = json.loads(Path(result.report.json).read_text())
    assert document["versions"][0]["bias"]["flagged"] is False
    assert "Bias drift" in Path(result.report.html).read_text()


def test_one_groups_shifted_predictions_flag_that_group_and_alert(shifted):
    settings, result = shifted
    (version,) = result.versions
    drift = version.bias
    assert CARD in drift.flagged_slices and CASH not in drift.flagged_slices
    card = _comparison(result, CARD, bias.POSITIVE_RATE)
    assert card.flagged and card.change < -settings.bias_max_rate_change
    assert card.z < -bias.critical_z(settings.bias_significance)
    (gap,) = [g for g in drift.gaps if g.feature == "payment_type" and g.metric == bias.POSITIVE_RATE]
    # the gap between the Evaluator's highest and lowest judged slice, those two measured in the window
    judged = {s.value: c for s in drift.slices if s.feature == "payment_type" for c in s.comparisons
              if c.metric == bias.POSITIVE_RATE and c.change is not None and not c.note}
    high, low = max(judged, key=lambda v: judged[v].evaluation), min(judged, key=lambda v: judged[v].evaluation)
    assert gap.between == (high, low) == ("Credit Card", "Cash")
    assert gap.window_gap == pytest.approx(judged[high].window - judged[low].window)
    assert gap.evaluation_gap == pytest.approx(judged[high].evaluation - judged[low].evaluation)
    assert gap.flagged and gap.change < -settings.bias_max_gap_change
    # a slice below the minimum count on either side is shown, never flagged
    small = [c for s in drift.slices for c in s.comparisons if c.note.startswith("fewer than")]
    assert small and not any(c.flagged for c in small)
    # trigger_on_bias_drift off (the default): an alert naming the group, nothing done
    assert result.decision.action == policy.ALERT and CARD in result.decision.reasons[0]
    assert f"bias drift (version {version.version}): {CARD}" in result.summary_line()
    assert "payment_type=Credit Card" in Path(result.report.html).read_text()
    execution = mlmd.execution(mlmd.open_store(settings), version.mlmd["execution_id"])   # the pass's record
    assert CARD in json.loads(execution.custom_properties["bias_flagged_slices"].string_value)


def test_with_the_trigger_on_bias_drift_acts(shifted):
    settings, alerted = shifted
    (version,) = alerted.versions
    on = dataclasses.replace(settings, trigger_on_bias_drift=True, retrain_with_feedback=False)
    reasons = policy.reasons_for(on, features=version.features, prediction=version.prediction,
                                 quality=version.quality, bias=version.bias)
    assert [r for r in reasons if r.startswith(f"bias drift in {CARD}")] == reasons
    decision = policy.decide(on, reasons=reasons, rows=version.rows, is_current=True, window_action=None,
                             last_action=None, dry_run=False, bias=version.bias)
    assert decision.action == policy.RETRAIN and decision.reasons == reasons
    off = policy.decide(settings, reasons=[], rows=version.rows, is_current=True, window_action=None,
                        last_action=None, dry_run=False, bias=version.bias)
    assert off.action == policy.ALERT and off.action not in policy.ACTIONS


def test_flipped_labels_of_one_group_flag_its_accuracy(healthy, tmp_path):
    """The healthy window's requests, the Credit Card trips' labels come back flipped to no tip."""
    settings, _, sent = healthy
    flipped = dataclasses.replace(settings, feedback_dir=str(tmp_path / "feedback"),
                                  monitor_dir=str(tmp_path / "monitoring"))
    write_feedback(flipped, [(rid, [dict(r, tips="0") if r["payment_type"] == "Credit Card" else r for r in chunk])
                             for rid, chunk in sent])
    result = monitor.monitor_once(flipped, dry_run=True)
    accuracy = _comparison(result, CARD, bias.ACCURACY)
    assert accuracy.flagged and accuracy.change < -flipped.bias_max_rate_change
    assert not _comparison(result, CARD, bias.POSITIVE_RATE).flagged    # the predictions did not move
    assert not _slice(result, CASH).flagged


def test_both_engines_tally_the_slices_alike(shifted):
    settings, _ = shifted
    slicing = bias.SliceSpec.of(settings)
    win = window_lib.open_window(window_lib.Checkpoint(settings.monitor_path), settings.request_logs_path,
                                 settings.monitor_max_files, persist=False)
    tallies = []
    for engine in (engine_lib.LocalEngine(1, slicing), engine_lib.LocalEngine(2, slicing),
                   BeamEngine([], str(settings.monitor_path / "beam"), slicing=slicing)):
        read = engine.read_window(win, traffic_lib.load_feedback(settings.feedback_path),
                                  monitor.decoding_schema(settings))
        (traffic,) = read.versions.values()
        tallies.append(traffic.slices)
    assert tallies[0].counts[("payment_type", "Credit Card")].rows > 0
    assert tallies[1] == tallies[0] and tallies[2] == tallies[0]


def test_the_tally_counts_each_slice_of_the_decoded_batches(taxi_rows):
    """Real examples decoded as the monitor decodes them; scores queued in other
    chunks than the batches take them; rows without the feature are in no slice."""
    import numpy as np

    from serving.client import serialize_rows

    rows = [dict(r) for r in taxi_rows[:500]]
    rows[7]["payment_type"] = ""                       # not sent: in no payment_type slice
    scores = np.linspace(0, 1, len(rows))
    scores[11] = np.nan                                # a row without a served score
    scores[3] = 0.5                                    # at the threshold: not positive (TFMA counts score > t)
    tally = bias.SliceTally(bias.SliceSpec(("payment_type", "pickup_community_area"), 0.5))
    for start in range(0, len(rows), 120):
        tally.queue(scores[start:start + 120])
    decoder = window_lib.ExampleDecoder()
    for start in range(0, len(rows), 200):
        tally.add(decoder.decode(serialize_rows(rows[start:start + 200])))
    for feature in ("payment_type", "pickup_community_area"):
        for value in {r[feature] for r in rows if r[feature] != ""}:
            index = [i for i, r in enumerate(rows) if r[feature] == value]
            scored = [scores[i] for i in index if not np.isnan(scores[i])]
            expected = bias.SliceCount(len(index), len(scored), sum(s > 0.5 for s in scored))
            assert tally.counts[(feature, value)] == expected, (feature, value)
    assert sum(c.rows for (f, _), c in tally.counts.items() if f == "payment_type") == len(rows) - 1
    assert not tally.queued


def test_a_rate_change_z_is_the_two_proportion_test():
    from scipy.stats import chi2_contingency

    window, evaluation = bias.Figure(80 / 298, 298), bias.Figure(269 / 350, 350)
    z = bias.z_score(bias.POSITIVE_RATE, window, evaluation)
    chi2, *_ = chi2_contingency([[80, 298 - 80], [269, 350 - 269]], correction=False)
    assert z < 0 and z * z == pytest.approx(chi2)
    assert bias.critical_z(0.01) == pytest.approx(2.5758, abs=1e-4)


def test_the_monitor_judges_with_the_served_models_recorded_gate(healthy):
    """Settings changed since the served model was evaluated: the monitor tallies at
    the threshold and features its Evaluator recorded, not today's."""
    settings, result, _ = healthy
    changed = dataclasses.replace(settings, decision_threshold=0.9, sensitive_features=["company"])
    recorded = bias.served_gate(changed)
    assert recorded["decision_threshold"] == 0.5 and recorded["features"] == list(settings.sensitive_features)
    assert bias.SliceSpec.of(changed) == bias.SliceSpec(tuple(settings.sensitive_features), 0.5)
    unrecorded = dataclasses.replace(changed, metadata_path=str(Path(settings.home) / "no-such-store.sqlite"))
    assert bias.SliceSpec.of(unrecorded) == bias.SliceSpec(("company",), 0.9)
    (version,) = result.versions
    assert version.bias.threshold == 0.5


def test_every_flagged_finding_is_among_the_decisions_reasons(shifted):
    from monitoring.attribution_drift import AttributionDrift

    settings, alerted = shifted
    (version,) = alerted.versions
    attribution = AttributionDrift(True, ndcg=0.5, threshold=settings.attribution_min_ndcg, rows=200, push_rows=200)
    both = policy.decide(settings, reasons=[], rows=version.rows, is_current=True, window_action=None,
                         last_action=None, dry_run=False, bias=version.bias, attribution=attribution)
    assert both.action == policy.ALERT and len(both.reasons) == 2
    assert both.reasons[0].startswith("bias drift in") and both.reasons[1].startswith("feature attribution drift")
    assert "bias drift" in both.because and "attribution drift" in both.because
    other = "AUC 0.600 on 500 labelled requests is 0.200 below the Evaluator's 0.800 (policy: drop > 0.05)"
    for dry_run in (False, True):
        acted = policy.decide(dataclasses.replace(settings, retrain_with_feedback=False), reasons=[other],
                              rows=version.rows, is_current=True, window_action=None, last_action=None,
                              dry_run=dry_run, bias=version.bias, attribution=attribution)
        assert acted.reasons[0] == other and len(acted.reasons) == 3
        assert all(r.endswith("(not acted on: its trigger is off)") for r in acted.reasons[1:])
