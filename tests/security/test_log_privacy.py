"""Request logs as sensitive data (``core.redact``, ``serving.log_writer``): a real
``tfxops serve`` with ``log_drop_features=[trip_start_timestamp]`` and
``log_hash_features=[company]`` answers REST and gRPC calls (predict on
``serving_default`` and ``serving_raw``, classify, and a call it rejects); the
dropped feature's name and values appear nowhere in the log files' bytes, the
hashed one's values only as their salted HMAC; the files are 0600 and the
directory 0700 although the server ran with umask 000; a monitor pass over those
logs completes and names the features it left out.
"""
import base64
import hashlib
import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import requests
from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

from core import config, features as F, request_log
from core.examples import row_to_example
from core.protowire import varint
from core.redact import HASH_HEX_CHARS
from monitoring import act, monitor
from serving.client import predict_request, serialize_rows
from tests.monitoring.conftest import monitor_settings
from tests.serving.serve_proc import ServeProcess

DROPPED, HASHED = "trip_start_timestamp", "company"
SALT = "a salt of this test's own"
REDACTION = {"log_drop_features": DROPPED, "log_hash_features": HASHED, "retrain_with_feedback": "false"}


def _typed(row, columns):
    kinds = {"float": lambda v: float(v or 0), "int": lambda v: int(float(v or 0)), "string": str}
    return {c: kinds[F.column_type(c)](row[c]) for c in columns}


def _calls(settings, rows):
    """REST predict (examples; serving_raw, with the dropped feature as an extra input),
    classify, a classify refused for the dropped feature's type (the model's message
    names it); gRPC predict and classify."""
    base = f"http://127.0.0.1:{settings.rest_port}/v1/models/taxi"
    b64 = [{"b64": base64.b64encode(s).decode()} for s in serialize_rows(rows[:5])]
    assert requests.post(base + ":predict", json={"instances": b64}, timeout=30).status_code == 200
    raw = [_typed(r, F.MODEL_FEATURES) for r in rows[5:10]]
    body = {"signature_name": "serving_raw", "inputs": {k: [r[k] for r in raw] for k in F.MODEL_FEATURES}}
    body["inputs"][DROPPED] = [int(r[DROPPED]) for r in rows[5:10]]     # an input serving_raw ignores
    assert requests.post(base + ":predict", json=body, timeout=30).status_code == 200
    examples = [_typed(r, [c for c in F.SERVING_FEATURES if r[c] != ""]) for r in rows[10:13]]
    assert requests.post(base + ":classify", json={"examples": examples}, timeout=30).status_code == 200
    for example, row in zip(examples, rows[10:13]):
        example[DROPPED] = f"{row[DROPPED]}x"                            # a string where an int is expected
    refused = requests.post(base + ":classify", json={"examples": examples}, timeout=30)
    assert refused.status_code == 400 and DROPPED in refused.json()["error"]
    with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(predict_request("taxi", serialize_rows(rows[13:18])), timeout=30)
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "taxi"
        request.input.example_list.examples.extend(row_to_example(r, F.SERVING_FEATURES) for r in rows[18:21])
        stub.Classify(request, timeout=30)


@pytest.fixture(scope="module")
def served_logs(tmp_path_factory, e2e_settings, first_run, taxi_rows):
    """The logs of a real `tfxops serve` (umask 000, redaction on) after the calls."""
    home = tmp_path_factory.mktemp("log_privacy")
    settings = monitor_settings(home, e2e_settings, first_run, **REDACTION)
    rows = [r for r in taxi_rows[3000:3400] if all(r[c] != "" for c in F.MODEL_FEATURES + [DROPPED, HASHED])][:21]
    args = [arg for key, value in REDACTION.items() for arg in ("--set", f"{key}={value}")]
    previous_umask, previous_salt = os.umask(0), os.environ.get(settings.log_hash_salt_env)
    os.environ[settings.log_hash_salt_env] = SALT
    try:
        with ServeProcess(settings, home, args=args) as server:
            _calls(settings, rows)
            assert server.terminate() == 0                 # SIGTERM: every queued record written
    finally:
        os.umask(previous_umask)
        os.environ.pop(settings.log_hash_salt_env)
        if previous_salt is not None:
            os.environ[settings.log_hash_salt_env] = previous_salt
    files = request_log.closed_log_files(settings.request_logs_path)
    assert files, "the server logged nothing"
    return settings, rows, files


def test_the_dropped_feature_never_reaches_a_log_file(served_logs):
    settings, rows, files = served_logs
    data = b"".join(p.read_bytes() for p in Path(settings.request_logs_path).iterdir())
    assert DROPPED.encode() not in data
    for row in rows:                    # as text (REST JSON) and as the varint a tf.Example or int64 tensor holds
        value = int(row[DROPPED])
        assert str(value).encode() not in data and varint(value) not in data
    logged = list(request_log.read_request_log(files))
    assert {c.kind for c in logged} == {"predict", "classify"} and any(c.error for c in logged)
    assert all(DROPPED not in e.features.feature for call in logged for e in call.examples)
    rejected = next(c for c in logged if c.error)
    assert rejected.error[0] == "INVALID_ARGUMENT" and "<dropped feature>" in rejected.error[1]
    assert len(rejected.rows) == 3


def test_the_hashed_feature_appears_only_as_its_salted_hmac(served_logs):
    settings, rows, files = served_logs
    data = b"".join(p.read_bytes() for p in files)
    for row in rows:
        assert row[HASHED].encode() not in data
    expected = {hmac.new(SALT.encode(), r[HASHED].encode(), hashlib.sha256).hexdigest()[:HASH_HEX_CHARS]
                for r in rows}
    seen = set()
    for call in request_log.read_request_log(files):
        for example in call.examples:
            if HASHED in example.features.feature:
                seen.update(v.decode() for v in example.features.feature[HASHED].bytes_list.value)
    assert seen and seen <= expected


def test_log_files_are_owner_only_whatever_the_umask(served_logs):
    settings, _, files = served_logs
    assert stat.S_IMODE(os.stat(settings.request_logs_path).st_mode) == 0o700
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_a_monitor_pass_completes_and_names_the_features_left_out(served_logs):
    settings, _, _ = served_logs
    result = monitor.monitor_once(settings, dry_run=True)
    assert result.status == "analysed"
    (version,) = result.versions
    assert version.redaction["dropped"] == [DROPPED] and version.redaction["hashed"] == [HASHED]
    judged = {f.name for f in version.features}
    assert DROPPED not in judged and HASHED not in judged
    assert not any(DROPPED in r or HASHED in r for r in result.decision.reasons)
    assert "not judged" in version.attribution.reason and HASHED in version.attribution.reason
    assert "Redacted request logs" in Path(result.report.html).read_text()
    assert "out-of-domain rates never name it" in version.redaction["note"]   # its marks went with it


def test_hashing_without_a_salt_is_refused_at_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TFXOPS_LOG_SALT"}
    done = subprocess.run([sys.executable, "-m", "tfxops.cli", "serve", "--home", str(tmp_path),
                           "--set", "log_hash_features=pickup_census_tract"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert "TFXOPS_LOG_SALT" in done.stderr and "log_hash_salt_env" in done.stderr
    assert "Traceback" not in done.stderr


def test_settings_that_cannot_work_are_refused_at_load():
    with pytest.raises(config.ConfigError, match="retrain_with_feedback=false"):
        config.load({"log_hash_features": HASHED})            # feedback spans would retrain on hashes
    with pytest.raises(config.ConfigError, match="not a raw feature"):
        config.load({"log_drop_features": "tip_amount"})
    with pytest.raises(config.ConfigError, match="both"):
        config.load({"log_drop_features": DROPPED, "log_hash_features": DROPPED})
    assert config.load({"log_drop_features": DROPPED}).log_drop_features == [DROPPED]


def test_labelled_spans_are_owner_only(tmp_path):
    previous = os.umask(0)
    try:
        span = act.write_span([{"fare": 1.0, "tips": 0.5}], tmp_path / "spans", "w1")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(span).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "spans").st_mode) == 0o700


def test_a_recovered_orphan_is_owner_only(tmp_path):
    """A temp file left by a writer that died (created before files were owner-only)
    is renamed by recovery with mode 0600."""
    from serving.log_writer import recover_orphans

    orphan = tmp_path / f".{request_log.FILE_PREFIX}20260101T000000-1-abcdef-000001{request_log.FILE_SUFFIX}" \
                        f"{request_log.TMP_SUFFIX}"
    orphan.write_bytes(request_log.tfrecord_frame(b"a record"))
    os.chmod(orphan, 0o644)
    (recovered,) = recover_orphans(tmp_path)
    assert recovered.records == 1 and stat.S_IMODE(os.stat(recovered.path).st_mode) == 0o600


def test_the_out_of_domain_mark_does_not_name_a_dropped_feature(taxi_rows):
    """A record the server marked out of its input domain for the dropped feature and
    another: redacted, the mark names only the other (and the bytes never the dropped one)."""
    from tensorflow_serving.apis import predict_pb2

    from core.redact import Redaction

    record = request_log.answered_record(
        "predict", "taxi", 1, F.DEFAULT_SIGNATURE, "r-1", 0, predict_request("taxi", serialize_rows(taxi_rows[:2])),
        predict_pb2.PredictResponse(), out_of_domain=(DROPPED, "fare"))
    redacted = Redaction(frozenset([DROPPED]), frozenset()).record(record)
    assert DROPPED.encode() in record and DROPPED.encode() not in redacted
    (call,) = request_log.decode_records([redacted])
    assert call.out_of_domain == ("fare",) and len(call.rows) == 2
