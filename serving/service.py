"""Running a model version: check a request's tensors against the signature, run
it (batched or not), and classify/regress with TF Serving's semantics.

``serving/api.py`` (the per-API logic REST and gRPC share) resolves the version and
signature a call names (``ModelRunner.use_version``, ``ModelRunner.signature``) and
calls ``predict`` or ``classify_or_regress`` here.

Classify and Regress over predict signatures (our model's case) — TF Serving runs
them only on signatures whose method is ``tensorflow/serving/classify`` /
``regress``; so do we, with TF Serving's semantics (input ``inputs``: serialized
tf.Examples; outputs ``classes``/``scores``, resp. ``outputs``). In addition, a
*predict* signature with one string input (serialized tf.Examples) and one float
output of shape [batch] or [batch, 1] — a binary classifier's probability, like our
``serving_default`` — is served as:

* classify: two classes per example, label ``"0"`` with score 1-p and ``"1"``
  with score p;
* regress: the value p.

Any other signature is refused with TF Serving's INVALID_ARGUMENT message.
"""
import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from tensorflow.core.framework import types_pb2

from serving.batching import Batcher, ModelFuture, batch_key
from serving.errors import ServingError, from_tf_error, internal_error, invalid
from core.features import DEFAULT_SIGNATURE
from serving.model_set import ModelSet
from core.warmup import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD
from serving.models import ModelManager, ModelVersion, Signature, servable_not_found
from serving.tensors import dtype_name, shape_string, tensor_budget

CLASSES = np.array([b"0", b"1"], dtype=object)


class CheckedRun(NamedTuple):
    """What checking a request against its signature decided."""
    outputs: Tuple[str, ...]       # the output aliases to fetch
    batch_key: Optional[tuple]     # the batch queue to join (None: run unbatched)


class ModelRunner:
    """Runs the versions of the models ``models`` serves, batched by ``batcher`` (None:
    unbatched) or on ``executor``."""

    def __init__(self, models: ModelSet, batcher: Optional[Batcher] = None,
                 executor: Optional[ThreadPoolExecutor] = None,
                 max_request_bytes: int = 10 * 1024 * 1024):
        self.models = models
        self.batcher = batcher
        self.max_tensor_bytes = tensor_budget(max_request_bytes)
        self.executor = executor or ThreadPoolExecutor(8, thread_name_prefix="model")
        import tensorflow as tf
        self._op_error = tf.errors.OpError

    # ------------------------------------------------ lookup
    def use_version(self, name: str, version: Optional[int],
                    label: Optional[str]) -> "VersionInUse":
        """``with runner.use_version(...) as loaded``: the requested version, kept
        loaded for the duration of the block (raises ServingError when there is none)."""
        manager = self.models.by_name.get(name)
        if manager is None:
            raise servable_not_found(name, version)
        return VersionInUse(manager, manager.acquire(name, version, label))

    @staticmethod
    def signature(loaded: ModelVersion, name: str, rest: bool = False) -> Signature:
        """The signature ``name`` ("": the default) of ``loaded``; when there is none,
        TF Serving's error: its REST API's words when ``rest``, else its gRPC API's."""
        key = name or DEFAULT_SIGNATURE
        sig = loaded.signatures.get(key)
        if sig is None:
            if rest:
                raise invalid(f'Serving signature name: "{key}" not found in signature def')
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
        return sig

    # ------------------------------------------------ checks
    @staticmethod
    def check_inputs(sig: Signature, feeds: Dict[str, np.ndarray]) -> None:
        sent, wanted = set(feeds), set(sig.inputs)
        if sent != wanted:
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
        rows = None
        for i, alias in enumerate(sorted(feeds)):
            array, spec = feeds[alias], sig.inputs[alias]
            if _array_dtype_name(array) != dtype_name(spec.dtype):
                raise invalid(f"Expects arg[{i}] ({alias}) to be {dtype_name(spec.dtype)} but "
                              f"{_array_dtype_name(array)} is provided")
            if spec.shape is not None:
                if array.ndim != len(spec.shape) or any(
                        d != -1 and d != s for d, s in zip(spec.shape, array.shape)):
                    raise invalid(f"input {alias} has shape {shape_string(list(array.shape))}, "
                                  f"but the signature {sig.name} expects "
                                  f"{shape_string(spec.shape)} (-1: any size)")
            if sig.batchable:
                if rows is None:
                    rows = array.shape[0]
                elif array.shape[0] != rows:
                    raise invalid(f"inputs have different batch sizes: {alias} has "
                                  f"{array.shape[0]} rows, others {rows}")
        if rows == 0:
            raise invalid("input is empty: the batch has no rows")

    @staticmethod
    def check_outputs(sig: Signature, output_filter: Sequence[str]) -> Tuple[str, ...]:
        if not output_filter:
            return tuple(sorted(sig.outputs))
        for alias in output_filter:
            if alias not in sig.outputs:
                raise invalid(f"output tensor alias not found in signature: {alias} Outputs "
                              f"expected to be in the set {{{','.join(sorted(sig.outputs))}}}.")
        return tuple(dict.fromkeys(output_filter))

    # ------------------------------------------------ running
    async def run(self, loaded: ModelVersion, sig: Signature, feeds: Dict[str, np.ndarray],
                  outputs: Tuple[str, ...], key: Optional[tuple] = None) -> Dict[str, np.ndarray]:
        """Run checked ``feeds``; ``key``: the batch queue (None: not batchable)."""
        def call(inputs):
            return loaded.run(sig, inputs, outputs)

        try:
            if self.batcher is not None and key is not None:
                rows = next(iter(feeds.values())).shape[0]
                return await self.batcher.submit(key, call, feeds, rows)
            return await _in_executor(self.executor, call, feeds)
        except self._op_error as exc:
            raise from_tf_error(exc) from None
        except UnicodeDecodeError:
            # TensorFlow failed on the input and its error text is not UTF-8 (it quotes the bytes).
            raise invalid(f"the model could not process the input of signature {sig.name} "
                          f"(for example a string that is not a serialized tf.Example)") from None
        except ServingError:
            raise
        except Exception:   # noqa: BLE001 - the caller gets INTERNAL, the log the traceback
            raise internal_error(f"running signature {sig.name} of version {loaded.version}") \
                from None

    def checked_run(self, loaded: ModelVersion, sig: Signature, feeds: Dict[str, np.ndarray],
                    output_filter: Sequence[str] = ()) -> CheckedRun:
        """Check ``feeds`` and ``output_filter`` against ``sig``. The checks depend
        only on the inputs' names, types and shapes beyond the batch dimension, so
        their outcome is kept per version and signature (``loaded.checked_runs``): a
        repeated request shape costs one dict lookup and the batch-size check."""
        struct = tuple((alias, a.dtype.str, a.ndim, a.shape[1:] if sig.batchable else a.shape)
                       for alias, a in sorted(feeds.items()))
        cache_key = (sig.name, struct, tuple(output_filter))
        checked = loaded.checked_runs.get(cache_key)
        if checked is None:
            self.check_inputs(sig, feeds)
            outputs = self.check_outputs(sig, output_filter)
            checked = CheckedRun(outputs, self._batch_key(loaded, sig, feeds, outputs))
            if len(loaded.checked_runs) >= 256:   # request shapes come from clients: bounded
                loaded.checked_runs.clear()
            loaded.checked_runs[cache_key] = checked
        elif sig.batchable:
            rows = {a.shape[0] for a in feeds.values()}
            if len(rows) != 1 or 0 in rows:
                self.check_inputs(sig, feeds)   # raises TF Serving's message
        return checked

    def _batch_key(self, loaded: ModelVersion, sig: Signature, feeds, outputs) -> Optional[tuple]:
        if self.batcher is None or not sig.batchable:
            return None
        return batch_key(loaded, sig.name, feeds, outputs)

    async def predict(self, loaded: ModelVersion, sig: Signature, feeds: Dict[str, np.ndarray],
                      output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        outputs, key = self.checked_run(loaded, sig, feeds, output_filter)
        return await self.run(loaded, sig, feeds, outputs, key)

    async def classify_or_regress(self, loaded: ModelVersion, sig: Signature,
                                  serialized: List[bytes], kind: str):
        """'classify' -> (labels [n,k] object, scores [n,k] float) ; 'regress' -> values [n]."""
        if not serialized:
            raise invalid("Input is empty.")
        method = CLASSIFY_METHOD if kind == "classify" else REGRESS_METHOD
        examples = np.empty(len(serialized), dtype=object)
        examples[:] = serialized
        if sig.method_name == method:
            if "inputs" not in sig.inputs or sig.inputs["inputs"].dtype != types_pb2.DT_STRING:
                raise invalid(f"Expected one input Tensor named inputs of type string in "
                              f"signature {sig.name}")
            if kind == "regress":
                feeds = {"inputs": examples}
                out = await self.run(loaded, sig, feeds, ("outputs",),
                                     self._batch_key(loaded, sig, feeds, ("outputs",)))
                return out["outputs"].reshape(len(serialized), -1)[:, 0].astype(np.float32)
            names = tuple(n for n in ("classes", "scores") if n in sig.outputs)
            if not names:
                raise invalid(f"Expected classification signature outputs classes or scores "
                              f"in signature {sig.name}")
            feeds = {"inputs": examples}
            out = await self.run(loaded, sig, feeds, names,
                                 self._batch_key(loaded, sig, feeds, names))
            scores = out.get("scores")
            classes = out.get("classes")
            n = len(serialized)
            if scores is not None:
                scores = scores.reshape(n, -1)
            if classes is not None:
                classes = classes.reshape(n, -1)
            return classes, scores
        if sig.method_name == PREDICT_METHOD and _is_probability_signature(sig):
            (in_alias,) = sig.inputs
            (out_alias,) = sig.outputs
            feeds = {in_alias: examples}
            out = await self.run(loaded, sig, feeds, (out_alias,),
                                 self._batch_key(loaded, sig, feeds, (out_alias,)))
            p = out[out_alias].reshape(len(serialized)).astype(np.float32)
            if kind == "regress":
                return p
            classes = np.tile(CLASSES, (len(serialized), 1))
            return classes, np.stack([1.0 - p, p], axis=1).astype(np.float32)
        raise invalid(f"Expected {'classification' if kind == 'classify' else 'regression'} "
                      f"signature method_name to be {method}. Was: {sig.method_name}")



class VersionInUse:
    """Releases a version acquired from the manager (a class, not a contextlib
    generator: this runs on every request)."""
    __slots__ = ("manager", "loaded")

    def __init__(self, manager: ModelManager, loaded: ModelVersion):
        self.manager, self.loaded = manager, loaded

    def __enter__(self) -> ModelVersion:
        return self.loaded

    def __exit__(self, *exc) -> None:
        self.manager.release(self.loaded)


def _is_probability_signature(sig: Signature) -> bool:
    if len(sig.inputs) != 1 or len(sig.outputs) != 1:
        return False
    (spec_in,) = sig.inputs.values()
    (spec_out,) = sig.outputs.values()
    return (spec_in.dtype == types_pb2.DT_STRING and spec_out.dtype in (
        types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE) and spec_out.shape is not None
        and (len(spec_out.shape) == 1 or (len(spec_out.shape) == 2 and spec_out.shape[1] == 1)))


def _array_dtype_name(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "string"
    return {"f4": "float", "f8": "double", "i8": "int64", "i4": "int32", "i2": "int16",
            "i1": "int8", "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64",
            "b1": "bool"}.get(array.dtype.str[1:], str(array.dtype))


def _in_executor(executor: ThreadPoolExecutor, fn, arg) -> ModelFuture:
    """``fn(arg)`` on ``executor``, as a ModelFuture: a caller that is cancelled
    meanwhile sees it once ``fn`` has returned."""
    loop = asyncio.get_running_loop()
    future = ModelFuture(loop=loop)

    def done(work):
        try:
            loop.call_soon_threadsafe(_settle, future, work)
        except RuntimeError:   # the loop is closed: nobody is waiting any more
            pass
    executor.submit(fn, arg).add_done_callback(done)
    return future


def _settle(future: ModelFuture, done) -> None:
    exc = done.exception()
    if exc is None:
        future.set_result(done.result())
    else:
        future.set_exception(exc)
