"""Request logging: requests in, PredictionLog files out, read back as the same tf.Examples
(the writer, ``serving.log_writer``; the format, ``core.request_log``)."""
import base64

import requests

from core import features as F
from core import request_log
from serving.log_writer import RequestLogger
from serving.client import GrpcClient, predict_request, serialize_rows
from serving.server import BackgroundServer
from tests.serving.conftest import copy_version, serving_settings
from core.examples import row_to_example


def test_round_trip(tmp_path, pushed_model, rows):
    settings = serving_settings(tmp_path, log_rotate_records=4)
    copy_version(pushed_model, settings.model_push_dir, 5)
    sent = {}
    with BackgroundServer(settings) as server:
        base = f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi"
        for i, row in enumerate(rows[:6]):       # REST, b64 tf.Examples
            s = serialize_rows([row])
            r = requests.post(base + ":predict", headers={"X-Request-Id": f"rest-{i}"}, timeout=30,
                              json={"instances": [{"b64": base64.b64encode(s[0]).decode()}]})
            assert r.status_code == 200
            sent[f"rest-{i}"] = ([row_to_example(row, F.SERVING_FEATURES)], r.json()["predictions"])
        grpc_client = GrpcClient("127.0.0.1", server.ports.grpc, "taxi")
        for i, row in enumerate(rows[6:9]):      # gRPC
            p = grpc_client.predict_rows([row], request_id=f"grpc-{i}")
            sent[f"grpc-{i}"] = ([row_to_example(row, F.SERVING_FEATURES)], p)
        # a caller that sends no id (as TF Serving's clients) gets TF Serving's bare
        # answer, no extra metadata; the log gets a made-up id
        anonymous, call = grpc_client.stub.Predict.with_call(
            predict_request("taxi", serialize_rows(rows[9:10])), timeout=30)
        assert "x-request-id" not in dict(call.trailing_metadata() or ())
        grpc_client.close()
        complete = [r for r in rows if all(r[c] != "" for c in F.MODEL_FEATURES)][:2]
        raw = [{c: (float(r[c]) if F.column_type(c) == "float" else int(float(r[c]))
                    if F.column_type(c) == "int" else r[c]) for c in F.MODEL_FEATURES} for r in complete]
        r = requests.post(base + ":predict", headers={"X-Request-Id": "raw"}, timeout=30,
                          json={"signature_name": "serving_raw", "instances": raw})
        sent["raw"] = ([row_to_example(x, F.MODEL_FEATURES) for x in raw], r.json()["predictions"])
        full = [{c: (float(r[c]) if F.column_type(c) == "float" else int(float(r[c]))
                     if F.column_type(c) == "int" else r[c]) for c in F.SERVING_FEATURES if r[c] != ""}
                for r in complete]
        r = requests.post(base + ":classify", headers={"X-Request-Id": "cls"}, timeout=30,
                          json={"examples": full})
        assert r.status_code == 200
        # still open files are hidden; nothing is lost on a clean shutdown
    files = request_log.closed_log_files(settings.request_logs_path)
    assert len(files) >= 3          # rotated every 4 records
    assert not [p for p in settings.request_logs_path.iterdir() if p.name.endswith(".tmp")]
    logged = {rec.request_id: rec for rec in request_log.read_request_log(settings.request_logs_path)}
    (made_up,) = set(logged) - set(sent) - {"cls"}
    assert len(made_up) == 32 and int(made_up, 16) >= 0
    assert logged[made_up].predictions == __import__("pytest").approx(
        list(anonymous.outputs["probabilities"].float_val), abs=1e-6)
    assert set(sent) | {"cls", made_up} == set(logged)
    for rid, (examples, predictions) in sent.items():
        rec = logged[rid]
        assert rec.model_name == "taxi" and rec.model_version == 5 and rec.timestamp > 0
        assert rec.predictions == __import__("pytest").approx(predictions, abs=1e-6)
        if rid == "raw":   # typed JSON rows come back with the same values
            for got, want in zip(rec.examples, examples):
                assert got.features.feature == want.features.feature
        else:
            assert rec.examples == examples
    assert logged["cls"].kind == "classify" and set(logged["cls"].predictions[0]) == {"0", "1"}


def test_full_queue_drops_and_counts(tmp_path):
    from serving import metrics as M
    metrics = M.new_metrics()
    logger = RequestLogger(tmp_path, queue_size=2, metrics=metrics)  # not started
    assert logger.submit(object()) and logger.submit(object())
    assert not logger.submit(object())
    assert metrics.value(M.LOG_DROPPED) == 1

