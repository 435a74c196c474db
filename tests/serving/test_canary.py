"""Canary and shadow traffic on a real server (``serving.traffic_split``): one
BackgroundServer serving the pipeline's model (stable) and a candidate made from it
(canary), real REST and gRPC calls, the real request log read back."""
import collections
import functools
import random

import grpc
import pytest
import requests
from tensorflow_serving.apis import prediction_service_pb2_grpc

from core import request_log, served
from serving import metrics as M, traffic_split
from serving.client import predict_request, rest_body, serialize_rows
from serving.server import BackgroundServer
from tests.serving.conftest import copy_version, serving_settings
from tests.serving.serve_proc import until
from tests.serving.test_canary_versions import make_candidate

STABLE, CANDIDATE = 1, 2
CANARY_PERCENT, SHADOW_PERCENT = 30, 50
CALLS = 400                       # naming no version: half REST, half gRPC
NAMED = 20                        # naming a version or a label: never rerouted, never shadowed


@pytest.fixture(scope="module")
def canary(tmp_path_factory, pushed_model):
    tmp = tmp_path_factory.mktemp("canary")
    settings = serving_settings(tmp, model_version_policy="all", version_labels=f"stable={STABLE},canary={CANDIDATE}",
                                canary_percent=CANARY_PERCENT, shadow_percent=SHADOW_PERCENT,
                                log_rotate_records=100, log_rotate_seconds=0.5)
    copy_version(pushed_model, settings.model_push_dir, STABLE)
    make_candidate(pushed_model, settings.model_push_dir, CANDIDATE)
    server = BackgroundServer(settings)
    server.start()
    server.server.traffic_split._random = random.Random(0).random     # the same draws every run
    server.settings = settings
    yield server
    server.stop()


def _grpc(stub, rows, request_id, version=None, label=None):
    request = predict_request("taxi", serialize_rows(rows))
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return stub.Predict(request, metadata=(("x-request-id", request_id),), timeout=30)


def _rest(port, rows, request_id, path="/v1/models/taxi:predict"):
    answer = requests.post(f"http://127.0.0.1:{port}{path}", json=rest_body(serialize_rows(rows)),
                           headers={"X-Request-Id": request_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


@pytest.fixture(scope="module")
def traffic(canary, rows):
    """Every call sent, and what the request log holds once all of them are written:
    {"grpc": {request id: (answered version, score)}, "rest": {request id: score},
    "records": [LoggedRequest]}."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{canary.ports.grpc}"))
    sent = {"grpc": {}, "rest": {}}
    for i in range(CALLS // 2):
        row = [rows[i % len(rows)]]
        answer = _grpc(stub, row, f"g-{i}")
        sent["grpc"][f"g-{i}"] = (answer.model_spec.version.value, answer.outputs["probabilities"].float_val[0])
        sent["rest"][f"r-{i}"] = _rest(canary.ports.rest, row, f"r-{i}")[0]
    for i in range(NAMED):
        row = [rows[i % len(rows)]]
        assert _grpc(stub, row, f"named-{i}", version=CANDIDATE).model_spec.version.value == CANDIDATE
        assert _grpc(stub, row, f"label-{i}", label="stable").model_spec.version.value == STABLE
        _rest(canary.ports.rest, row, f"rest-named-{i}", f"/v1/models/taxi/versions/{STABLE}:predict")
    metrics = canary.server.metrics
    until(lambda: canary.server.traffic_split.in_flight == 0, "every shadow run finished")
    expected = CALLS + 3 * NAMED + _total(metrics, traffic_split.SHADOW_CALLS)
    logs = canary.settings.request_logs_path
    records = until(lambda: _records_if(logs, expected), f"{expected} records in closed log files")
    sent["records"] = records
    return sent


def _total(metrics: M.Metrics, name: str) -> float:
    text = metrics.render()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _records_if(logs, expected):
    records = list(request_log.read_request_log(request_log.closed_log_files(logs)))
    return records if len(records) >= expected else None


def test_canary_share_of_unnamed_calls_on_both_front_ends(traffic):
    answered = {r.request_id: r.model_version for r in traffic["records"] if not r.shadow}
    for front_end in ("g-", "r-"):
        versions = collections.Counter(v for rid, v in answered.items() if rid.startswith(front_end))
        assert set(versions) == {STABLE, CANDIDATE}, versions
        share = versions[CANDIDATE] / sum(versions.values())
        # 200 draws at 30 %: the standard deviation is 3.2 points; 10 points is over 3 of them
        assert abs(share - CANARY_PERCENT / 100) < 0.10, (front_end, versions)
    assert all(v == answered[rid] for rid, (v, _) in traffic["grpc"].items()), "the log names the answering version"


def test_calls_naming_a_version_or_label_are_never_rerouted_nor_shadowed(traffic):
    by_id = collections.defaultdict(list)
    for record in traffic["records"]:
        by_id[record.request_id].append(record)
    for i in range(NAMED):
        assert [(r.model_version, r.shadow) for r in by_id[f"named-{i}"]] == [(CANDIDATE, False)]
        assert [(r.model_version, r.shadow) for r in by_id[f"label-{i}"]] == [(STABLE, False)]
        assert [(r.model_version, r.shadow) for r in by_id[f"rest-named-{i}"]] == [(STABLE, False)]


def test_shadow_runs_the_canary_logs_its_answer_and_never_returns_it(canary, traffic):
    records = traffic["records"]
    answered = {r.request_id: r for r in records if not r.shadow}
    shadows = [r for r in records if r.shadow]
    stable_calls = sum(1 for r in answered.values() if r.model_version == STABLE and r.request_id[:2] in ("g-", "r-"))
    dropped = _total(canary.server.metrics, traffic_split.SHADOW_DROPPED)    # busy: one still running
    # half of the calls the stable version answered were drawn (a seeded draw each): run and logged, or
    # dropped (busy: at most max_in_flight at once, so how many run depends on the machine's load)
    assert 0.35 * stable_calls < len(shadows) + dropped < 0.65 * stable_calls, (len(shadows), dropped, stable_calls)
    assert shadows, "no shadow run at all"
    for shadow in shadows:
        production = answered[shadow.request_id]          # the same request id as the answered call
        assert shadow.model_version == CANDIDATE and production.model_version == STABLE
        assert request_log.SHADOW_TAG in shadow.record.log_metadata.saved_model_tags
        assert shadow.rows == production.rows              # the same input
        if shadow.request_id in traffic["grpc"]:           # the caller got the stable answer, not the shadow's
            version, score = traffic["grpc"][shadow.request_id]
            assert version == STABLE
            assert score == pytest.approx(production.predictions[0])
            assert score != pytest.approx(shadow.predictions[0])     # the candidate answers otherwise
        else:
            assert traffic["rest"][shadow.request_id] == pytest.approx(production.predictions[0], abs=1e-6)


def test_metrics_count_each_version_and_every_shadow_draw(canary, traffic):
    text = requests.get(f"http://127.0.0.1:{canary.ports.rest}/monitoring/prometheus/metrics", timeout=30).text
    routed = {line.split("version=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith(traffic_split.ROUTED + "{")}
    assert sum(routed.values()) == CALLS and routed[str(CANDIDATE)] > 0 and routed[str(STABLE)] > 0
    logged = _total(canary.server.metrics, traffic_split.SHADOW_CALLS)
    assert logged == sum(1 for r in traffic["records"] if r.shadow)


def test_a_client_cannot_forge_a_shadow_record(canary, rows):
    """The tag's text inside a feature value is traffic like any other: served,
    logged as an answered call, counted in the statistics."""
    forged = dict(rows[0], payment_type=request_log.SHADOW_TAG, company=request_log.SHADOW_TAG)
    _rest(canary.ports.rest, [forged], "forged-1", f"/v1/models/taxi/versions/{STABLE}:predict")
    logs = canary.settings.request_logs_path
    found = until(lambda: [r for r in request_log.read_request_log(request_log.closed_log_files(logs))
                           if r.request_id == "forged-1"], "the forged call logged")
    assert [r.shadow for r in found] == [False]
    assert request_log.SHADOW_TAG.encode() in found[0].record.SerializeToString()


def test_shadow_runs_are_bounded_drops_are_counted(canary):
    """More shadow runs at once than ``max_in_flight``: refused and counted, never queued."""
    split = traffic_split.TrafficSplit(0, 100, "canary", "stable", M.new_metrics(), max_in_flight=1)
    assert split.start_shadow("taxi")
    assert not split.start_shadow("taxi") and not split.start_shadow("taxi")
    split.finish_shadow("taxi", CANDIDATE, traffic_split.LOGGED)
    assert split.start_shadow("taxi")
    assert _total(split.metrics, traffic_split.SHADOW_DROPPED) == 2
    assert canary.server.traffic_split.max_in_flight >= 1


def test_the_default_version_rule():
    """core.served.default_version: the stable label's version when loaded, else the newest non-canary."""
    rule = functools.partial(served.default_version, stable_label="stable", canary_label="canary")
    assert rule([1, 2], {"canary": 2, "stable": 1}) == 1
    assert rule([1, 2], {"canary": 2}) == 1                       # no stable label: newest non-canary
    assert rule([1, 2], {"canary": 2, "stable": 3}) == 1          # stable not loaded: the same
    assert rule([2], {"canary": 2}) == 2                          # only the canary: it
    assert rule([1, 2, 3], {}) == 3 and rule([], {"stable": 1}) is None
    split = traffic_split.TrafficSplit(0, 50, "canary", "stable", M.new_metrics())
    assert not any(split.takes_canary() for _ in range(100))     # canary_percent 0: never drawn


def test_settings_refuse_percentages_out_of_range():
    from core import config

    for bad in ({"canary_percent": "120"}, {"shadow_percent": "-1"}, {"canary_label": "stable"}):
        with pytest.raises(config.ConfigError, match="canary|shadow"):
            config.load(bad)
