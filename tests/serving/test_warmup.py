"""Warm-up requests (issue 17 part 2): the Pusher writes TF Serving's
``assets.extra/tf_serving_warmup_requests`` into each version, covered by its
manifest; ``tfxops serve`` replays it before the version becomes AVAILABLE, without
counting or logging the replayed calls; a version whose warm-up fails is not served."""
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import requests
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_log_pb2

from core import features as F
from core import integrity, request_log
from core.examples import row_to_example
from core.warmup import MAX_RECORDS, WARMUP_FILE, model_signatures, warmup_logs
from serving.client import rest_body
from serving.models import AVAILABLE, END, ModelManager, VersionPolicy
from serving.server import BackgroundServer
from tests.serving.conftest import serving_settings
from tests.serving.test_reload import wait_for

ROWS_PER_SIGNATURE = 3   # the default warmup_examples


def tf_records(path) -> list:
    """The PredictionLogs of a TFRecord file, read with TensorFlow's own reader."""
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]


def copy_with_warmup(src, base: Path, version: int, records=None, raw: bytes = None) -> Path:
    """A copy of the pushed version ``src`` as ``base/version`` whose warm-up file holds
    ``records`` (PredictionLogs) or the bytes ``raw`` (neither: no file), with its
    manifest written again over it, as the Pusher writes it."""
    target = base / str(version)
    shutil.copytree(src, target)
    path = target / WARMUP_FILE
    path.unlink()
    if raw is not None:
        path.write_bytes(raw)
    elif records is not None:
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record in records:
                writer.write(record.SerializeToString())
    (target / integrity.MANIFEST_NAME).unlink()
    integrity.write_manifest(str(target), None, str(version), base.name)
    return target


# ------------------------------------------------------------------ the file
def test_the_pushed_version_holds_tf_servings_warmup_file_covered_by_its_manifest(pushed_model, tmp_path):
    version = Path(pushed_model)
    records = tf_records(version / WARMUP_FILE)
    served = set(model_signatures(str(version)))
    assert served == {F.DEFAULT_SIGNATURE, F.RAW_SIGNATURE}          # not TFMA's transform_features
    kinds = Counter((r.WhichOneof("log_type"), r.predict_log.request.model_spec.signature_name) for r in records)
    assert kinds == {("predict_log", name): ROWS_PER_SIGNATURE for name in served}
    for record in records:
        request = record.predict_log.request
        if request.model_spec.signature_name == F.DEFAULT_SIGNATURE:
            (tensor,) = request.inputs.values()
            assert tensor.dtype == types_pb2.DT_STRING and [d.size for d in tensor.tensor_shape.dim] == [1]
            example = tf.train.Example.FromString(tensor.string_val[0])
            assert "fare" in example.features.feature and F.LABEL_KEY not in example.features.feature
        else:
            assert set(request.inputs) == set(F.MODEL_FEATURES)       # one tensor per raw feature, one row
            assert {tuple(d.size for d in t.tensor_shape.dim) for t in request.inputs.values()} == {(1,)}
    # covered by the version's manifest: a change to it is refused before the version loads
    manifest = integrity.read_manifest(str(version))
    assert manifest.digests[WARMUP_FILE].sha256 == integrity.file_digest(str(version), WARMUP_FILE).sha256
    copy = tmp_path / "taxi" / "1"
    shutil.copytree(version, copy)
    (copy / WARMUP_FILE).write_bytes((copy / WARMUP_FILE).read_bytes() + b"\0")
    checked = integrity.verify_version(str(copy), None, require_manifest=True)
    assert not checked.ok and any(WARMUP_FILE in problem for problem in checked.problems)


def test_classify_and_regress_signatures_get_their_own_logs_and_predict_signatures_none():
    """A classify signature gets ClassifyLogs (TF Serving's RunClassify), a regress one
    RegressLogs; a predict signature never does (TF Serving refuses classify on it)."""
    from tensorflow.core.protobuf import meta_graph_pb2

    signatures = {}
    for name, method in (("scores", "tensorflow/serving/classify"), ("value", "tensorflow/serving/regress"),
                         ("probabilities", "tensorflow/serving/predict")):
        sig = signatures[name] = meta_graph_pb2.SignatureDef(method_name=method)
        sig.inputs["inputs" if method != "tensorflow/serving/predict" else "examples"].dtype = types_pb2.DT_STRING
        sig.inputs["inputs" if method != "tensorflow/serving/predict" else "examples"].tensor_shape.dim.add(size=-1)
    example = row_to_example({"fare": 9.5, "company": "Flash Cab"}).SerializeToString()
    logs = warmup_logs(signatures, [example, example])
    kinds = Counter((log.WhichOneof("log_type"), getattr(log, log.WhichOneof("log_type")).request.model_spec
                     .signature_name) for log in logs)
    assert kinds == {("classify_log", "scores"): 2, ("regress_log", "value"): 2, ("predict_log", "probabilities"): 2}
    classify = next(log for log in logs if log.HasField("classify_log")).classify_log.request
    assert classify.input.example_list.examples[0].SerializeToString() == example


# ------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def warmed(tmp_path_factory, pushed_model):
    """A server (request log on) serving a copy of the pushed version, with its warm-up
    file, as version 7; the log records of its start."""
    tmp = tmp_path_factory.mktemp("warmed")
    settings = serving_settings(tmp, log_rotate_records=1, log_rotate_seconds=0.2, enable_batching="false")
    settings.model_push_dir.mkdir(parents=True)
    shutil.copytree(pushed_model, settings.model_push_dir / "7")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tfxops.serving")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with BackgroundServer(settings) as server:
            server.settings, server.start_log = settings, list(records)
            yield server
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _statuses(server):
    r = requests.get(f"http://127.0.0.1:{server.ports.rest}/v1/models/taxi", timeout=30)
    return {int(v["version"]): v for v in r.json()["model_version_status"]}


def _request_counts(server) -> float:
    text = server.server.metrics.render()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(":tensorflow:serving:request_count"))


def test_warmup_is_replayed_before_available_and_not_counted_or_logged(warmed, rows):
    messages = [r.getMessage() for r in warmed.start_log]
    replayed = [i for i, m in enumerate(messages) if "warm-up requests replayed" in m]
    available = [i for i, m in enumerate(messages) if "version 7 AVAILABLE" in m]
    assert replayed and available and replayed[0] < available[0], messages
    assert f"{2 * ROWS_PER_SIGNATURE} warm-up requests" in messages[replayed[0]]
    assert _statuses(warmed)[7]["state"] == AVAILABLE
    # the 6 replayed calls: no request counted, nothing in the request log
    assert _request_counts(warmed) == 0
    logs = warmed.settings.request_logs_path
    assert not logs.exists() or not list(request_log.read_request_log(logs))
    # a real call is counted and logged
    body = rest_body([row_to_example(rows[0]).SerializeToString()])
    url = f"http://127.0.0.1:{warmed.ports.rest}/v1/models/taxi:predict"
    assert requests.post(url, json=body, timeout=30).status_code == 200
    assert _request_counts(warmed) == 1
    wait_for(lambda: len(list(request_log.read_request_log(logs))) == 1, "the real call's log record")


def test_a_version_whose_warmup_fails_is_not_served(warmed, pushed_model, rows):
    """Version 8's signature fails on its warm-up request (a string for the float 'fare'):
    END with TF Serving's code and a message naming the record and the file; version 7
    keeps answering. Version 9, the same model without a warm-up file, loads as before."""
    good = tf_records(Path(pushed_model) / WARMUP_FILE)
    broken = prediction_log_pb2.PredictionLog()
    broken.CopyFrom(next(r for r in good if r.predict_log.request.model_spec.signature_name == F.RAW_SIGNATURE))
    broken.predict_log.request.inputs["fare"].CopyFrom(tf.make_tensor_proto([b"twelve"], shape=[1]))
    base = warmed.settings.model_push_dir
    copy_with_warmup(pushed_model, base, 8, records=good + [broken])
    wait_for(lambda: _statuses(warmed).get(8, {}).get("state") == END, "version 8 to fail its warm-up")
    status = _statuses(warmed)[8]["status"]
    assert status["error_code"] == "INVALID_ARGUMENT"
    assert f"warm-up record {len(good)} of {len(good) + 1}" in status["error_message"]
    assert F.RAW_SIGNATURE in status["error_message"] and WARMUP_FILE in status["error_message"]
    body = rest_body([row_to_example(rows[0]).SerializeToString()])
    answer = requests.post(f"http://127.0.0.1:{warmed.ports.rest}/v1/models/taxi:predict", json=body, timeout=30)
    assert answer.status_code == 200 and warmed.server.manager.available_versions() == [7]

    copy_with_warmup(pushed_model, base, 9)
    wait_for(lambda: _statuses(warmed).get(9, {}).get("state") == AVAILABLE, "version 9 without a warm-up file")
    assert _statuses(warmed)[8]["state"] == END


def _raw_records(logs) -> bytes:
    return b"".join(request_log.tfrecord_frame(log.SerializeToString()) for log in logs)


def _session_run_log():
    log = prediction_log_pb2.PredictionLog()
    log.session_run_log.request.feed.add().name = "x"
    return log


def _classify_on(signature_name):
    log = prediction_log_pb2.PredictionLog()
    log.classify_log.request.model_spec.signature_name = signature_name
    log.classify_log.request.input.example_list.examples.add().CopyFrom(row_to_example({"fare": 1.0}))
    return log


def test_files_tf_serving_refuses_are_refused_with_its_code(tmp_path, pushed_model):
    """What TF Serving's reader refuses (core.warmup): more than 1000 records, a record
    that is not a PredictionLog, framing cut short."""
    from core.warmup import WarmupError, read_warmup_requests

    good = tf_records(Path(pushed_model) / WARMUP_FILE)
    for raw, code, words in ((_raw_records([good[0]] * (MAX_RECORDS + 1)), "INVALID_ARGUMENT",
                              f"exceeds the maximum ({MAX_RECORDS})"),
                             (request_log.tfrecord_frame(b"\xff\xff"), "INVALID_ARGUMENT",
                              "Failed to parse warmup record 0"),
                             (_raw_records(good)[:-3], "DATA_LOSS", "verify your warmup data is in TFRecord format")):
        (tmp_path / WARMUP_FILE).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / WARMUP_FILE).write_bytes(raw)
        with pytest.raises(WarmupError) as refused:
            read_warmup_requests(str(tmp_path))
        assert refused.value.code == code and words in str(refused.value) and WARMUP_FILE in str(refused.value)
    assert len(read_warmup_requests(str(Path(pushed_model)))) == len(good) == 2 * ROWS_PER_SIGNATURE


def test_a_failing_warmup_fails_the_load_with_tf_servings_code(tmp_path, pushed_model):
    """Loaded versions whose warm-up fails end in state END with TF Serving's code; a
    record with no log is skipped, as TF Serving skips it."""
    good = tf_records(Path(pushed_model) / WARMUP_FILE)
    cases = {
        1: ("DATA_LOSS", "not whole TFRecords", _raw_records(good)[:-3]),
        2: ("UNIMPLEMENTED", "Unsupported log_type for warmup", _raw_records([_session_run_log()])),
        3: ("INVALID_ARGUMENT", "Expected classification signature method_name", _raw_records([_classify_on("")])),
    }
    base = tmp_path / "taxi"
    for version, (_, _, raw) in cases.items():
        copy_with_warmup(pushed_model, base, version, raw=raw)
    copy_with_warmup(pushed_model, base, 7, records=[prediction_log_pb2.PredictionLog()] + good)
    manager = ModelManager("taxi", str(base), VersionPolicy("all"))
    manager.poll_once()
    try:
        states = {s.version: s for s in manager.status("taxi")}
        for version, (code, words, _) in cases.items():
            assert (states[version].state, states[version].error_code) == (END, code), states[version]
            assert words in states[version].error_message and WARMUP_FILE in states[version].error_message
        assert states[7].state == AVAILABLE and manager.available_versions() == [7]
    finally:
        manager.stop(0)


def test_a_monitoring_repush_carries_the_same_warmup_file(tmp_path, first_run, e2e_settings):
    """The monitor's re-push of a blessed model (monitoring.act.repush) stages the warm-up
    file from the rows the model was evaluated on (found through MLMD): the pipeline's file."""
    import dataclasses

    from core.pushdir import read_marker
    from monitoring import act
    from monitoring.reuse import ReuseCandidate

    marker = read_marker(first_run.pushed_path)
    candidate = ReuseCandidate(model_id=marker["model_artifact_id"], model_uri=marker["model_uri"],
                               model_path=str(Path(marker["model_uri"]) / "Format-Serving"), over=[], errors=0,
                               matches=True, score=0.0, why="test")
    settings = dataclasses.replace(e2e_settings, serving_dir=str(tmp_path / "serving"))
    outcome = act.repush(settings, candidate)
    repushed = Path(outcome.pushed_destination)
    assert (repushed / WARMUP_FILE).read_bytes() == (Path(first_run.pushed_path) / WARMUP_FILE).read_bytes()
    assert integrity.verify_version(str(repushed), None, require_manifest=True).ok


# ------------------------------------------------------------------ redaction (issue 16's, in the warm-up rows)
def _eval_rows(e2e_settings, first_run, redacted=()):
    from core import mlmd
    from core.pushdir import read_marker
    from pipeline import warmup

    found = warmup.examples_for_model(mlmd.open_store(e2e_settings),
                                      read_marker(first_run.pushed_path)["model_artifact_id"])
    return warmup.eval_examples(found.uri, ROWS_PER_SIGNATURE, redacted)


def _feature_bytes(rows, name):
    """Each row's ``name`` value as serialized inside the example (the bytes a file would hold)."""
    features = [tf.train.Example.FromString(r).features.feature.get(name) for r in rows]
    return {f.SerializeToString() for f in features if f is not None and getattr(f, f.WhichOneof("kind")).value}


def test_warmup_rows_hold_no_value_of_a_dropped_feature_and_still_warm_the_model(
        tmp_path, e2e_settings, first_run, pushed_model):
    """log_drop_features naming a feature the model does not take (trip_start_timestamp)
    and a model input (company, fare): the file written from the redacted rows holds
    none of their values (the unredacted file does), and the version still loads with
    its warm-up replayed."""
    from core.warmup import write_warmup_requests

    dropped = ["trip_start_timestamp", "company", "fare"]
    plain = _eval_rows(e2e_settings, first_run)
    secret = {name: _feature_bytes(plain, name) for name in dropped}
    original = (Path(pushed_model) / WARMUP_FILE).read_bytes()
    assert all(value in original for values in secret.values() for value in values)     # what leaked before
    base = tmp_path / "taxi"
    target = copy_with_warmup(pushed_model, base, 5)
    written = write_warmup_requests(str(target), _eval_rows(e2e_settings, first_run, dropped))
    assert written == 2 * ROWS_PER_SIGNATURE
    (target / integrity.MANIFEST_NAME).unlink()
    integrity.write_manifest(str(target), None, "5", base.name)
    redacted_file = (target / WARMUP_FILE).read_bytes()
    leaked = [name for name, values in secret.items() for value in values if value in redacted_file]
    assert not leaked, leaked
    for record in tf_records(target / WARMUP_FILE):           # neutral values: what Transform fills in
        request = record.predict_log.request
        if request.model_spec.signature_name == F.DEFAULT_SIGNATURE:
            feature = tf.train.Example.FromString(request.inputs["examples"].string_val[0]).features.feature
            assert list(feature["trip_start_timestamp"].int64_list.value) == [0]
            assert list(feature["company"].bytes_list.value) == [b""]
            assert list(feature["fare"].float_list.value) == [0.0]
        else:
            assert request.inputs["company"].string_val == [b""] and request.inputs["fare"].float_val == [0.0]
    manager = ModelManager("taxi", str(base), VersionPolicy("all"))
    manager.poll_once()
    try:
        (state,) = manager.status("taxi")
        assert state.state == AVAILABLE, state                   # the replay passed on the neutral rows
    finally:
        manager.stop(0)


def test_the_pipeline_passes_the_redacted_features_to_the_pusher_and_the_infra_validator(tmp_path):
    from core import config
    from pipeline import infra_validation, warmup
    from pipeline.pipeline import create_pipeline
    from pipeline.runner import pipeline_arguments

    settings = config.load({"home": str(tmp_path), "log_drop_features": "company,trip_start_timestamp",
                            "retrain_with_feedback": "false", "infra_validation": "true"}, environ={})
    nodes = {node.id: node for node in create_pipeline(**pipeline_arguments(settings, "/data")).components}
    assert nodes["Pusher"].exec_properties[warmup.REDACTED_KEY] == "company,trip_start_timestamp"
    assert nodes[infra_validation.COMPONENT_ID].exec_properties["redacted_features"] == "company,trip_start_timestamp"
    assert infra_validation.InfraCheck.from_settings(settings).redacted == ("company", "trip_start_timestamp")
