"""The SERVING contract is what the served signatures take (monitoring/contract.py).

``serving_raw`` takes one tensor per model feature, not ``trip_start_timestamp``
(in the schema only as the time key, with presence 1.0): a window of its traffic
must not be flagged "Column dropped" on it, nor trigger, whether alone or mixed
with ``serving_default`` traffic; and serving_default rows that do drop it are
still flagged in a mixed window."""
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests

from core import features as F
from monitoring import monitor, record
from core import request_log
from serving.server import BackgroundServer
from tests.monitoring.conftest import log_records, monitor_settings, send, write_logs
from core import mlmd

TIME = F.TIME_KEY


def _complete(rows):
    """Rows with a value for every numeric model input (serving_raw callers send a missing
    number as 0, which is out of some features' domains: another anomaly than this one's)."""
    numeric = [n for n in F.MODEL_FEATURES if F.RAW_FEATURE_TYPES[n] != "string"]
    return [r for r in rows if all(r[n] != "" for n in numeric)]


def _raw_instance(row, inputs):
    """A CSV row as a serving_raw REST instance: exactly the signature's inputs."""
    kinds = {"float": float, "int": lambda v: int(float(v)), "string": str}
    return {n: kinds[F.RAW_FEATURE_TYPES[n]](row[n]) for n in inputs}


def _post_raw(server, rows, per_request=10):
    base = f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi"
    with requests.Session() as session:
        signature = session.get(f"{base}/metadata", timeout=60).json()["metadata"]["signature_def"][
            "signature_def"]["serving_raw"]
        inputs = sorted(signature["inputs"])
        assert TIME not in inputs
        answers = Counter(session.post(f"{base}:predict", timeout=60, json={
            "signature_name": "serving_raw",
            "instances": [_raw_instance(r, inputs) for r in rows[i:i + per_request]]}).status_code
            for i in range(0, len(rows), per_request))
    assert answers == {200: -(-len(rows) // per_request)}, answers


def _timestamp_anomalies(group):
    return next(f for f in group.features if f.name == TIME).anomalies


def test_serving_raw_traffic_is_judged_on_what_serving_raw_takes(tmp_path, e2e_settings, first_run,
                                                                 held_out_rows):
    # complete rows only: the model predicts a big tip for 0.90 of their Credit Card trips (0.77 at
    # evaluation), which bias drift (monitoring.bias, judged on the features the served model's
    # Evaluator recorded) rightly alerts on; this test is about the contract: bias moves never flag
    settings = monitor_settings(tmp_path, e2e_settings, first_run, bias_max_rate_change="1",
                                bias_max_gap_change="1", bias_max_auc_drop="1")
    rows = _complete(held_out_rows)
    raw, default = rows[:600], rows[600:]
    with BackgroundServer(settings) as server:
        _post_raw(server, raw)
        time.sleep(1.5)                      # the writer closes its open file (log_rotate_seconds=0.5)
        dry = monitor.monitor_once(settings, dry_run=True)
        result = monitor.monitor_once(settings)
        send(server, default, per_request=10)         # serialized tf.Examples: every raw feature
        _post_raw(server, raw[:len(default)])
    mixed = monitor.monitor_once(settings)

    # 1. serving_raw alone: no "Column dropped" on the time key, no trigger, relaxation reported
    for window in (dry, result):
        assert window.rows == len(raw)
        (group,) = window.versions
        assert _timestamp_anomalies(group) == [], _timestamp_anomalies(group)
        assert group.error_anomalies == 0 and group.flagged_features == [], group.flagged_features
        assert not window.decision.triggered and window.decision.reasons == [], window.decision
    assert result.decision.action == "none"
    (group,) = result.versions
    (relaxed,) = group.relaxed
    assert relaxed.feature == TIME and list(relaxed.signatures) == ["serving_raw"]
    assert relaxed.rows == relaxed.of == len(raw)
    assert relaxed.min_fraction == 1.0 and relaxed.effective_min_fraction == 0.0
    assert f"{TIME}: not an input of serving_raw, which served {len(raw)} of the {len(raw)} rows" \
        in relaxed.line()
    html = Path(result.report.html).read_text()
    assert "not an input of serving_raw" in html
    (execution,) = [e for e in record.monitor_executions(mlmd.open_store(settings))
                    if e.custom_properties["window"].string_value == result.window
                    and not e.custom_properties["dry_run"].int_value]
    assert TIME in execution.custom_properties["relaxed"].string_value
    state = json.loads((settings.monitor_path / "state.json").read_text())
    assert state["actions"] == []

    # 2. mixed: serving_default rows carry the time key, serving_raw rows do not
    (group,) = mixed.versions
    assert mixed.rows == 2 * len(default)
    assert _timestamp_anomalies(group) == [] and group.error_anomalies == 0, group.anomalous_features
    assert not mixed.decision.triggered, mixed.decision
    (relaxed,) = group.relaxed
    assert (relaxed.rows, relaxed.of) == (len(default), 2 * len(default))
    assert relaxed.effective_min_fraction <= 0.5


# ------------------------------------------------------------------ a real drop is still flagged
def _raw_records(rows, version, per_request=10):
    """serving_raw PredictionLogs as the server writes them: one tensor per model feature."""
    from tensorflow_serving.apis import predict_pb2
    from serving.tensors import ndarray_to_proto

    kinds = {"float": (float, np.float32), "int": (lambda v: int(float(v)), np.int64),
             "string": (str.encode, object)}
    records = []
    for start in range(0, len(rows), per_request):
        chunk = rows[start:start + per_request]
        request, response = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
        request.model_spec.name, request.model_spec.signature_name = "taxi", "serving_raw"
        for name in F.MODEL_FEATURES:
            convert, dtype = kinds[F.RAW_FEATURE_TYPES[name]]
            request.inputs[name].CopyFrom(ndarray_to_proto(np.asarray([convert(r[name]) for r in chunk], dtype)))
        response.model_spec.name, response.model_spec.signature_name = "taxi", "serving_raw"
        response.model_spec.version.value = version
        response.outputs[F.PREDICTION_KEY].CopyFrom(ndarray_to_proto(np.full(len(chunk), 0.2, np.float32)))
        records.append(request_log.answered_record("predict", "taxi", version, "serving_raw", f"raw-{start}",
                                                   time.time(), request, response))
    return records


def _without_time(rows, every):
    return [{k: v for k, v in r.items() if k != TIME or i % every} for i, r in enumerate(rows)]


@pytest.mark.parametrize("with_raw", [True, False], ids=["mixed-with-serving_raw", "serving_default-only"])
def test_serving_default_rows_that_drop_the_time_key_are_still_flagged(tmp_path, e2e_settings, first_run,
                                                                       held_out_rows, with_raw):
    """A third of the serving_default rows lack the time key (answered, as a server whose
    model does not parse it would log them): flagged, beside serving_raw traffic or not."""
    settings = monitor_settings(tmp_path, e2e_settings, first_run, monitor_min_rows="100")   # 300 rows judged
    version = int(first_run.pushed_version)
    rows = _complete(held_out_rows)[:600]
    default = _without_time(rows[:300], every=3)
    records = log_records([default[i:i + 10] for i in range(0, 300, 10)], version)
    if with_raw:
        records += _raw_records(rows[300:], version)
    write_logs(settings.request_logs_path, records, 20)
    result = monitor.monitor_once(settings, dry_run=True)

    (group,) = result.versions
    assert result.rows == len(records) * 10
    anomalies = _timestamp_anomalies(group)
    assert any(a["severity"] == "ERROR" and a["type"] == "FEATURE_TYPE_LOW_FRACTION_PRESENT" for a in anomalies), \
        anomalies
    assert result.decision.triggered
    assert any(TIME in r for r in result.decision.reasons)
    if with_raw:
        (relaxed,) = group.relaxed
        assert (relaxed.rows, relaxed.of) == (300, 600)
        assert 0.4999 < relaxed.effective_min_fraction <= 0.5       # 200 of 600 present: under
        assert "required in the other 300" in relaxed.line()
    else:
        assert group.relaxed == []


# ------------------------------------------------------------------ the effective schema
def _schema():
    import tensorflow_data_validation as tfdv
    from tests.conftest import REPO

    return tfdv.load_schema_text(str(REPO / "schema" / "schema.pbtxt"))


def _feature(schema, name):
    return next(f for f in schema.feature if f.name == name)


INPUTS = {"serving_default": {"examples"}, "serving_raw": set(F.MODEL_FEATURES),
          "transform_features": {"examples"}}


def test_effective_schema_relaxes_only_what_a_used_signature_does_not_take():
    from monitoring import contract

    schema = _schema()
    same = contract.effective(schema, {"": 50, "serving_default": 50}, INPUTS)
    assert same.schema is schema and same.relaxed == []
    unknown = contract.effective(schema, {"serving_bogus": 50}, INPUTS)     # nothing known: every feature
    assert unknown.relaxed == []
    assert contract.effective(schema, {"serving_raw": 10}, {}).relaxed == []   # inputs unreadable

    mixed = contract.effective(schema, {"serving_default": 25, "": 25, "serving_raw": 150}, INPUTS)
    (relaxed,) = mixed.relaxed              # pickup_census_tract: not taken either, but never required
    assert relaxed.feature == TIME and relaxed.signatures == ("serving_raw",)
    assert (relaxed.rows, relaxed.of, relaxed.min_count, relaxed.effective_min_count) == (150, 200, 1, 1)
    assert relaxed.effective_min_fraction == 0.25
    changed, served = _feature(mixed.schema, TIME), _feature(schema, TIME)
    assert 0.25 - 1e-6 < changed.presence.min_fraction < 0.25
    assert not changed.HasField("shape") and (changed.value_count.min, changed.value_count.max) == (1, 1)
    assert served.presence.min_fraction == 1.0 and served.HasField("shape")        # the served one unchanged
    for original, effective in zip(schema.feature, mixed.schema.feature):          # nothing else changed
        if original.name != TIME:
            assert original == effective
    changed.ClearField("value_count")
    changed.presence.CopyFrom(served.presence)
    changed.shape.CopyFrom(served.shape)
    assert changed == served

    alone = contract.effective(schema, {"serving_raw": 150}, INPUTS)
    (relaxed,) = alone.relaxed
    assert (relaxed.effective_min_fraction, relaxed.effective_min_count) == (0.0, 0)
    assert relaxed.line().startswith(f"{TIME}: not an input of serving_raw, which served 150 of the 150 rows")
