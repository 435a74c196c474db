"""TF Serving's REST API (on tornado, sharing the asyncio loop with gRPC):

    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]/metadata   signatures
    POST /v1/models/{name}[/versions/{v} | /labels/{l}]:predict | :classify | :regress
    GET  /monitoring/prometheus/metrics

Bodies and errors as TF Serving's ``json_tensor.cc`` / ``http_rest_api_handler``
define them: ``instances`` (row) or ``inputs`` (columnar), ``{"b64": ...}`` strings,
answers ``predictions`` / ``outputs`` / ``results``, failures ``{"error": message}``
with the HTTP status of the error code. Bodies larger than ``max_request_bytes``
are refused with 413 before they are read. ``X-Request-Id`` is accepted from the
client (or made up) and always returned. With ``serving.access`` checks (tokens,
rate limit), a refused call gets 401 or 429 ``{"error": ...}``; the client of each
call (token name, else address) is in its ``Call``.

What the calls do is ``serving/api.py``'s, shared with the gRPC API; this module
reads and writes REST's JSON and HTTP statuses.
"""
import base64
import functools
import json
import re
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import tornado.log
import tornado.web
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, input_pb2, predict_pb2,
                                     regression_pb2)

try:
    import orjson

    def dumps(value) -> bytes:
        return orjson.dumps(value)

    def _loads(body: bytes):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return json.loads(body)      # NaN / Infinity, which TF Serving accepts
except ImportError:   # pragma: no cover
    def dumps(value) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def _loads(body: bytes):
        return json.loads(body)

from core import request_log
from core.examples import json_body_rows, json_rows_to_examples
from core.request_log import new_request_id
from serving import access as A, admission
from serving.api import (REST, Call, ServingApi, fill_model_spec, result_json, result_response,
                         serialized_examples)
from serving.errors import ServingError, internal_error, invalid
from serving.tensors import json_excerpt, json_to_ndarray, ndarray_to_json, ndarray_to_proto

REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_HEAD_BYTES = 1 << 20   # request line + headers; tornado's default, 64 KiB,
                                   # closes the connection without an answer past it
_MODEL = r"/v1/models/([^/:]+)(?:/versions/(-?\d+)|/labels/([^/:]+))?"


def parse_json(body: bytes) -> dict:
    if not body or not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = _loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"JSON Parse error: {exc}") from None
    except RecursionError:
        raise invalid("JSON Parse error: the document nests arrays or objects too deeply") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {json_excerpt(doc)} Is not object")
    return doc


def _signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {json_excerpt(doc)} not formatted correctly. 'signature_name' key "
                      f"must be a string value.")
    return name


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_object(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


_SCALAR_TYPES = {
    types_pb2.DT_FLOAT: (np.float32, (int, float)), types_pb2.DT_DOUBLE: (np.float64, (int, float)),
    types_pb2.DT_INT64: (np.int64, (int,)), types_pb2.DT_INT32: (np.int32, (int,)),
}


def _column(values: List, dtype: int) -> Optional[np.ndarray]:
    """Fast path: a column of JSON scalars as a 1-D array (None: take the general path)."""
    spec = _SCALAR_TYPES.get(dtype)
    if spec is not None:
        np_dtype, ok = spec
        for v in values:
            if isinstance(v, bool) or not isinstance(v, ok):
                return None
        try:
            return np.asarray(values, dtype=np_dtype)
        except OverflowError:
            return None
    if dtype == types_pb2.DT_STRING:
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            if isinstance(v, str):
                out[i] = v.encode("utf-8")
            elif _is_b64(v):
                try:
                    out[i] = base64.b64decode(v["b64"], validate=True)
                except (ValueError, TypeError):
                    return None
            else:
                return None
        return out
    return None


def _stack(values: List, alias: str, dtype: int, objects: bool) -> np.ndarray:
    """The general path, with TF Serving's per-element error messages."""
    arrays, first = [], None
    for i, value in enumerate(values):
        try:
            array = json_to_ndarray(value, dtype)
        except ServingError as err:
            where = f" key: {alias}" if objects else ""
            raise invalid(f"Failed to process element: {i}{where} of 'instances' list. "
                          f"Error: {err.code}: {err.message}") from None
        if first is None:
            first = array.shape
        elif array.shape != first:
            raise invalid(f"Expecting shape {list(first)} but got: {list(array.shape)}".replace(
                " ", ""))
        arrays.append(array)
    return np.stack(arrays) if arrays else np.empty((0,))


def instances_to_feeds(doc: dict, instances, sig) -> Dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid(f"JSON Value: {json_excerpt(doc)} Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid(f"JSON Value: {json_excerpt(doc)} No values in 'instances' array")
    inputs = sig.inputs
    objects = _is_object(instances[0])
    if not isinstance(instances[0], dict) and len(inputs) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple "
                      "input tensors required as per tensorinfo_map")
    if not objects:
        if len(inputs) > 1:
            raise invalid("instances is a plain list, but expecting list of objects as multiple "
                          "input tensors required as per tensorinfo_map")
        (alias, spec), = inputs.items()
        for i, elem in enumerate(instances):
            if _is_object(elem):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
        column = _column(instances, spec.dtype)
        return {alias: column if column is not None else _stack(instances, alias, spec.dtype, False)}
    names = set(inputs)
    for i, elem in enumerate(instances):
        if not _is_object(elem):
            raise invalid(f"Expecting object but got list at item {i} of input list")
        if elem.keys() != names:
            for key in elem:
                if key not in inputs:
                    raise invalid(f"Failed to process element: {i} key: {key} of 'instances' "
                                  f"list. Error: INVALID_ARGUMENT: JSON object: does not have "
                                  f"named input: {key}")
            raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                          f"{json_excerpt(elem)} keys must be equal to: {','.join(sorted(names))}")
    feeds = {}
    for alias, spec in inputs.items():
        values = [elem[alias] for elem in instances]
        column = _column(values, spec.dtype)
        feeds[alias] = column if column is not None else _stack(values, alias, spec.dtype, True)
    return feeds


def inputs_to_feeds(value, sig) -> Dict[str, np.ndarray]:
    inputs = sig.inputs
    if not isinstance(value, dict) or _is_b64(value):
        if len(inputs) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple "
                          "input tensors required as per tensorinfo_map")
        (alias, spec), = inputs.items()
        return {alias: json_to_ndarray(value, spec.dtype)}
    feeds = {}
    for alias, spec in inputs.items():
        if alias not in value:
            raise invalid(f"Missing named input: {alias} in 'inputs' object.")
        feeds[alias] = json_to_ndarray(value[alias], spec.dtype)
    return feeds


def predict_feeds(doc: dict, sig):
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(f"JSON Value: {json_excerpt(doc)} Not formatted correctly expecting only one of "
                      f"'inputs' or 'instances' keys to exist ")
    if has_instances:
        return "row", instances_to_feeds(doc, doc["instances"], sig)
    if has_inputs:
        return "columnar", inputs_to_feeds(doc["inputs"], sig)
    raise invalid("Missing 'inputs' or 'instances' key")


def format_predict(fmt: str, outputs: Dict[str, np.ndarray]) -> dict:
    if fmt == "columnar":
        if len(outputs) == 1:
            (alias, array), = outputs.items()
            return {"outputs": ndarray_to_json(array, alias)}
        return {"outputs": {a: ndarray_to_json(v, a) for a, v in outputs.items()}}
    rows = None
    columns = {}
    for alias, array in outputs.items():
        if array.ndim == 0:
            raise ServingError("INVALID_ARGUMENT", f"Tensor name: {alias} has no shape "
                               f"information; use the columnar ('inputs') format")
        if rows is not None and array.shape[0] != rows:
            raise invalid(f"Tensor name: {alias} has inconsistent batch size: {array.shape[0]} "
                          f"expecting: {rows}")
        rows = array.shape[0]
        columns[alias] = ndarray_to_json(array, alias)
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{a: columns[a][i] for a in columns} for i in range(rows or 0)]}


def _feature_from_json(name: str, value, feature) -> None:
    items = value if isinstance(value, list) else [value]
    for v in items:
        if v is None or isinstance(v, (list,)) or (isinstance(v, dict) and not _is_b64(v)):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: "
                          f"{'Null' if v is None else ('Array' if isinstance(v, list) else 'Object')}")
        if isinstance(v, bool) or (isinstance(v, int)):
            kind, v = "int64_list", int(v)
        elif isinstance(v, float):
            kind = "float_list"
        elif isinstance(v, str):
            kind, v = "bytes_list", v.encode("utf-8")
        else:
            kind = "bytes_list"
            try:
                v = base64.b64decode(v["b64"], validate=True)
            except (ValueError, TypeError):
                raise invalid("Unable to base64 decode") from None
        current = feature.WhichOneof("kind")
        if current is not None and current != kind:
            raise invalid(f"Unexpected element type in feature: {name} expecting type: "
                          f"{current.split('_')[0]}")
        getattr(feature, kind).value.append(v)


def _example_from_json(value, example) -> None:
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON "
                      f"{'Array' if isinstance(value, list) else type(value).__name__}")
    for name, content in value.items():
        _feature_from_json(name, content, example.features.feature[name])


def classify_input(doc: dict, kind: str) -> input_pb2.Input:
    inp = input_pb2.Input()
    if "context" in doc:
        target = inp.example_list_with_context
        _example_from_json(doc["context"], target.context)
    else:
        target = inp.example_list
    examples = doc.get("examples")
    if "examples" not in doc:
        raise invalid(f"JSON Value: {json_excerpt(doc)} When method is {kind}, key 'examples' is "
                      f"expected and was not found")
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {json_excerpt(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {json_excerpt(doc)} 'examples' value is an empty array")
    for value in examples:
        _example_from_json(value, target.examples.add())
    return inp


# ------------------------------------------------------------------ handlers
class _Base(tornado.web.RequestHandler):
    def initialize(self, api: ServingApi, max_request_bytes: int, access: Optional[A.Access]):
        self.api = api
        self.max_request_bytes = max_request_bytes
        self.access = access

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")
        self.request_id = (self.request.headers.get(REQUEST_ID_HEADER) or new_request_id())[:128]
        self.set_header(REQUEST_ID_HEADER, self.request_id)

    def send_json(self, value, status: int = 200):
        self.set_status(status)
        self.finish(dumps(value))

    def send_error_json(self, err: ServingError):
        self.send_json({"error": err.message}, err.http_status)

    def write_error(self, status_code, **kwargs):   # tornado's own errors (405, 400...)
        self.finish(dumps({"error": self._reason}))

    def compute_etag(self):
        return None

    def log_exception(self, typ, value, tb):
        if not isinstance(value, tornado.web.HTTPError):
            super().log_exception(typ, value, tb)


INT64_MAX = 2**63 - 1


def _version(v: Optional[str]) -> Optional[int]:
    """The version in the URL (``-?\\d+``), as TF Serving converts it."""
    if v is None:
        return None
    if len(v) > 20 or not -INT64_MAX - 1 <= int(v) <= INT64_MAX:
        raise invalid(f"Failed to convert version: {v} to numeric.")
    return int(v)


class StatusHandler(_Base):
    def prepare(self):
        A.admit_request(self, self.access)

    async def get(self, name, version, label, metadata):
        try:
            if metadata:
                response = self.api.model_metadata(name, _version(version), label)
                body = json_format.MessageToDict(response, preserving_proto_field_name=True,
                                                 including_default_value_fields=True)
                sig_map = json_format.MessageToDict(
                    _unpack_signature_map(response), preserving_proto_field_name=True,
                    including_default_value_fields=True)
                body["metadata"] = {"signature_def": sig_map}
            else:
                response = self.api.model_status(name, _version(version), label)
                body = json_format.MessageToDict(response, preserving_proto_field_name=True,
                                                 including_default_value_fields=True)
        except ServingError as err:
            return self.send_error_json(err)
        self.send_json(body)


def _unpack_signature_map(response):
    from tensorflow_serving.apis import get_model_metadata_pb2
    out = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(out)
    return out


@tornado.web.stream_request_body
class InferenceHandler(admission.GatedHandler, _Base):   # post() counted by the gate
    def prepare(self):
        self._chunks: List[bytes] = []
        self._size = 0
        self._too_large = False
        self.client = self.request.remote_ip
        if self.access is not None:   # a refused call's body is read (at most max_request_bytes) and dropped
            self.client, self.denied = self.access.admit(self.request.headers.get(A.AUTHORIZATION),
                                                         self.client)
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            self._refuse()
        else:   # counted in data_received: tornado's own limit would answer a bare 400
            self.request.connection.set_max_body_size(sys.maxsize)

    def refused(self, refusal: ServingError):   # access, max_concurrent_requests, shutting down
        self.api.rejected(Call(self.path_args[3], REST, self.request_id, self.path_args[0],
                               client=self.client), refusal)

    def _refuse(self):
        """Answer a body over ``max_request_bytes`` now: 413, or the access refusal
        of a call that may not run (authentication first), and close the connection."""
        self._too_large = True
        self.set_header("Connection", "close")
        if self.denied is not None:
            self.refused(self.denied)
            A.send_refusal(self, self.denied)
            return
        self.send_json({"error": f"Request body is larger than the limit of "
                                 f"{self.max_request_bytes} bytes (max_request_bytes)"}, 413)

    def data_received(self, chunk: bytes):
        if self._too_large:
            return
        self._size += len(chunk)
        if self._size > self.max_request_bytes:
            self._refuse()
        elif self.denied is None:
            self._chunks.append(chunk)

    async def post(self, name, version, label, method):
        if self._too_large:
            return
        request = _RestRequest(Call(method, REST, self.request_id, name, label=label,
                                    client=self.client), b"".join(self._chunks))
        try:
            answer, exchange = await self._answer(request, version)
        except ServingError as err:
            self.api.rejected(request.call, err, request.received)
            self.send_error_json(err)
            return
        self.set_status(200)
        self.finish(_answer_bytes(answer))
        self.api.answered(request.call, exchange)

    async def _answer(self, request: "_RestRequest", version: Optional[str]):
        """(JSON answer, the call's request and response for its log record);
        raises ServingError."""
        call = request.call
        if call.api not in request_log.LOGGED_CALLS:
            raise invalid(f"Malformed request: POST {self.request.path[:200]}")
        try:
            request.doc = parse_json(request.body)
            call.signature_name = _signature_name(request.doc)
            call.version = _version(version)
            if call.api == "predict":
                outputs = await self.api.predict(call, request.feeds_for)
                return (format_predict(request.fmt, outputs),
                        functools.partial(_predict_exchange, request, outputs))
            result = await self.api.classify_or_regress(call, request.examples)
            return result_json(call.api, result), functools.partial(_result_exchange, request,
                                                                    result)
        except ServingError:
            raise
        except Exception:   # noqa: BLE001 - never an HTML 500, never Python's text
            raise internal_error(f"answering POST {self.request.path[:200]}") from None


class _RestRequest:
    """A REST inference call: its body, what was read of it, and its ``Call``."""
    __slots__ = ("call", "body", "doc", "fmt", "feeds", "input")

    def __init__(self, call: Call, body: bytes):
        self.call, self.body = call, body
        self.doc = self.fmt = self.feeds = self.input = None

    def feeds_for(self, signature) -> Dict[str, np.ndarray]:
        """The predict body's tensors (row or columnar format) for ``signature``."""
        self.fmt, self.feeds = predict_feeds(self.doc, signature)
        return self.feeds

    def examples(self) -> List[bytes]:
        """The classify/regress body's examples, serialized."""
        self.input = classify_input(self.doc, self.call.api)
        return serialized_examples(self.input)

    def received(self):
        """A rejected call's rows as logged: tf.Examples, typed by the signature
        when the call got that far (None: no rows could be read)."""
        signature = self.call.signature
        dtypes = {a: spec.dtype for a, spec in signature.inputs.items()} if signature else None
        rows = json_body_rows(self.doc) if isinstance(self.doc, dict) else []
        examples = json_rows_to_examples(rows, dtypes)
        return request_log.examples_request(examples) if examples else None


def _answer_bytes(answer) -> bytes:
    """The JSON body; NaN and +-Infinity written as TF Serving writes them (its REST
    API's "JSON conformance"), where orjson would write null."""
    body = dumps(answer)
    if b"null" in body:       # only non-finite floats become null in an answer
        body = json.dumps(answer, separators=(",", ":"), allow_nan=True).encode()
    return body


def _predict_exchange(request: _RestRequest, outputs: Dict[str, np.ndarray]):
    """An answered predict call as its gRPC equivalent (for the request log)."""
    signature = request.call.signature
    req, resp = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
    fill_model_spec(req.model_spec, request.call)
    for alias, array in request.feeds.items():
        ndarray_to_proto(array, signature.inputs[alias].dtype, req.inputs[alias])
    resp.model_spec.CopyFrom(req.model_spec)
    for alias, array in outputs.items():
        ndarray_to_proto(array, signature.outputs[alias].dtype, resp.outputs[alias])
    return req, resp


def _result_exchange(request: _RestRequest, result):
    """An answered classify/regress call as its gRPC equivalent (for the request log)."""
    call = request.call
    req = classification_pb2.ClassificationRequest() if call.api == "classify" \
        else regression_pb2.RegressionRequest()
    fill_model_spec(req.model_spec, call)
    req.input.CopyFrom(request.input)
    return req, result_response(call, result)


class MetricsHandler(_Base):
    def prepare(self):
        A.admit_request(self, self.access)

    def get(self):
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.api.metrics.render())


class NotFoundHandler(_Base):
    def _malformed(self):
        self.send_error_json(ServingError(
            "NOT_FOUND" if not self.request.path.startswith("/v1/") else "INVALID_ARGUMENT",
            f"Malformed request: {self.request.method} {self.request.path}"))

    get = post = put = delete = patch = head = _malformed


REFUSALS = (401, 429, 503)    # answers that come in floods (no token, overload, shutdown)


class _AccessLog:
    """Tornado's access log for failed requests, with the URI cut short (callers
    choose it) and at most one line per second for each kind of refusal
    (``REFUSALS``), which come in floods: that line says how many there were."""

    def __init__(self):
        self.refused = dict.fromkeys(REFUSALS, 0)
        self.next_refusal_line = dict.fromkeys(REFUSALS, 0.0)

    def __call__(self, handler: tornado.web.RequestHandler) -> None:
        status, request = handler.get_status(), handler.request
        if status < 400:
            return
        if status in self.refused:
            self.refused[status] += 1
            now = time.monotonic()
            if now < self.next_refusal_line[status]:
                return
            self.next_refusal_line[status] = now + 1.0
            tornado.log.access_log.warning("%d refused %d request(s) in the last second, "
                                           "e.g. %s %.200s (%s)", status, self.refused[status],
                                           request.method, request.uri, request.remote_ip)
            self.refused[status] = 0
            return
        tornado.log.access_log.warning("%d %s %.200s (%s) %.2fms", status, request.method,
                                       request.uri, request.remote_ip,
                                       1000.0 * request.request_time())


def make_app(api: ServingApi, max_request_bytes: int, metrics_path: str,
             access: Optional[A.Access] = None) -> tornado.web.Application:
    """``metrics_path``: where the Prometheus page is (a monitoring_config_file's
    prometheus_config.path; "": nowhere)."""
    args = dict(api=api, max_request_bytes=max_request_bytes, access=access)
    metrics = [(re.escape(metrics_path), MetricsHandler, args)] if metrics_path else []
    return tornado.web.Application([
        (_MODEL + r"(/metadata)?", StatusHandler, args),
        (_MODEL + r":([A-Za-z]+)", InferenceHandler, args),
        *metrics,
        (r".*", NotFoundHandler, args),
    ], compress_response=False, serve_traceback=False, log_function=_AccessLog())

