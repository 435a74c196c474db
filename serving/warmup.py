"""Replaying a version's warm-up requests before it becomes AVAILABLE, as TF Serving
does (``saved_model_warmup.cc``): ``ModelManager._load`` calls ``replay`` once the
version is loaded, so the first real request does not pay for what the first call
of each signature costs.

The file is TF Serving's (``core.warmup``). Each record runs once on the loaded
version with TF Serving's warm-up semantics (its RunPredict, RunClassify and
RunRegress on the bundle): a predict request on its signature; a classify or
regress request only on a signature of that method (TF Serving refuses them on a
predict signature, which ``tfxops serve`` answers for requests: a file this server
replays is one TF Serving replays). The model call is the one requests make
(``ModelVersion.run``, with the outputs a request without an output filter
fetches, so its callable is the one they use). Replayed calls do not pass through
``serving.api``: they are neither counted in the request metrics nor written to the
request log.

A failing record fails the load, as in TF Serving: the version is closed and
``replay`` raises the TensorFlow error of TF Serving's code, which the manager
reports as the version's state END with that code and a message naming the record,
its signature, the file and the fix; the versions already served keep serving. A
version without the file loads as before.
"""
import logging
import time
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

from core.examples import input_examples
from core.features import DEFAULT_SIGNATURE
from core.warmup import (CLASSIFY_METHOD, REGRESS_METHOD, REQUEST_FIX, UNSUPPORTED_LOG, WarmupError,
                         read_warmup_requests, warmup_path)
from serving.errors import ServingError, from_tf_error, invalid
from serving.tensors import protos_to_arrays

log = logging.getLogger("tfxops.serving")
# TF Serving's RunClassify / RunRegress: the method a signature must have, its name in
# TF Serving's error message, the outputs fetched
METHODS = {"classify_log": (CLASSIFY_METHOD, "classification", ("classes", "scores")),
           "regress_log": (REGRESS_METHOD, "regression", ("outputs",))}


@dataclass(frozen=True)
class WarmupResult:
    """What a replay did: records replayed (0: the version has no warm-up file), how long it took."""
    requests: int
    seconds: float
    path: str


def replay(loaded, version_dir: str) -> WarmupResult:
    """Replay ``version_dir``'s warm-up file on ``loaded`` (a ``serving.models.ModelVersion``).
    On a failure ``loaded`` is closed and a ``tf.errors.OpError`` of TF Serving's code raised."""
    started = time.perf_counter()
    try:
        records = read_warmup_requests(version_dir)
        for number, record in enumerate(records):
            _replay_record(loaded, record, f"warm-up record {number} of {len(records)}")
    except WarmupError as exc:
        _fail(loaded, exc.code, str(exc))
    except ServingError as err:
        _fail(loaded, err.code, f"{err.message} ({warmup_path(version_dir)}); {REQUEST_FIX}")
    result = WarmupResult(len(records), time.perf_counter() - started, str(warmup_path(version_dir)))
    if records:
        log.info("model %s version %d: %d warm-up requests replayed in %.3f s (%s)", loaded.name,
                 loaded.version, result.requests, result.seconds, result.path)
    return result


def _replay_record(loaded, record, which: str) -> None:
    """One PredictionLog as TF Serving replays it; a record with no log is skipped."""
    kind = record.WhichOneof("log_type")
    if kind is None:
        return
    if kind == UNSUPPORTED_LOG:
        raise ServingError("UNIMPLEMENTED", f"{which}: Unsupported log_type for warmup: {kind}")
    if kind == "multi_inference_log":
        raise ServingError("UNIMPLEMENTED", f"{which}: MultiInference is not supported by tfxops serve")
    request = getattr(record, kind).request
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    sig = loaded.signatures.get(name)
    try:
        if sig is None:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
        if kind == "predict_log":
            feeds = protos_to_arrays(request.inputs)
            _run(loaded, sig, feeds, _predict_outputs(sig, request.output_filter))
            return
        method, noun, wanted = METHODS[kind]
        if sig.method_name != method:
            raise invalid(f"Expected {noun} signature method_name to be {method}. Was: {sig.method_name}")
        examples = input_examples(request.input)
        if not examples or "inputs" not in sig.inputs:
            raise invalid("Input is empty." if not examples else f"Expected one input Tensor named inputs "
                                                                 f"in signature {name}")
        _run(loaded, sig, {"inputs": np.array(examples, dtype=object)},
             tuple(alias for alias in wanted if alias in sig.outputs))
    except ServingError as err:
        raise ServingError(err.code, f"{which} ({kind}, signature '{name}') failed: {err.message}") from None


def _predict_outputs(sig, output_filter: Sequence[str]) -> Tuple[str, ...]:
    """The outputs a predict request fetches: its filter, else all in alias order (as requests do)."""
    unknown = [alias for alias in output_filter if alias not in sig.outputs]
    if unknown:
        raise invalid(f"output tensor alias not found in signature: {unknown[0]}")
    return tuple(dict.fromkeys(output_filter)) or tuple(sorted(sig.outputs))


def _run(loaded, sig, feeds: Dict[str, np.ndarray], outputs: Tuple[str, ...]) -> None:
    """The model call; TensorFlow's error as TF Serving's code and message."""
    import tensorflow as tf

    missing, extra = set(sig.inputs) - set(feeds), set(feeds) - set(sig.inputs)
    if missing or extra or not outputs:
        raise invalid(f"the request's inputs {sorted(feeds)} do not match the signature's {sorted(sig.inputs)}"
                      if missing or extra else f"the signature {sig.name} has none of the outputs replayed")
    try:
        loaded.run(sig, feeds, outputs)
    except tf.errors.OpError as exc:
        raise from_tf_error(exc) from None
    except (ValueError, TypeError, UnicodeDecodeError):
        raise invalid(f"the inputs do not have the types of signature {sig.name}") from None


def _fail(loaded, code: str, message: str):
    """Close ``loaded`` and raise the TensorFlow error of ``code`` the load reports."""
    import tensorflow as tf
    from tensorflow.core.protobuf import error_codes_pb2

    loaded.close()
    log.error("model %s version %d: warm-up failed, the version is not served: %s", loaded.name,
              loaded.version, message)
    raise tf.errors.OpError(None, None, message, error_codes_pb2.Code.Value(code))
