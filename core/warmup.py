"""A model version's warm-up requests, in TF Serving's file and format.

TF Serving (``saved_model_warmup_util.cc``) reads
``<version>/assets.extra/tf_serving_warmup_requests`` when it loads a version and,
before the version becomes AVAILABLE, replays each record: a TFRecord file of
``tensorflow_serving.apis.prediction_log_pb2.PredictionLog``, whose ``predict_log``,
``classify_log``, ``regress_log`` and ``multi_inference_log`` requests it runs
(``session_run_log`` fails the load as UNIMPLEMENTED, a record with no log is
skipped), at most ``MAX_RECORDS`` records (more fail the load), a record that does
not parse failing it as INVALID_ARGUMENT, broken framing as DATA_LOSS.

``write_warmup_requests`` writes that file into a version (the Pusher's stager,
``pipeline.warmup``, before the integrity manifest, so the manifest covers it)
from a few serialized tf.Examples, one single-row request per example for each
signature the SavedModel serves requests with (all but ``NOT_WARMED``: TFMA's
preprocessing signature, which reads the label), as the signature's method asks:

* a predict signature with one string input (serialized tf.Examples, as
  ``serving_default``): the examples themselves, as TFX's InfraValidator builds them;
* any other predict signature (one tensor per feature, as ``serving_raw``): each
  input from the example's feature of the same name (its first value; 0 or an
  empty string when the example has none), in the input's type;
* a classify or regress signature: a ClassifyLog / RegressLog whose input is the
  example. Predict signatures get no classify/regress log: TF Serving refuses
  those calls on them, and its load would fail.

``read_warmup_requests`` reads the file back under TF Serving's rules
(``WarmupError``, with TF Serving's code, naming the file). Files and protos only.
"""
import posixpath
from typing import Dict, List, Mapping, Optional

from core import storage
from core.features import TRANSFORM_SIGNATURE
from core.request_log import CLEAN, scan_frames
from core.storage import Location

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"   # TF Serving's path inside a version
MAX_RECORDS = 1000                                        # TF Serving's WarmupConsts::kMaxNumRecords
# warmup_examples at most: one record per row and signature stays under MAX_RECORDS for a
# model of up to 4 signatures (write_warmup_requests keeps the first MAX_RECORDS in any case)
MAX_WARMUP_EXAMPLES = MAX_RECORDS // 4
UNSUPPORTED_LOG = "session_run_log"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SERVE_TAG = "serve"
# TFMA's preprocessing signature (modules/trainer.py): it parses the label, which requests do not carry
NOT_WARMED = (TRANSFORM_SIGNATURE,)
FILE_FIX = "push the model again (the Pusher writes the file) or remove the file to serve it without warm-up"
REQUEST_FIX = ("the version is not served: fix the model (its signature fails on this request) or the "
               "warm-up file, or remove the file to serve it without warm-up")


class WarmupError(ValueError):
    """A warm-up file TF Serving would refuse; ``code`` is TF Serving's status code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def settings_problem(values: Mapping) -> Optional[str]:
    """What is wrong with the warm-up and infra validation settings (None: nothing)."""
    examples = values.get("warmup_examples", 0)
    if not 0 <= examples <= MAX_WARMUP_EXAMPLES:
        return (f"setting 'warmup_examples' must be between 0 and {MAX_WARMUP_EXAMPLES} "
                f"(rows per signature in the warm-up file; 0: none), got {examples}")
    if not values.get("infra_validation_timeout_seconds", 1.0) > 0:
        return "setting 'infra_validation_timeout_seconds' must be > 0"
    return None


def warmup_path(version_dir: Location) -> Location:
    return storage.join(version_dir, WARMUP_FILE)


def model_signatures(version_dir: Location) -> Dict:
    """The SignatureDefs (name -> SignatureDef) the SavedModel's ``serve`` graph serves
    requests with: not the internal ones (``__saved_model_init_op``), not ``NOT_WARMED``; OSError when it cannot be
    read, protobuf's DecodeError when it is not a SavedModel."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString(
        b"".join(storage.read_chunks(storage.join(version_dir, "saved_model.pb"))))
    graphs = [g for g in saved.meta_graphs if SERVE_TAG in g.meta_info_def.tags] or list(saved.meta_graphs[:1])
    if not graphs:
        return {}
    return {name: sig for name, sig in sorted(graphs[0].signature_def.items())
            if not name.startswith("__") and name not in NOT_WARMED}


def warmup_logs(signatures: Mapping, serialized_examples: List[bytes], model_name: str = "") -> List:
    """The PredictionLog records of ``serialized_examples`` for ``signatures`` (see the
    module docstring); a signature whose inputs cannot be built from examples gets none."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2 as P

    examples = [tf.train.Example.FromString(e) for e in serialized_examples]
    logs = []
    for name, sig in signatures.items():
        for serialized, example in zip(serialized_examples, examples):
            if sig.method_name in (CLASSIFY_METHOD, REGRESS_METHOD):
                kind = "classify_log" if sig.method_name == CLASSIFY_METHOD else "regress_log"
                log = P.PredictionLog()
                request = getattr(log, kind).request
                request.model_spec.signature_name = name
                request.model_spec.name = model_name
                request.input.example_list.examples.add().CopyFrom(example)
                logs.append(log)
                continue
            request = _predict_request(name, sig, serialized, example)
            if request is None:
                break
            request.model_spec.name = model_name
            logs.append(P.PredictionLog(predict_log=P.PredictLog(request=request)))
    return logs


def _predict_request(name: str, sig, serialized: bytes, example):
    """A one-row PredictRequest of ``sig``; None when an input has no one-row shape."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = name
    features = example.features.feature
    takes_examples = (len(sig.inputs) == 1 and next(iter(sig.inputs.values())).dtype == types_pb2.DT_STRING
                      and next(iter(sig.inputs)) not in features)
    for alias, info in sig.inputs.items():
        shape = _one_row_shape(info.tensor_shape)
        if shape is None:
            return None
        value = serialized if takes_examples else _feature_value(features.get(alias), info.dtype)
        request.inputs[alias].CopyFrom(tf.make_tensor_proto([value], dtype=info.dtype, shape=shape))
    return request


def _one_row_shape(shape) -> Optional[List[int]]:
    """[1] or [1, 1, ...]: a one-row tensor of the input's shape; None if there is none."""
    if shape.unknown_rank or not shape.dim:
        return [1] if shape.unknown_rank else None
    sizes = [d.size for d in shape.dim]
    return [1] * len(sizes) if all(size in (1, -1) for size in sizes) else None


def _feature_value(feature, dtype: int):
    """A tf.Example feature's first value in ``dtype`` (0 / empty string when it has none)."""
    from tensorflow.core.framework import types_pb2 as T

    kind = feature.WhichOneof("kind") if feature is not None else None
    values = list(getattr(feature, kind).value) if kind else []
    if dtype == T.DT_STRING:
        value = values[0] if values else b""
        return value if isinstance(value, bytes) else str(value).encode()
    if dtype in (T.DT_FLOAT, T.DT_DOUBLE, T.DT_HALF, T.DT_BFLOAT16):
        return float(values[0]) if values and not isinstance(values[0], bytes) else 0.0
    if dtype == T.DT_BOOL:
        return bool(values[0]) if values else False
    return int(values[0]) if values and not isinstance(values[0], bytes) else 0


def write_warmup_requests(version_dir: Location, serialized_examples: List[bytes], model_name: str = "") -> int:
    """Write ``<version_dir>/WARMUP_FILE`` for the SavedModel in ``version_dir`` from
    ``serialized_examples``; the number of records (none written for no examples)."""
    import tensorflow as tf

    logs = warmup_logs(model_signatures(version_dir), serialized_examples, model_name)[:MAX_RECORDS]
    if not logs:
        return 0
    path = warmup_path(version_dir)
    storage.makedirs(storage.join(version_dir, posixpath.dirname(WARMUP_FILE)))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString(deterministic=True))
    return len(logs)


def read_warmup_requests(version_dir: Location) -> List:
    """The PredictionLog records of ``version_dir``'s warm-up file ([] when it has none);
    ``WarmupError`` where TF Serving's load would fail on the file."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(version_dir)
    if not storage.exists(path):
        return []
    frames = scan_frames(b"".join(storage.read_chunks(path)))
    if frames.tail != CLEAN:
        raise WarmupError("DATA_LOSS", f"the warm-up file {path} is not whole TFRecords ({frames.detail}). "
                                       f"Please verify your warmup data is in TFRecord format; {FILE_FIX}")
    if len(frames.records) > MAX_RECORDS:
        raise WarmupError("INVALID_ARGUMENT", f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) "
                                              f"at {path}: {len(frames.records)} records; {FILE_FIX}")
    logs = []
    for number, record in enumerate(frames.records):
        try:
            logs.append(prediction_log_pb2.PredictionLog.FromString(record))
        except Exception:   # noqa: BLE001 - protobuf's DecodeError, or a message it cannot hold
            raise WarmupError("INVALID_ARGUMENT", f"Failed to parse warmup record {number} from {path} "
                                                  f"(not a PredictionLog); {FILE_FIX}") from None
    return logs
