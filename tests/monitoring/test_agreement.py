"""Agreement between production and a candidate (``monitoring.agreement``) on a real
window: a real server answering with the pipeline's model (stable) and sending a
share of calls to a candidate made from it (canary) and every other call to it as
a shadow, the real request log, a real monitor pass over a copy of the first run's
metadata store."""
import collections

import numpy as np
import pytest

from core import request_log
from monitoring import agreement
from monitoring.monitor import monitor_once
from serving.server import BackgroundServer
from tests.monitoring.conftest import monitor_settings, send
from tests.serving.serve_proc import until
from tests.serving.test_canary_versions import make_candidate


@pytest.fixture(scope="module")
def judged(tmp_path_factory, e2e_settings, first_run, held_out_rows):
    """(settings, the monitor's result, the window's log records)."""
    tmp = tmp_path_factory.mktemp("agreement")
    stable = int(first_run.pushed_version)
    candidate = stable + 100
    settings = monitor_settings(tmp, e2e_settings, first_run, model_version_policy="all",
                                version_labels=f"stable={stable},canary={candidate}", canary_percent=25,
                                shadow_percent=100, log_rotate_records=40,
                                attribution_rows=0)     # not this test's subject: the pass is faster without it
    make_candidate(first_run.pushed_path, settings.model_push_dir, candidate)
    server = BackgroundServer(settings)
    server.start()
    try:
        send(server, held_out_rows[:400], per_request=4, prefix="a")
        until(lambda: server.server.traffic_split.in_flight == 0, "the shadow runs finished")
    finally:
        server.stop()                     # flushes and closes the request log
    records = list(request_log.read_request_log(request_log.closed_log_files(settings.request_logs_path)))
    result = monitor_once(settings)
    return settings, result, records, stable, candidate


def _rows(records, version, shadow):
    return sum(len(r.rows) for r in records if r.model_version == version and r.shadow is shadow)


def test_shadow_pairs_by_request_id_and_agrees_as_recomputed(judged):
    settings, result, records, stable, candidate = judged
    (paired,) = [a for a in result.agreement if a.mode == agreement.SHADOW]
    assert (paired.model_name, paired.stable_version, paired.candidate_version) == ("taxi", stable, candidate)
    production = {(r.request_id, i): p for r in records if not r.shadow for i, p in enumerate(r.predictions)}
    pairs = [(production[(r.request_id, i)], p) for r in records if r.shadow for i, p in enumerate(r.predictions)]
    assert paired.paired == len(pairs) == _rows(records, candidate, True) > 100
    old, new = (np.asarray(side) for side in zip(*pairs))
    threshold = settings.decision_threshold
    assert paired.decision_agreement == pytest.approx(np.mean((old > threshold) == (new > threshold)))
    assert (new >= old).all()                         # the candidate's bias is higher: every score is
    assert paired.candidate_positive_rate > paired.stable_positive_rate
    assert 0 < paired.score_distance <= 1 and paired.ks_statistic > 0
    assert paired.mean_abs_score_difference == pytest.approx(np.mean(np.abs(new - old)), rel=1e-5)


def test_canary_compares_the_two_answered_populations(judged):
    _, result, records, stable, candidate = judged
    (canary,) = [a for a in result.agreement if a.mode == agreement.CANARY]
    assert (canary.stable_version, canary.candidate_version) == (stable, candidate)
    assert canary.stable_rows == _rows(records, stable, False)
    assert canary.candidate_rows == _rows(records, candidate, False) > 0
    assert canary.decision_agreement is None and canary.score_distance is not None


def test_shadow_answers_stay_out_of_the_served_traffic(judged):
    """Drift, skew and quality read only what was answered: the stable version's rows
    and the canary's own calls, never the shadow answers."""
    _, result, records, stable, candidate = judged
    (judged_stable,) = [v for v in result.versions if v.version == stable]
    assert judged_stable.rows == _rows(records, stable, False)
    canary_rows = {v.version: v.rows for v in result.not_judged}          # no lineage for the candidate
    assert canary_rows[candidate] == _rows(records, candidate, False)
    assert result.rows == sum(len(r.rows) for r in records if not r.shadow) < sum(len(r.rows) for r in records)


def test_report_and_result_json_carry_the_section(judged):
    _, result, *_ = judged
    document = result.to_dict()
    assert {a["mode"] for a in document["agreement"]} == {"shadow", "canary"}
    html = open(result.report.html).read()
    assert "Production vs candidate" in html and "decisions agree" in html


def test_distances_on_known_samples():
    same = np.linspace(0, 1, 200)
    assert agreement.jensen_shannon_distance(same, same) == pytest.approx(0, abs=1e-9)
    assert agreement.jensen_shannon_distance(np.full(50, 0.05), np.full(50, 0.95)) == pytest.approx(1)
    counts = collections.Counter(np.digitize(same, np.linspace(0, 1, agreement.BINS + 1)[1:-1]))
    assert len(counts) == agreement.BINS
