"""Out-of-domain inputs (issue 16 part 4): every pushed version carries its input
domain; the server counts and marks requests with values outside it (``log``) or
refuses them (``reject``); the monitor reports the rate per feature.

The attacks: an unknown payment_type and a trip_miles 100 times the training
maximum (evasion with crafted inputs), over REST and gRPC, against a real server
serving the session pipeline's pushed version, with a copy of its MLMD store."""
import dataclasses
import json
import time
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow_data_validation as tfdv
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from core import config, domain as domain_lib, request_log
from core import features as F
from core.examples import row_to_example
from core.ports import free_port
from core.pushdir import newest_version
from serving.client import predict_request, serialize_rows
from serving.server import BackgroundServer
from tests.monitoring.conftest import monitor_settings

UNKNOWN_PAYMENT = "Bitcoin"
METRIC = ":tensorflow:serving:tfxops_out_of_domain_count"


@pytest.fixture(scope="module")
def pushed_domain(first_run):
    found = domain_lib.read_domain(first_run.pushed_path)
    assert found is not None, f"the pushed version {first_run.pushed_path} has no {domain_lib.DOMAIN_FILE}"
    return found


@pytest.fixture(scope="module")
def home(tmp_path_factory, e2e_settings, first_run):
    """A copy of the e2e home (MLMD store and pushed version) for the servers and the monitor."""
    return monitor_settings(tmp_path_factory.mktemp("ood"), e2e_settings, first_run, alert_out_of_domain_rate=0.2)


@pytest.fixture(scope="module")
def normal_rows(e2e_settings):
    from tests.conftest import read_rows
    return [{k: v for k, v in row.items() if k != F.LABEL_KEY} for row in read_rows()[:20]]


def crafted(row, pushed_domain):
    """An unknown payment type and trip_miles 100 times the training maximum."""
    out = dict(row, payment_type=UNKNOWN_PAYMENT)
    out["trip_miles"] = str(100 * pushed_domain.training["trip_miles"][1])
    return out


def rest_predict(settings, rows):
    return requests.post(f"http://127.0.0.1:{settings.rest_port}/v1/models/{settings.model_name}:predict",
                         json={"instances": [{"b64": _b64(s)} for s in serialize_rows(rows)]}, timeout=60)


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode()


def counted(settings, feature, path="/monitoring/prometheus/metrics") -> float:
    """The out-of-domain counter of ``feature`` on the metrics page at ``path``."""
    text = requests.get(f"http://127.0.0.1:{settings.rest_port}{path}", timeout=10).text
    line = next((line for line in text.splitlines()
                 if line.startswith(METRIC + "{") and f'feature="{feature}"' in line), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def logged(settings):
    return list(request_log.read_request_log(settings.request_logs_path))


# ------------------------------------------------------------------ the pushed domain
def test_the_pushed_version_carries_its_input_domain(pushed_domain, e2e_settings, first_run):
    schema = tfdv.load_schema_text(e2e_settings.schema_path)
    training = {row["payment_type"] for row in _training_rows(e2e_settings)}
    assert pushed_domain.strings["payment_type"] == {
        v.encode() for v in domain_lib.schema_string_domains(schema)["payment_type"]}
    assert training <= {v.decode() for v in pushed_domain.strings["payment_type"]}
    low, high = pushed_domain.ranges["trip_miles"]
    train_min, train_max = pushed_domain.training["trip_miles"]
    miles = [float(row["trip_miles"]) for row in _training_rows(e2e_settings) if row["trip_miles"]]
    assert min(miles) >= train_min and max(miles) <= train_max
    assert low < train_min <= train_max < high <= train_max + (train_max - train_min) * 0.26
    assert F.TIME_KEY not in pushed_domain.names and set(pushed_domain.names) <= set(F.MODEL_FEATURES)
    # the file is the one InputDomainGen wrote, and the PushedModel names it
    document = json.loads((Path(first_run.pushed_path) / domain_lib.DOMAIN_FILE).read_text())
    assert document["features"]["payment_type"]["source"] == domain_lib.SCHEMA_SOURCE
    example = row_to_example(crafted(_training_rows(e2e_settings)[0], pushed_domain))
    assert pushed_domain.out_of_domain(example) == ["trip_miles", "payment_type"]


def _training_rows(e2e_settings):
    from tests.conftest import read_rows
    return read_rows(f"{e2e_settings.data_dir}/data.csv")


def test_the_mark_is_a_log_metadata_tag_on_the_fast_path():
    """The metadata-prefix cache still writes canonical records with the mark."""
    from tensorflow_serving.apis import prediction_log_pb2

    request = request_log.examples_request([b""])
    for marked in ((), ("trip_miles", "payment_type")):
        for record in (request_log.answered_record("predict", "taxi", 3, F.DEFAULT_SIGNATURE, "rid", 1.7e9, request,
                                                   predict_pb2.PredictResponse(), "client", marked),
                       request_log.rejected_record("taxi", 3, F.DEFAULT_SIGNATURE, "rid", 1.7e9, "INVALID_ARGUMENT",
                                                   "refused", request, "client", marked)):
            parsed = prediction_log_pb2.PredictionLog.FromString(record)
            assert parsed.SerializeToString() == record
            assert list(parsed.log_metadata.saved_model_tags) == ["serve"] + (
                [request_log.OUT_OF_DOMAIN_TAG + "trip_miles,payment_type"] if marked else [])
            (call,) = request_log.decode_records([record])
            assert call.out_of_domain == marked and call.client == "client" and call.request_id == "rid"


def test_bad_settings_are_refused():
    for key, value in (("out_of_domain_action", "drop"), ("out_of_domain_range_margin", "-1"),
                       ("alert_out_of_domain_rate", "2")):
        with pytest.raises(config.ConfigError, match=key):
            config.load({key: value})


# ------------------------------------------------------------------ log: answered, counted, marked
def test_log_answers_counts_and_marks(home, normal_rows, pushed_domain):
    assert home.out_of_domain_action == domain_lib.LOG
    with BackgroundServer(home):
        answer = rest_predict(home, normal_rows[:3] + [crafted(normal_rows[3], pushed_domain)])
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 4
        assert rest_predict(home, normal_rows[4:8]).status_code == 200
        deadline = _deadline()
        while counted(home, "payment_type") < 1 and _before(deadline):
            pass
        assert counted(home, "payment_type") == counted(home, "trip_miles") == 1
        assert counted(home, "fare") == 0
    records = logged(home)
    marks = sorted(r.out_of_domain for r in records)
    assert marks == [(), ("trip_miles", "payment_type")]
    assert all(r.error is None for r in records)


# ------------------------------------------------------------------ reject: refused before the model runs
def test_reject_refuses_with_the_feature_and_answers_normal_rows(home, normal_rows, pushed_domain, caplog):
    """The refusal names the feature, never the domain (what the model was trained on:
    information for an attacker probing it) nor the value: those go to the server log."""
    settings = dataclasses.replace(home, out_of_domain_action=domain_lib.REJECT,
                                   rest_port=free_port(), grpc_port=free_port())
    before = {r.request_id for r in logged(settings)}
    with BackgroundServer(settings), caplog.at_level("WARNING", logger="tfxops.serving"):
        refused = rest_predict(settings, [normal_rows[0], dict(normal_rows[1], payment_type=UNKNOWN_PAYMENT * 50)])
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error.startswith("payment_type: outside the values the model was trained on "
                                "(out_of_domain_action=reject)"), error
        for secret in ("Cash", "Credit Card", "values:", UNKNOWN_PAYMENT):
            assert secret not in error, error
        server_log = "\n".join(r.getMessage() for r in caplog.records)
        assert "'Cash'" in server_log and UNKNOWN_PAYMENT in server_log
        assert UNKNOWN_PAYMENT * 10 not in server_log                       # the value quoted, bounded
        assert rest_predict(settings, normal_rows[:5]).status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_request(settings.model_name, serialize_rows([crafted(normal_rows[2], pushed_domain)]))
            with pytest.raises(grpc.RpcError) as refusal:
                stub.Predict(request, timeout=60)
            assert refusal.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = refusal.value.details()
            assert details.startswith("trip_miles, payment_type: outside the values"), details
            assert "between" not in details and "Cash" not in details
            answer = stub.Predict(predict_request(settings.model_name, serialize_rows(normal_rows[:2])), timeout=60)
            assert isinstance(answer, predict_pb2.PredictResponse)
        assert counted(settings, "payment_type") == 2 and counted(settings, "trip_miles") == 1
    new = [r for r in logged(settings) if r.request_id not in before]
    refused_records = [r for r in new if r.error is not None]
    assert sorted(r.out_of_domain for r in refused_records) == [("payment_type",), ("trip_miles", "payment_type")]
    assert all(r.error[0] == "INVALID_ARGUMENT" for r in refused_records)
    assert [r.out_of_domain for r in new if r.error is None] == [(), ()]


# ------------------------------------------------------------------ the monitor
def test_the_monitor_reports_the_rate(home, first_run):
    """Over the request log the two tests above wrote (run after them, as in this file)."""
    from monitoring.monitor import monitor_once

    result = monitor_once(home)
    (version,) = result.versions
    assert version.version == int(first_run.pushed_version)
    rates = version.out_of_domain.as_dict()
    # 2 answered (1 marked) + 2 answered and 2 refused (both marked), whatever ran first
    assert rates["requests"] == 6 and rates["marked"] == 3 and rates["rejected"] == 2
    by_feature = {f["feature"]: f["requests"] for f in rates["features"]}
    assert by_feature == {"payment_type": 3, "trip_miles": 2}
    assert rates["alerting"] == ["payment_type", "trip_miles"]
    assert version.decision.action == "alert"
    assert version.decision.reasons[0].startswith("out-of-domain inputs: payment_type in 50.0% of 6 requests")
    report = json.loads(open(result.report.json).read())
    assert report["versions"][0]["out_of_domain"]["marked"] == 3
    assert "Out-of-domain inputs" in open(result.report.html).read()


def _deadline():
    return time.time() + 30


def _before(deadline) -> bool:
    time.sleep(0.05)
    return time.time() < deadline


# ------------------------------------------------------------------ behind the logging proxy
def test_the_grpc_proxy_marks_what_the_version_behind_it_answered(home, tmp_path, normal_rows, pushed_domain):
    """Our server stands in for TF Serving (no binary here), its own marks and log off."""
    from tests.serving.test_proxy import RunningProxy

    upstream = dataclasses.replace(home, out_of_domain_action=domain_lib.OFF, log_sample_rate=0.0,
                                   rest_port=free_port(), grpc_port=free_port())
    with BackgroundServer(upstream) as server:
        settings = dataclasses.replace(home, rest_port=free_port(), grpc_port=free_port(),
                                       request_log_dir=str(tmp_path / "proxy_logs"),
                                       proxy_to=f"127.0.0.1:{server.ports.rest}",
                                       proxy_grpc_to=f"127.0.0.1:{server.ports.grpc}")
        proxy = RunningProxy(settings).start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{proxy.ports['grpc']}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                for rows in ([crafted(normal_rows[0], pushed_domain)], normal_rows[1:3]):
                    stub.Predict(predict_request(settings.model_name, serialize_rows(rows)), timeout=60)
            page = "/monitoring/tfxops/metrics"
            deadline = _deadline()
            while counted(settings, "trip_miles", page) < 1 and _before(deadline):
                pass
            assert counted(settings, "trip_miles", page) == counted(settings, "payment_type", page) == 1
        finally:
            proxy.stop()
        metrics = requests.get(f"http://127.0.0.1:{server.ports.rest}/monitoring/prometheus/metrics", timeout=10)
        assert METRIC not in metrics.text          # the upstream did not look: the proxy did
    records = list(request_log.read_request_log(settings.request_logs_path))
    assert sorted(r.out_of_domain for r in records) == [(), ("trip_miles", "payment_type")]
    assert {r.model_version for r in records} == {newest_version(str(home.model_push_dir))}



# ------------------------------------------------------------------ a monitoring re-push
def test_a_repush_carries_the_domain_the_model_was_pushed_with(home, first_run, pushed_domain):
    """Last in this file: it adds a version to the home the tests above serve and monitor."""
    from core import mlmd
    from monitoring import act, baseline
    from monitoring.reuse import ReuseCandidate

    base = baseline.for_version(mlmd.open_store(home), int(first_run.pushed_version))
    candidate = ReuseCandidate(base.model.id, base.model.uri, base.model_path, [], 0, True, 0.0, "the test's")
    outcome = act.repush(home, candidate)
    assert outcome.pushed_version != str(first_run.pushed_version)
    assert domain_lib.read_domain(outcome.pushed_destination) == pushed_domain


# ------------------------------------------------------------------ a domain file that cannot be read
def test_a_malformed_domain_file_serves_the_version_unchecked(tmp_path, first_run, caplog):
    """A broken assets.extra/input_domain.json does not stop the version from loading:
    with out_of_domain_action off it is not even read; otherwise the version is served
    unchecked and the server log names the file."""
    import shutil

    from core.integrity import IntegrityPolicy
    from serving.models import AVAILABLE, ModelManager

    version = tmp_path / "taxi" / "1"
    shutil.copytree(first_run.pushed_path, version)
    broken = version / domain_lib.DOMAIN_FILE
    broken.write_text('{"format": "not a domain"')

    def loaded(reads_domain):
        manager = ModelManager("taxi", str(version.parent), integrity=IntegrityPolicy("off"),
                               reads_domain=reads_domain)
        manager.poll_once()
        try:
            status = manager.status("taxi")[0]
            assert status.state == AVAILABLE, status
            served = manager.acquire("taxi")
            manager.release(served)
            return served.domain
        finally:
            manager.stop(wait_seconds=0)
    with caplog.at_level("WARNING", logger="tfxops.serving"):
        assert loaded(reads_domain=False) is None
        assert "out-of-domain" not in caplog.text
        assert loaded(reads_domain=True) is None
    assert "served WITHOUT its out-of-domain check" in caplog.text and str(broken) in caplog.text
