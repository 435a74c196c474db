"""The request log's on-disk format (``core.request_log``) pinned to TensorFlow's:
our framing is ``tf.io.TFRecordWriter``'s and ``tf.data.TFRecordDataset`` reads it,
our reader reads TensorFlow's files, and every record built for an answered or a
rejected call is a ``PredictionLog`` with its model spec, request id and time. No
model needed."""
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, predict_pb2, prediction_log_pb2,
                                     regression_pb2)

from core import request_log
from core.examples import row_to_example

ARRIVED = 1_764_000_000.7
EXAMPLES = [row_to_example({"trip_miles": 1.5, "payment_type": "Cash"}, ["trip_miles", "payment_type"]),
            row_to_example({"trip_miles": 7.0, "payment_type": ""}, ["trip_miles", "payment_type"])]


def _predict():
    request = request_log.examples_request([e.SerializeToString() for e in EXAMPLES])
    request.model_spec.name = "taxi"
    response = predict_pb2.PredictResponse()
    response.model_spec.name, response.model_spec.signature_name = "taxi", "serving_default"
    response.model_spec.version.value = 3
    out = response.outputs["probabilities"]
    out.dtype = types_pb2.DT_FLOAT
    out.tensor_shape.dim.add().size = 2
    out.float_val.extend([0.25, 0.75])
    return request, response


def _classify():
    request = classification_pb2.ClassificationRequest()
    request.input.example_list.examples.extend(EXAMPLES)
    response = classification_pb2.ClassificationResponse()
    for score in (0.25, 0.75):
        cls = response.result.classifications.add()
        for label, value in (("0", 1 - score), ("1", score)):
            c = cls.classes.add()
            c.label, c.score = label, value
    return request, response


def _regress():
    request = regression_pb2.RegressionRequest()
    request.input.example_list.examples.extend(EXAMPLES)
    response = regression_pb2.RegressionResponse()
    for value in (0.25, 0.75):
        response.result.regressions.add().value = value
    return request, response


def _records():
    """kind -> a serialized record of each form."""
    out = {kind: request_log.answered_record(kind, "taxi", 3, "serving_default", f"id-{kind}",
                                             ARRIVED, *build())
           for kind, build in (("predict", _predict), ("classify", _classify), ("regress", _regress))}
    out["rejected"] = request_log.rejected_record(
        "taxi", 3, "serving_raw", "id-rejected", ARRIVED, "INVALID_ARGUMENT", "no such feature",
        request_log.examples_request([EXAMPLES[0].SerializeToString()]))
    return out


def test_framing_is_byte_identical_to_tensorflows_writer(tmp_path):
    records = [b"", b"x", bytes(range(256)) * 40]
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    ours = b"".join(request_log.tfrecord_frame(r) for r in records)
    assert ours == (tmp_path / "tf.tfrecord").read_bytes()


def test_our_records_are_read_by_tensorflow_as_prediction_logs(tmp_path):
    records = _records()
    path = tmp_path / "requests-ours.tfrecord"
    path.write_bytes(b"".join(request_log.tfrecord_frame(r) for r in records.values()))
    read = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert read == list(records.values())
    logs = [prediction_log_pb2.PredictionLog.FromString(raw) for raw in read]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log", "classify_log",
                                                            "regress_log", "predict_log"]


def test_tensorflows_files_are_read_by_our_reader(tmp_path):
    records = _records()
    path = tmp_path / "requests-tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records.values():
            writer.write(record)
    assert request_log.closed_log_files(tmp_path) == [path]
    assert list(request_log.read_records([path])) == list(records.values())
    logged = {r.request_id: r for r in request_log.read_request_log(tmp_path)}
    assert set(logged) == {f"id-{kind}" for kind in records}
    for kind in ("predict", "classify", "regress"):
        assert logged[f"id-{kind}"].examples == EXAMPLES and logged[f"id-{kind}"].error is None
    assert logged["id-predict"].predictions == [0.25, 0.75]
    assert logged["id-classify"].predictions == [{"0": 0.75, "1": 0.25}, {"0": 0.25, "1": 0.75}]
    assert logged["id-regress"].predictions == [0.25, 0.75]
    rejected = logged["id-rejected"]
    assert rejected.error == ("INVALID_ARGUMENT", "no such feature")
    assert rejected.examples == EXAMPLES[:1] and rejected.predictions == []


def test_each_built_record_is_a_prediction_log_with_its_metadata():
    for kind, raw in _records().items():
        record = prediction_log_pb2.PredictionLog.FromString(raw)
        meta = record.log_metadata
        assert (meta.model_spec.name, meta.model_spec.version.value) == ("taxi", 3)
        assert meta.model_spec.signature_name == ("serving_raw" if kind == "rejected" else "serving_default")
        assert meta.request_origin == f"id-{kind}"          # the request id, as logged before
        assert meta.timestamp_secs == int(ARRIVED) and list(meta.saved_model_tags) == ["serve"]
        built = getattr(record, f"{'predict' if kind == 'rejected' else kind}_log")
        assert built.request.ByteSize() and built.response.ByteSize()
        if kind == "rejected":
            error = built.response.outputs[request_log.ERROR_OUTPUT]
            assert error.dtype == types_pb2.DT_STRING and [d.size for d in error.tensor_shape.dim] == [2]
            assert list(error.string_val) == [b"INVALID_ARGUMENT", b"no such feature"]
            assert request_log.rejection(record) == ("INVALID_ARGUMENT", "no such feature")
            assert built.request.model_spec.name == "taxi" and "examples" in built.request.inputs
        else:
            assert request_log.rejection(record) is None


def test_a_record_built_from_bytes_equals_one_built_from_messages():
    request, response = _predict()
    from_messages = request_log.answered_record("predict", "taxi", 3, "serving_default", "id", ARRIVED,
                                                request, response)
    from_bytes = request_log.answered_record("predict", "taxi", 3, "serving_default", "id", ARRIVED,
                                             request.SerializeToString(), response.SerializeToString())
    assert from_bytes == from_messages
    expected = prediction_log_pb2.PredictionLog()
    meta = expected.log_metadata
    meta.model_spec.name, meta.model_spec.signature_name = "taxi", "serving_default"
    meta.model_spec.version.value = 3
    meta.timestamp_secs, meta.request_origin = int(ARRIVED), "id"
    meta.saved_model_tags.append("serve")
    expected.predict_log.request.CopyFrom(request)
    expected.predict_log.response.CopyFrom(response)
    assert prediction_log_pb2.PredictionLog.FromString(from_bytes) == expected


def test_request_ids_are_32_hex_digits_and_differ():
    ids = {request_log.new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_the_string_type_constant_is_tensorflows():
    assert request_log.DT_STRING == types_pb2.DT_STRING
