"""Extraction and probing signals (``monitoring.probing``), on real logged records:
rows of the bundled CSV scored by the real pushed model, logged by the real writer
with the client that sent them (``core.request_log.answered_record(client=...)``).

Ten normal clients replay bundled rows; one attacker traces the decision boundary
(a bisection between a trip the model calls a big tipper and one it does not, the
model answering each query), one sweeps the input space (each numeric input drawn
uniformly over its range in the data). The monitor flags both attackers with their
statistic and none of the normal clients, reports every client's volume, and
alerts: nothing is retrained.
"""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from core import config, features as F, request_log
from core.request_log import answered_record
from monitoring import engine as engine_lib, monitor, policy, probing, window as window_lib
from monitoring.beam_engine import BeamEngine
from serving.client import predict_request, serialize_rows
from tests.monitoring.conftest import monitor_settings, write_logs

NORMAL = [f"10.0.0.{i}" for i in range(10)]
BOUNDARY, SWEEPER = "boundary-prober", "sweeper"
ROWS_PER_NORMAL = 300
ATTACK_ROWS = 400
QUIET = {"trigger_skewed_features": "0", "trigger_on_error_anomalies": "false", "trigger_quality_drop": "0",
         "trigger_drifted_features": "0", "attribution_rows": "0"}


class Model:
    """The pushed SavedModel, called in-process as the server calls it."""

    def __init__(self, path):
        import tensorflow as tf

        self.tf = tf
        self.serve = tf.saved_model.load(str(path)).signatures[F.DEFAULT_SIGNATURE]

    def scores(self, rows):
        out = self.serve(examples=self.tf.constant(serialize_rows(rows)))[F.PREDICTION_KEY].numpy()
        return out.reshape(len(rows), -1)[:, -1].astype(np.float32)


def _record(rows, scores, client, rid, version):
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    out = response.outputs[F.PREDICTION_KEY]
    out.dtype = 1   # DT_FLOAT
    out.tensor_shape.dim.add().size = len(rows)
    out.float_val.extend(float(s) for s in scores)
    response.model_spec.version.value = int(version)
    return answered_record("predict", "taxi", version, F.DEFAULT_SIGNATURE, rid, time.time(),
                           predict_request("taxi", serialize_rows(rows)), response, client=client)


def _numeric(row, name):
    return float(row[name]) if row.get(name, "") != "" else None


def _mix(a, b, t):
    """Row ``a`` with each dense numeric input moved a fraction ``t`` of the way to ``b``'s."""
    out = dict(a)
    for name in F.DENSE_FLOAT_FEATURES:
        x, y = _numeric(a, name), _numeric(b, name)
        if x is not None and y is not None:
            value = x + t * (y - x)
            out[name] = str(int(round(value))) if F.column_type(name) == "int" else f"{value:.6f}"
    return out


def boundary_queries(model, rows, threshold, n, steps=20):
    """A decision-based extraction: a trip the model calls a big tipper, moved along
    its distance, duration and fare towards another trip's until the model's answer
    flips, by bisection (``steps`` queries a pair, each answered by the model)."""
    scores = model.scores(rows)
    above = [i for i in range(len(rows)) if scores[i] > threshold + 0.2]
    below = [i for i in range(len(rows)) if scores[i] < threshold - 0.2]
    queries = []
    for a in above:
        ends = model.scores([_mix(rows[a], rows[b], 1.0) for b in below[:50]])
        flips = np.flatnonzero(ends < threshold - 0.1)
        if not flips.size:
            continue                            # no other trip's fare etc. flip this one
        b = below[int(flips[0])]
        lo, hi = 0.0, 1.0
        for _ in range(steps):
            t = (lo + hi) / 2
            query = _mix(rows[a], rows[b], t)
            queries.append(query)
            if model.scores([query])[0] > threshold:
                lo = t
            else:
                hi = t
        if len(queries) >= n:
            return queries[:n]
    return queries


def sweep_queries(rows, n, seed=0):
    """An input-space sweep: every numeric input uniform over its range in the data."""
    rng = np.random.default_rng(seed)
    ranges = {}
    for name in F.DENSE_FLOAT_FEATURES + F.BUCKET_FEATURES:
        values = [v for v in (_numeric(r, name) for r in rows) if v is not None]
        ranges[name] = (min(values), max(values))
    out = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        for name, (low, high) in ranges.items():
            value = rng.uniform(low, high)
            row[name] = str(int(value)) if F.column_type(name) == "int" else f"{value:.6f}"
        out.append(row)
    return out


@pytest.fixture(scope="module")
def attack_traffic(e2e_settings, first_run, taxi_rows):
    """The logged records of the ten normal clients and the two attackers, and the attackers' rows."""
    settings = config.load()
    model, version = Model(first_run.pushed_path), int(first_run.pushed_version)
    start = 3000                           # rows the first run never trained on
    normal = taxi_rows[start:start + len(NORMAL) * ROWS_PER_NORMAL]
    records = []
    for k, client in enumerate(NORMAL):
        mine = normal[k::len(NORMAL)]
        for j in range(0, len(mine), 50):
            chunk = mine[j:j + 50]
            records.append(_record(chunk, model.scores(chunk), client, f"{client}-{j}", version))
    pool = taxi_rows[start + len(normal):start + len(normal) + 2000]
    attacks = {BOUNDARY: boundary_queries(model, pool, settings.decision_threshold, ATTACK_ROWS),
               SWEEPER: sweep_queries(taxi_rows, ATTACK_ROWS)}
    for client, rows in attacks.items():
        for j in range(0, len(rows), 10):
            chunk = rows[j:j + 10]
            records.append(_record(chunk, model.scores(chunk), client, f"{client}-{j}", version))
    return records, attacks


@pytest.fixture(scope="module")
def window(tmp_path_factory, e2e_settings, first_run, attack_traffic):
    """A monitor home whose logs hold the ten normal clients and the two attackers."""
    settings = monitor_settings(tmp_path_factory.mktemp("probing"), e2e_settings, first_run, **QUIET)
    records, attacks = attack_traffic
    write_logs(settings.request_logs_path, records, rotate_records=100)
    result = monitor.monitor_once(settings)
    return settings, result, attacks


def _figures(result):
    (version,) = result.versions
    return {c.client: c for c in version.probing.clients}, version


def test_the_attackers_are_flagged_with_their_statistic_and_normal_clients_are_not(window):
    settings, result, attacks = window
    clients, version = _figures(result)
    assert len(attacks[BOUNDARY]) == ATTACK_ROWS
    # a flagged client is always listed (beyond the top probing_top_clients): no normal one is
    assert {c.client for c in version.probing.flagged} == {BOUNDARY, SWEEPER}
    shown = [name for name in NORMAL if name in clients]
    assert len(shown) == settings.probing_top_clients - 2
    for name in shown:
        assert clients[name].rows == ROWS_PER_NORMAL and clients[name].requests == ROWS_PER_NORMAL // 50
        assert clients[name].boundary_share is not None and clients[name].sweep is not None
    prober = clients[BOUNDARY]
    assert prober.boundary_share >= settings.probing_min_boundary_share
    assert any("within 0.05 of the decision threshold" in f and "a boundary search" in f for f in prober.findings)
    assert prober.boundary_share >= settings.probing_ratio * max(clients[n].boundary_share for n in shown)
    sweeper = clients[SWEEPER]
    assert sweeper.sweep >= settings.probing_min_sweep
    assert any("a sweep of the input space" in f for f in sweeper.findings)
    assert sweeper.sweep >= settings.probing_ratio * max(clients[n].sweep for n in shown)
    assert clients[SWEEPER].rows == clients[BOUNDARY].rows == ATTACK_ROWS


def test_probing_is_an_alert_and_nothing_is_retrained(window):
    settings, result, _ = window
    _, version = _figures(result)
    assert version.decision.action == policy.ALERT and version.decision.outcome is None
    assert result.decision.action == policy.ALERT
    assert any("probing" in r and BOUNDARY in r for r in result.decision.reasons)
    state = json.loads((Path(settings.monitor_path) / "state.json").read_text())
    assert state["actions"] == []                     # nothing started: no retrain, no re-push
    assert not (Path(settings.monitor_path) / "spans").exists()


def test_a_window_the_probers_drifted_is_not_retrained_but_an_alert_naming_them(
        tmp_path_factory, e2e_settings, first_run, attack_traffic):
    """Cost harvesting / poisoning through drift: the attackers' rows move the window
    (its slices' positive rates: bias drift, a trigger here) and the policy would rerun
    the pipeline; with clients flagged as probing in the window, nothing is acted on:
    an alert names them."""
    settings = monitor_settings(tmp_path_factory.mktemp("probing-drift"), e2e_settings, first_run,
                                attribution_rows="0", retrain_with_feedback="false", reuse_blessed_models="false",
                                trigger_on_error_anomalies="false", trigger_quality_drop="0",
                                trigger_on_bias_drift="true")
    records, _ = attack_traffic
    write_logs(settings.request_logs_path, records, rotate_records=100)
    result = monitor.monitor_once(settings)
    (version,) = result.versions
    assert {c.client for c in version.probing.flagged} == {BOUNDARY, SWEEPER}
    assert any(r.startswith("bias drift in ") for r in version.decision.reasons)
    decision = result.decision
    assert decision.action == policy.ALERT and decision.triggered and decision.outcome is None
    assert f"clients flagged as probing ({BOUNDARY}, {SWEEPER})" in decision.because or \
        f"clients flagged as probing ({SWEEPER}, {BOUNDARY})" in decision.because
    assert "the policy would rerun the pipeline" in decision.because
    state = json.loads((Path(settings.monitor_path) / "state.json").read_text())
    assert state["actions"] == []                     # no retrain started


def test_the_report_shows_every_clients_volume_and_the_findings(window):
    settings, result, _ = window
    document = json.loads(Path(result.report.json).read_text())
    section = document["versions"][0]["probing"]
    assert sorted(section["flagged_clients"]) == sorted([BOUNDARY, SWEEPER])
    assert section["total_clients"] == 12 and len(section["clients"]) == settings.probing_top_clients
    assert section["clients"][0]["client"] in (BOUNDARY, SWEEPER)      # the most rows first
    page = Path(result.report.html).read_text()
    assert "Clients: query volume and probing signals" in page and "a boundary search" in page
    assert "possible probing" in result.summary_line()


def test_an_unnamed_client_is_shown_as_unknown_and_one_client_alone_is_not_judged():
    tally = probing.ClientTally()
    tally.count("").rows = 500
    judged = probing.judge(config.load(), tally, None)
    assert [c.client for c in judged.clients] == [probing.UNKNOWN] and not judged.flagged
    assert "no other traffic" in judged.note


def test_both_engines_tally_the_clients_alike(window):
    """The local engine (one process, two workers) and the Beam engine count every
    client's requests, rows and scores and keep the same sample of its rows."""
    settings, _, _ = window
    files = request_log.closed_log_files(settings.request_logs_path)
    win = window_lib.Window("engines", [window_lib.Part(p) for p in files], resumed=False)
    tallies = []
    for engine in (engine_lib.LocalEngine(1), engine_lib.LocalEngine(2),
                   BeamEngine([], str(Path(settings.monitor_path) / "beam-engines"))):
        read = engine.read_window(win, {}, monitor.decoding_schema(settings))
        (traffic,) = read.versions.values()
        tallies.append({client: (n.requests, n.rows, n.rejected, round(float(np.nansum(n.all_scores())), 2),
                                 sorted(n.sample.rows)) for client, n in traffic.clients.clients.items()})
    assert tallies[0][BOUNDARY][1] == ATTACK_ROWS and len(tallies[0]) == 12
    assert tallies[1] == tallies[0] and tallies[2] == tallies[0]


@pytest.mark.parametrize("name, value", [
    ("probing_ratio", "0"), ("probing_ratio", "-1"), ("probing_min_rows", "0"), ("probing_top_clients", "-1"),
    ("probing_boundary_margin", "-0.1"), ("probing_boundary_margin", "1.5"),
    ("probing_min_boundary_share", "2"), ("probing_min_sweep", "-0.5")])
def test_out_of_range_probing_settings_are_refused_naming_the_setting(name, value):
    """A ratio of 0 would flag every client (every retrain held), a share over 1 none."""
    with pytest.raises(config.ConfigError, match=f"setting '{name}' must be"):
        config.load({name: value})
