"""Monitoring fixtures: a private copy of the first pipeline run's metadata store and
pushed model (so retraining here never touches what other test modules read),
real servers, request logs written by the real writer, and feedback files."""
import csv
import shutil
import time
from pathlib import Path

import pytest
import requests

from core import features as F
from core.request_log import new_request_id
from core.ports import free_port
from tests.conftest import SMALL_ROWS
from core import config

WAIT = 120   # an upper bound for waits, never an assertion on time
HELD_OUT = slice(SMALL_ROWS, SMALL_ROWS + 1000)    # rows the first run never saw


def monitor_settings(tmp: Path, e2e_settings, first_run, **overrides):
    """Settings over a copy of the e2e home: its MLMD store and its pushed version."""
    shutil.copy(e2e_settings.metadata_file, tmp / "metadata.sqlite")
    push_dir = tmp / "serving_model" / e2e_settings.model_name
    push_dir.mkdir(parents=True)
    shutil.copytree(first_run.pushed_path, push_dir / str(first_run.pushed_version))
    values = dict(e2e_settings.as_dict())
    values = {k: v for k, v in values.items() if k in (
        "train_steps", "eval_steps", "batch_size", "slice_features", "data_dir")}
    values.update(home=str(tmp), metadata_path=str(tmp / "metadata.sqlite"),
                  pipeline_root=str(tmp / "pipeline_root"), serving_dir=str(tmp / "serving_model"),
                  rest_port=free_port(), grpc_port=free_port(), poll_seconds=0.2,
                  log_rotate_records=5, log_rotate_seconds=0.5)
    values.update(overrides)
    return config.load({k: v if isinstance(v, str) else _text(v) for k, v in values.items()})


def _text(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def send(server, rows, per_request=50, prefix=None):
    """Rows through the server's REST API, ``per_request`` rows a request; returns
    [(request_id, [rows])]."""
    from serving.client import RestClient

    client = RestClient("127.0.0.1", server.ports.rest, "taxi")
    sent = []
    try:
        for start in range(0, len(rows), per_request):
            chunk = rows[start:start + per_request]
            rid = f"{prefix or 'r'}-{start // per_request}-{new_request_id()[:6]}"
            client.predict_rows(chunk, request_id=rid)
            sent.append((rid, chunk))
    finally:
        client.close()
    return sent


def write_feedback(settings, sent, name="labels.csv"):
    """Labels coming back: request_id, row, tips for every row sent."""
    directory = settings.feedback_path
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "row", F.LABEL_KEY])
        for rid, rows in sent:
            for i, row in enumerate(rows):
                writer.writerow([rid, i, row[F.LABEL_KEY]])


def drifted(row, i):
    """fare scaled x3; a new payment_type on every third row; trip_seconds dropped."""
    out = dict(row)
    if out["fare"] != "":
        out["fare"] = str(float(out["fare"]) * 3)
    if i % 3 == 0:
        out["payment_type"] = "Bitcoin"
    del out["trip_seconds"]
    return out


def scaled(row):
    out = dict(row)
    if out["fare"] != "":
        out["fare"] = str(float(out["fare"]) * 3)
    return out


def wait_for_version(server, version):
    deadline = time.monotonic() + WAIT
    url = f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi"
    while time.monotonic() < deadline:
        states = {int(v["version"]): v["state"] for v in requests.get(url, timeout=30).json()
                  .get("model_version_status", [])}
        if states.get(int(version)) == "AVAILABLE":
            return
        time.sleep(0.2)
    raise AssertionError(f"version {version} never became AVAILABLE")


def log_records(rows, version, model_name="taxi", prefix="w"):
    """PredictionLogs as the server writes them (one request of each row list)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from core.request_log import answered_record
    from serving.client import predict_request, serialize_rows

    records = []
    for i, chunk in enumerate(rows):
        serialized = serialize_rows(chunk)
        response = predict_pb2.PredictResponse()
        out = response.outputs[F.PREDICTION_KEY]
        out.dtype = 1   # DT_FLOAT
        out.tensor_shape.dim.add().size = len(chunk)
        out.float_val.extend([0.2] * len(chunk))
        response.model_spec.version.value = int(version)
        records.append(prediction_log_pb2.PredictionLog.FromString(answered_record(
            "predict", model_name, version, F.DEFAULT_SIGNATURE, f"{prefix}-{i}", time.time(),
            predict_request(model_name, serialized), response)))
    return records


def write_logs(directory, records, rotate_records):
    """Through the real writer (rotation, atomic rename); returns the closed files."""
    from serving.log_writer import RequestLogger

    logger = RequestLogger(directory, rotate_records=rotate_records, rotate_seconds=3600).start()
    for record in records:
        assert logger.submit(record)
    logger.close()
    return list(logger.closed_files)


@pytest.fixture(scope="session")
def held_out_rows(taxi_rows):
    return taxi_rows[HELD_OUT]
