"""REST conformance with TF Serving's API: request shapes, answers, errors, codes."""
import base64

import pytest
import requests

from core import features as F
from serving.client import serialize_rows


@pytest.fixture(scope="module")
def base(served):
    return f"http://127.0.0.1:{served.ports.rest}/v1/models/taxi"


def b64_instances(rows):
    return [{"b64": base64.b64encode(s).decode()} for s in serialize_rows(rows)]


def typed(row, columns):
    out = {}
    for c in columns:
        kind, v = F.column_type(c), row[c]
        out[c] = (float(v or 0) if kind == "float" else int(float(v or 0)) if kind == "int" else v)
    return out


def post(url, **kwargs):
    r = requests.post(url, timeout=30, **kwargs)
    return r.status_code, r.json()


def test_status_and_metadata(base):
    r = requests.get(base, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"model_version_status": [
        {"version": "7", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(base + "/versions/7", timeout=30).json()["model_version_status"][0]["version"] == "7"
    meta = requests.get(base + "/metadata", timeout=30).json()
    assert meta["model_spec"]["name"] == "taxi" and meta["model_spec"]["version"] == "7"
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["inputs"]["examples"]["dtype"] == "DT_STRING"
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert set(sigs["serving_raw"]["inputs"]) == set(F.MODEL_FEATURES)


def test_predict_row_columnar_b64_and_raw_agree(base, rows):
    some = rows[:4]
    code, row = post(base + ":predict", json={"instances": b64_instances(some)})
    assert code == 200 and len(row["predictions"]) == 4
    assert all(0.0 <= p <= 1.0 for p in row["predictions"])
    code, named = post(base + ":predict", json={"signature_name": "serving_default",
                                                "instances": [{"examples": i} for i in b64_instances(some)]})
    assert code == 200 and named["predictions"] == row["predictions"]
    code, col = post(base + ":predict", json={"inputs": b64_instances(some)})
    assert code == 200 and col == {"outputs": row["predictions"]}
    code, ver = post(base + "/versions/7:predict", json={"instances": b64_instances(some)})
    assert code == 200 and ver["predictions"] == row["predictions"]
    complete = [r for r in rows if all(r[c] != "" for c in F.MODEL_FEATURES)][:4]
    raw = [typed(r, F.MODEL_FEATURES) for r in complete]
    code, by_raw = post(base + ":predict", json={"signature_name": "serving_raw", "instances": raw})
    code2, by_examples = post(base + ":predict", json={"instances": b64_instances(complete)})
    assert code == code2 == 200
    assert by_raw["predictions"] == pytest.approx(by_examples["predictions"], abs=1e-5)
    code, raw_col = post(base + ":predict", json={
        "signature_name": "serving_raw", "inputs": {k: [r[k] for r in raw] for k in raw[0]}})
    assert code == 200 and raw_col["outputs"] == by_raw["predictions"]


def test_classify_and_regress(base, rows):
    some = rows[:3]
    code, pred = post(base + ":predict", json={"instances": b64_instances(some)})
    examples = [typed({k: v for k, v in r.items()}, [c for c in F.SERVING_FEATURES if r[c] != ""])
                for r in some]
    code, cls = post(base + ":classify", json={"examples": examples})
    assert code == 200
    for p, result in zip(pred["predictions"], cls["results"]):
        assert [label for label, _ in result] == ["0", "1"]
        assert result[1][1] == pytest.approx(p, abs=1e-6)
        assert result[0][1] == pytest.approx(1 - p, abs=1e-6)
    code, reg = post(base + ":regress", json={"examples": examples})
    assert code == 200 and reg["results"] == pytest.approx(pred["predictions"], abs=1e-6)
    # context: features shared by every example
    ctx = {"payment_type": examples[0]["payment_type"]}
    rest = [{k: v for k, v in e.items() if k != "payment_type"} for e in examples[:1]]
    code, with_ctx = post(base + ":regress", json={"context": ctx, "examples": rest})
    assert code == 200 and with_ctx["results"][0] == pytest.approx(pred["predictions"][0], abs=1e-6)


@pytest.mark.parametrize("path,body,status,message", [
    ("/v1/models/nope:predict", {"instances": [{"b64": ""}]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("/v1/models/taxi/versions/3:predict", {"instances": [{"b64": ""}]}, 404,
     "Servable not found for request: Specific(taxi, 3)"),
    ("/v1/models/taxi/labels/canary:predict", {"instances": [{"b64": ""}]}, 400,
     "Unrecognized servable version label: canary"),
    ("/v1/models/taxi:predict", {"signature_name": "nope", "instances": [{"b64": ""}]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/taxi:predict", b"{not json", 400, "JSON Parse error"),
    ("/v1/models/taxi:predict", b"", 400, "JSON Parse error: The document is empty"),
    ("/v1/models/taxi:predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("/v1/models/taxi:predict", {"instances": [{"b64": ""}], "inputs": [{"b64": ""}]}, 400,
     "expecting only one of 'inputs' or 'instances' keys to exist"),
    ("/v1/models/taxi:predict", {"signature_name": "serving_default"}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("/v1/models/taxi:predict", {"instances": [1.5]}, 400,
     "is not of expected type: string"),
    ("/v1/models/taxi:predict", {"signature_name": "serving_raw", "instances": [{"fare": 1.0}]}, 400,
     "keys must be equal to"),
    ("/v1/models/taxi:predict", {"signature_name": "serving_raw", "instances": [1.0]}, 400,
     "instances is a plain list, but expecting list of objects"),
    ("/v1/models/taxi:predict", {"inputs": [[{"b64": ""}]]}, 400,
     "has shape [1,1], but the signature serving_default expects [-1]"),
    ("/v1/models/taxi:predict", {"instances": [{"b64": "not base64!"}]}, 400,
     "Unable to base64 decode"),
    ("/v1/models/taxi:classify", {"examples": []}, 400, "'examples' value is an empty array"),
    ("/v1/models/taxi:classify", {"signature_name": "serving_raw", "examples": [{"fare": 1.0}]}, 400,
     "Expected classification signature method_name to be tensorflow/serving/classify"),
    ("/v1/models/taxi:explain", {}, 400, "Malformed request: POST /v1/models/taxi:explain"),
])
def test_errors(served, path, body, status, message):
    url = f"http://127.0.0.1:{served.ports.rest}{path}"
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    code, answer = post(url, **kwargs)
    assert code == status, answer
    assert set(answer) == {"error"} and message in answer["error"], answer


def test_model_errors_are_invalid_argument(base):
    # A string that is not a serialized tf.Example: the model's own parse error, 400.
    code, answer = post(base + ":predict", json={"instances": [{"b64": base64.b64encode(b"\xff\x00junk").decode()}]})
    assert code == 400 and "error" in answer


def test_unknown_model_status(served):
    r = requests.get(f"http://127.0.0.1:{served.ports.rest}/v1/models/nope", timeout=30)
    assert r.status_code == 404
    assert r.json() == {"error": "Could not find any versions of model nope"}
    r = requests.get(f"http://127.0.0.1:{served.ports.rest}/v1/models/taxi/versions/3", timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "Could not find version 3 of model taxi"


def test_request_id_and_size_limit(served, base, rows):
    r = requests.post(base + ":predict", json={"instances": b64_instances(rows[:1])},
                      headers={"X-Request-Id": "abc-123"}, timeout=30)
    assert r.headers["X-Request-Id"] == "abc-123"
    r = requests.post(base + ":predict", json={"instances": b64_instances(rows[:1])}, timeout=30)
    assert len(r.headers["X-Request-Id"]) >= 16
    big = b'{"instances": [' + b'"x",' * (served.settings.max_request_bytes // 4) + b'"x"]}'
    r = requests.post(base + ":predict", data=big, timeout=60)
    assert r.status_code == 413 and "max_request_bytes" in r.json()["error"]


def test_prometheus_metrics(served, base, rows):
    post(base + ":predict", json={"instances": b64_instances(rows[:1])})
    text = requests.get(f"http://127.0.0.1:{served.ports.rest}/monitoring/prometheus/metrics",
                        timeout=30).text
    assert ':tensorflow:serving:request_count{model_name="taxi",status="OK"}' in text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="taxi",API="predict",entrypoint="REST",le="+Inf"}' in text
    assert ":tensorflow:serving:batching_session:processed_batch_size_count" in text
    assert "tfxops_serving_request_log_records_total" in text
