"""Rejected requests (issue 12): what clients sent when the server refused them.

The held-out scenario (clients stopped sending ``trip_miles``, fares and payment
types shifted, every request rejected) through the real server, and as records
in the logged format (``core.request_log.rejected_record``) written by the real
writer, as another writer or proxy would; and hostile or undecodable rejected
requests that must count without being expanded."""
import json
import resource
import time
from collections import Counter
from pathlib import Path

import requests

from core import features as F
from monitoring import record
from core import request_log
from core.examples import json_rows_to_examples
from serving.server import BackgroundServer
from tests.conftest import SMALL_ROWS
from tests.monitoring.conftest import log_records, monitor_settings, write_logs
from core import mlmd
from tfxops import cli

INVALID = "INVALID_ARGUMENT"
SIGNATURE_INPUTS = sorted(F.RAW_FEATURE_TYPES)     # serving_raw: one input per raw feature


def _dtypes():
    from tensorflow.core.framework import types_pb2 as T
    kinds = {"float": T.DT_FLOAT, "int": T.DT_INT64, "string": T.DT_STRING}
    return {name: kinds[kind] for name, kind in F.RAW_FEATURE_TYPES.items()}


def _json_row(row, missing=""):
    """A CSV row as a client's JSON object: numbers as numbers, an empty cell as
    ``missing`` ("" or, as serving_raw's callers send a missing number, 0)."""
    out = {}
    for name, kind in F.RAW_FEATURE_TYPES.items():
        value = row.get(name, "")
        if kind == "string":
            out[name] = value
        elif value == "":
            out[name] = missing
        else:
            out[name] = float(value) if kind == "float" else int(float(value))
    return out


def _server_message(row):
    """The server's INVALID_ARGUMENT message for this row (serving/rest.py's wording)."""
    if "trip_miles" not in row:
        quoted = json.dumps(row, separators=(",", ":"))      # quoted as the server does: 200 chars
        quoted = quoted if len(quoted) <= 200 else quoted[:200] + "..."
        return (f"Failed to process element: 0 of 'instances' list. JSON object: {quoted} keys must be "
                f"equal to: {','.join(SIGNATURE_INPUTS)}")
    return ("Failed to process element: 0 key: trip_miles of 'instances' list. Error: "
            "INVALID_ARGUMENT: JSON Value: \"\" Type: String is not of expected type: float")


def _rejected(rows, version, start, model="taxi", signature="serving_raw", code=INVALID, message=None):
    return [request_log.rejected_record(
        model, version, signature, f"rej-{start + i}", time.time(), code,
        message or _server_message(row),
        request_log.examples_request(json_rows_to_examples([row], _dtypes())))
        for i, row in enumerate(rows)]


def _cli(settings, *extra):
    return ["monitor", "--home", str(settings.home), "--set", f"metadata_path={settings.metadata_path}",
            "--set", f"serving_dir={settings.serving_dir}", *extra]


def _broken_clients(rows, missing=""):
    """trip_miles omitted in half the requests and empty in the other half; fares x1.5;
    a payment type the model never saw on every third trip."""
    out = []
    for i, row in enumerate(rows):
        sent = _json_row(row, missing)
        if sent["fare"] != "":
            sent["fare"] = round(sent["fare"] * 1.5, 2)
        if i % 3 == 0:
            sent["payment_type"] = "Bitcoin"
        if i % 2 == 0:
            del sent["trip_miles"]
        else:
            sent["trip_miles"] = ""
        out.append(sent)
    return out


def test_clients_that_stopped_sending_a_feature_raise_an_alert_not_a_retrain(
        tmp_path, e2e_settings, first_run, taxi_rows, capsys):
    """The scenario end to end: 1,500 requests to the real server, all refused (400)."""
    settings = monitor_settings(tmp_path, e2e_settings, first_run, log_rotate_records="500")
    sent = _broken_clients(taxi_rows[SMALL_ROWS:SMALL_ROWS + 1500], missing=0)    # rows never trained on
    first_second = int(time.time())
    with BackgroundServer(settings) as server, requests.Session() as session:
        base = f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi"
        signature = session.get(f"{base}/metadata", timeout=60).json()["metadata"]["signature_def"][
            "signature_def"]["serving_raw"]
        inputs = set(signature["inputs"])             # what a client of serving_raw sends
        answers = Counter(session.post(f"{base}:predict", timeout=60, json={
            "signature_name": "serving_raw", "instances": [{k: v for k, v in row.items() if k in inputs}]})
            .status_code for row in sent)
    assert answers == {400: 1500}
    _check_alert_scenario(settings, capsys, first_second)


def test_rejected_records_from_another_writer_are_read_alike(tmp_path, e2e_settings, first_run, taxi_rows,
                                                            capsys):
    """The same scenario as records a proxy or log shipper wrote in the logged format."""
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    sent = _broken_clients(taxi_rows[SMALL_ROWS:SMALL_ROWS + 1500])
    first_second = int(time.time())
    write_logs(settings.request_logs_path, _rejected(sent, int(first_run.pushed_version), 0), 500)
    _check_alert_scenario(settings, capsys, first_second)


def _check_alert_scenario(settings, capsys, first_second):
    assert cli.main(_cli(settings, "--json")) == 0                      # an alert is not a failure
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["decision"]["action"] == "alert"
    result = json.loads(Path(printed["report"]["json"]).read_text())      # the whole result
    assert result["requests"] == 1500 and result["rows"] == 1500
    (group,) = result["versions"]
    rejections = group["rejections"]
    assert rejections["rejected"] == rejections["requests"] == 1500 and rejections["rate"] == 1.0
    assert {c["code"] for c in rejections["causes"]} == {INVALID}
    assert sorted(c["requests"] for c in rejections["causes"]) == [750, 750]
    assert any("keys must be equal to" in c["example"] for c in rejections["causes"])
    missing = {m["feature"]: m for m in rejections["missing_features"]}
    assert set(missing) == {"trip_miles"}
    assert missing["trip_miles"]["fraction"] == 1.0 and missing["trip_miles"]["requests"] == 1500
    assert missing["trip_miles"]["since"] >= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first_second))
    # what the broken clients sent is in the statistics: the fare skew, the payment anomaly
    assert "fare" in group["skewed_features"]
    assert "payment_type" in group["anomalous_features"]
    assert "trip_miles" in group["anomalous_features"]
    by_name = {f["name"]: f for f in group["features"]}
    assert any(a["type"] == "REJECTED_REQUESTS" for a in by_name["trip_miles"]["anomalies"])
    (relaxed,) = group["relaxed"]           # their rows are judged on what serving_raw takes
    assert (relaxed["feature"], relaxed["rows"], relaxed["of"]) == (F.TIME_KEY, 1500, 1500)
    assert by_name[F.TIME_KEY]["anomalies"] == []
    # the decision: an alert; a retrain cannot fix a client that stopped sending a feature
    decision = result["decision"]
    assert decision["action"] == "alert" and decision["triggered"]
    assert "a retrain cannot fix a client that stopped sending a feature" in decision["because"]
    # the whole finding, formatted once, is in both the reason and the because
    finding = "the server rejected 1500 of 1500 requests (100%): trip_miles missing in 100% of rejected requests"
    assert finding in decision["because"] and finding in decision["reasons"][0]
    assert "alert_rejection_rate=" in decision["reasons"][0]
    assert any("skew" in r for r in decision["reasons"])          # skew fired too, and was not acted on
    line = next(line for line in captured.err.splitlines() if " decision: " in line)   # the summary
    assert "rejected: 1500 of 1500 requests (100%)" in line
    assert "trip_miles missing in 100% of rejected requests since" in line and "decision: alert" in line
    state = json.loads((settings.monitor_path / "state.json").read_text())
    assert state["actions"] == []
    html = Path(result["report"]["html"]).read_text()
    assert "Decision: ALERT" in html and "Rejected requests" in html
    assert "trip_miles" in html and "100%" in html and "keys must be equal to" in html
    (execution,) = record.monitor_executions(mlmd.open_store(settings))
    props = execution.custom_properties
    assert props["action"].string_value == "alert"
    assert props["rejected_requests"].int_value == 1500 and props["rejection_rate"].double_value == 1.0
    anomalies = Path(group["statistics"]).parents[2] / "anomalies" / "Split-serving" / "SchemaDiff.pb"
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    proto = anomalies_pb2.Anomalies.FromString(anomalies.read_bytes())
    assert "rejected" in str(proto.anomaly_info["trip_miles"])


def _splat_request():
    """A gRPC serving_raw request whose trip_miles tensor is one value 'splat' over 2^28."""
    from serving.tensors import ndarray_to_proto
    import numpy as np

    request = request_log.examples_request([])
    del request.inputs["examples"]
    for name in ("fare", "payment_type"):
        request.inputs[name].CopyFrom(ndarray_to_proto(np.asarray([b"Cash"] if name == "payment_type"
                                                                  else [np.float32(7.5)])))
    bomb = request.inputs["trip_miles"]
    bomb.dtype = 1                                   # DT_FLOAT
    bomb.tensor_shape.dim.add().size = 1 << 28
    bomb.float_val.append(1.0)
    return request


def test_hostile_and_undecodable_rejected_requests_count_without_rows(tmp_path, e2e_settings, first_run,
                                                                      held_out_rows):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    answered = log_records([held_out_rows[i:i + 10] for i in range(0, 300, 10)], version)
    wrong_type = _json_row(held_out_rows[300])
    wrong_type["trip_miles"] = "abc"
    now = time.time()
    rejected = [
        request_log.rejected_record("taxi", version, "serving_raw", "splat", now, INVALID, "too big",
                                    _splat_request()),
        request_log.rejected_record("taxi", version, "", "garbage", now, INVALID, "Could not parse example",
                                    request_log.examples_request([b"\xff\x01not a tf.Example"])),
        request_log.rejected_record("taxi", version, "", "empty", now, INVALID, "no inputs"),
        *_rejected([wrong_type], version, 3, message="JSON Value: \"abc\" Type: String is not of expected "
                   "type: float"),
        request_log.rejected_record("x" * 300, None, "", "unknown-model", now, "NOT_FOUND",
                                    "Servable not found for request: Latest(xxx)"),
    ]
    files = write_logs(settings.request_logs_path, answered + rejected, 1000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert cli.main(_cli(settings)) == 0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 512, f"max RSS grew by {grown_mb:.0f} MB: a logged tensor was expanded"

    report = json.loads((settings.monitor_path / "reports").glob("*.json").__next__().read_text())
    assert report["quarantined_files"] == [] and report["files"] == [p.name for p in files]
    (group,) = report["versions"]
    rejections = group["rejections"]
    assert rejections["rejected"] == 4 and rejections["requests"] == 34
    assert rejections["with_rows"] == 1                 # only the wrong-type row could be read
    assert group["rows"] == 301
    assert report["unattributed_rejections"]["rejected"] == 1
    assert report["unattributed_rejections"]["causes"][0]["code"] == "NOT_FOUND"
    # 4 of 34 is over alert_rejection_rate, but fewer than alert_min_rejected: no alert
    assert report["decision"]["action"] != "alert"


def test_alert_on_requests_refused_before_a_version_was_chosen_says_so(tmp_path, e2e_settings, first_run,
                                                                       held_out_rows):
    """Rejections that name no model version (an unknown model, nothing loaded yet)
    alert for the window; the decision says what they were, in full."""
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    answered = log_records([held_out_rows[i:i + 10] for i in range(0, 100, 10)], version)
    refused = [request_log.rejected_record("taxi", None, "", f"nf-{i}", time.time(), "NOT_FOUND",
                                           "Servable not found for request: Latest(taxi)") for i in range(20)]
    write_logs(settings.request_logs_path, answered + refused, 1000)
    assert cli.main(_cli(settings)) == 0
    report = json.loads(next((settings.monitor_path / "reports").glob("*.json")).read_text())
    decision = report["decision"]
    assert decision["action"] == "alert"
    finding = "the server rejected 20 of 30 requests (67%) before any model version was chosen"
    assert finding in decision["because"] and finding in decision["reasons"][0]
    assert "NOT_FOUND" in decision["because"]                   # no feature to name: the top cause
