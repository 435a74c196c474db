"""``tfxops serve --proxy-to HOST:PORT [--proxy-grpc-to HOST:PORT]``: a proxy in
front of TF Serving that logs requests (open-source TF Serving cannot). This module
is the REST half and runs both; the gRPC half is ``serving/grpc_proxy.py``.

Every request is forwarded unchanged to the upstream REST API and its answer
returned unchanged (status, body), with an ``X-Request-Id``. Successful
``:predict``/``:classify``/``:regress`` calls (or a ``log_sample_rate`` sample)
are written as PredictionLog records by the same ``RequestLogger`` the embedded
server uses. Without the model's signature at hand, JSON predict tensors are typed
from JSON itself: strings and ``{"b64"}`` -> DT_STRING, integers -> DT_INT64,
other numbers -> DT_FLOAT. The version is the one in the URL, else left unset.

With ``serving.access`` checks (tokens, rate limit, TLS) the proxy answers refused
calls itself (401 / 429) and forwards nothing of them; the caller's
``Authorization`` is not passed on unless ``proxy_forward_token``. Records name
the client (token name, else address).
"""
import asyncio
import logging
import re
import signal
import time
from typing import Optional

import numpy as np
import orjson
import tornado.httpclient
import tornado.httpserver
import tornado.web
from tensorflow.core.framework import types_pb2

from core import features as F, request_log
from core.examples import json_body_rows, json_rows_to_examples
from core.request_log import new_request_id
from serving import access as A, admission, busy_poll, metrics as M
from serving.errors import MAX_MESSAGE_CHARS, ServingError, http_status_to_code
from serving.log_writer import RequestLogger
from core.redact import Redaction
from serving.rest import (MAX_REQUEST_HEAD_BYTES, REQUEST_ID_HEADER, classify_input, dumps,
                          parse_json)
from serving.tensors import json_to_ndarray, ndarray_to_proto

log = logging.getLogger("tfxops.serving")
_CALL = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/[^/:]+)?:(predict|classify|regress)$")


def _infer_dtype(value) -> int:
    while isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, (str, dict)):
        return types_pb2.DT_STRING
    if isinstance(value, bool):
        return types_pb2.DT_BOOL
    if isinstance(value, int):
        return types_pb2.DT_INT64
    return types_pb2.DT_FLOAT


def _tensors_from_json(doc):
    """The tensors a predict body names, typed from JSON (alias -> array)."""
    if "instances" in doc:
        rows = doc["instances"]
        if rows and isinstance(rows[0], dict) and set(rows[0]) != {"b64"}:
            return {k: json_to_ndarray([r[k] for r in rows], _infer_dtype(rows[0][k]))
                    for k in rows[0]}
        return {"examples": json_to_ndarray(rows, _infer_dtype(rows))}
    value = doc.get("inputs")
    if isinstance(value, dict) and set(value) != {"b64"}:
        return {k: json_to_ndarray(v, _infer_dtype(v)) for k, v in value.items()}
    return {"examples": json_to_ndarray(value, _infer_dtype(value))}


def build_log(path: str, body: bytes, answer: bytes, request_id: str,
              arrived: float, client: str = "") -> Optional[bytes]:
    """The serialized PredictionLog of a proxied call (None when it cannot be understood)."""
    m = _CALL.match(path)
    if not m:
        return None
    name, version, method = m.group(1), int(m.group(2)) if m.group(2) else None, m.group(3)
    doc, out = parse_json(body), orjson.loads(answer)
    sig_name = doc.get("signature_name") or F.DEFAULT_SIGNATURE
    if method == "predict":
        request, response = _predict_messages(doc, out, sig_name)
    else:
        request, response = _classify_or_regress_messages(doc, out, method)
    for message in (request, response):
        message.model_spec.name, message.model_spec.signature_name = name, sig_name
        if version is not None:
            message.model_spec.version.value = version
    return request_log.answered_record(method, name, version, sig_name, request_id, arrived,
                                       request, response, client)


def _predict_messages(doc: dict, out: dict, sig_name: str):
    """(PredictRequest, PredictResponse) of a proxied predict call, typed from JSON."""
    from tensorflow_serving.apis import predict_pb2

    request, response = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
    for alias, array in _tensors_from_json(doc).items():
        ndarray_to_proto(array, None if array.dtype != object else types_pb2.DT_STRING,
                         request.inputs[alias])
    values = out.get("predictions", out.get("outputs"))
    if isinstance(values, dict):
        for alias, v in values.items():
            ndarray_to_proto(json_to_ndarray(v, _infer_dtype(v)), None, response.outputs[alias])
    elif values is not None:
        ndarray_to_proto(np.asarray(values, dtype=np.float32), None,
                         response.outputs[F.PREDICTION_KEY if sig_name.startswith("serving") else "outputs"])
    return request, response


def _classify_or_regress_messages(doc: dict, out: dict, method: str):
    """(request, response) of a proxied classify or regress call."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    if method == "classify":
        request, response = classification_pb2.ClassificationRequest(), \
            classification_pb2.ClassificationResponse()
        for row in out.get("results", []):
            cls = response.result.classifications.add()
            for label, score in row:
                c = cls.classes.add()
                c.label, c.score = str(label), float(score)
    else:
        request, response = regression_pb2.RegressionRequest(), regression_pb2.RegressionResponse()
        for v in out.get("results", []):
            response.result.regressions.add().value = float(v)
    request.input.CopyFrom(classify_input(doc, method))
    return request, response


class ProxyHandler(admission.GatedHandler, tornado.web.RequestHandler):
    def initialize(self, upstream, logger, metrics, max_request_bytes, names: M.ModelNames,
                   access: Optional[A.Access], forward_token: bool):
        self.upstream, self.logger, self.metrics = upstream, logger, metrics
        self.max_request_bytes = max_request_bytes
        self.names = names
        self.access, self.forward_token = access, forward_token

    def prepare(self):     # the body is read by now (not streamed)
        A.admit_request(self, self.access)

    async def _forward(self):
        started, arrived = time.perf_counter(), time.time()
        rid = (self.request.headers.get(REQUEST_ID_HEADER) or new_request_id())[:128]
        body = self.request.body if self.request.method in ("POST", "PUT") else None
        if body is not None and len(body) > self.max_request_bytes:
            self.set_status(413)
            return self.finish(dumps({"error": "Request body is larger than max_request_bytes"}))
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: rid}
        if self.forward_token and A.AUTHORIZATION in self.request.headers:
            headers["Authorization"] = self.request.headers[A.AUTHORIZATION]
        try:
            resp = await tornado.httpclient.AsyncHTTPClient().fetch(
                f"http://{self.upstream}{self.request.uri}", method=self.request.method, body=body,
                headers=headers, raise_error=False, request_timeout=60)
        except OSError as exc:
            self.set_status(503)
            return self.finish(dumps({"error": f"upstream {self.upstream} unavailable: {exc}"}))
        self.set_status(resp.code if resp.code >= 100 else 502)
        self.set_header("Content-Type", resp.headers.get("Content-Type", "application/json"))
        self.set_header(REQUEST_ID_HEADER, rid)
        self.finish(resp.body or b"")
        m = _CALL.match(self.request.path)
        if m:
            self._record(m.group(1), m.group(3), resp.code, started)
            logged = resp.code == 200 or request_log.logs_rejection(
                m.group(3), http_status_to_code(resp.code))
            if logged and self.logger is not None and self.logger.sampled():
                path, answer, code, client = self.request.path, resp.body, resp.code, self.client
                self.logger.submit(lambda: _safe_build(path, body, code, answer, rid, arrived,
                                                       client))

    def _record(self, name: str, method: str, code: int, started: float) -> None:
        if code == 200:
            self.names.answered(name)
        label = self.names.label(name)
        status = "OK" if code == 200 else http_status_to_code(code)
        self.metrics.inc(M.REQUEST_COUNT, (("model_name", label), ("status", status)))
        self.metrics.observe(M.REQUEST_LATENCY, (("model_name", label), ("API", method),
                                                 ("entrypoint", "REST")),
                             (time.perf_counter() - started) * 1e6, M.LATENCY_BUCKETS_US)

    get = post = _forward        # post counted by the gate (admission.GatedHandler)

    def compute_etag(self):
        return None


def build_rejected(path: str, body: bytes, status: int, answer: bytes, request_id: str,
                   arrived: float, client: str = "") -> Optional[bytes]:
    """The rejected-call record of a proxied call the upstream refused (its
    ``{"error": ...}`` and status), rows typed from JSON: the proxy does not
    know the signature."""
    m = _CALL.match(path)
    if not m:
        return None
    try:
        message = str(orjson.loads(answer).get("error", ""))
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        message = (answer or b"").decode("utf-8", "replace")
    try:
        doc = parse_json(body)
    except ServingError:
        doc = None
    rows = json_body_rows(doc) if doc else []
    examples = json_rows_to_examples(rows)
    sig_name = doc.get("signature_name") if doc else ""
    return request_log.rejected_record(
        m.group(1), int(m.group(2)) if m.group(2) else None,
        sig_name if isinstance(sig_name, str) else "", request_id, arrived,
        http_status_to_code(status), message[:MAX_MESSAGE_CHARS],
        request_log.examples_request(examples) if examples else None, client)


def _safe_build(path, body, status, answer, rid, arrived, client):
    try:
        if status != 200:
            return build_rejected(path, body, status, answer, rid, arrived, client)
        return build_log(path, body, answer, rid, arrived, client)
    except (ServingError, ValueError, KeyError, TypeError) as exc:
        log.warning("proxy: could not log a request: %s", exc)
        return None


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, metrics, access: Optional[A.Access]):
        self.metrics, self.access = metrics, access

    def prepare(self):
        A.admit_request(self, self.access)

    def get(self):
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.metrics.render())


async def run_proxy(settings, ready=None, stop_event=None):
    """REST on ``rest_port`` (when ``proxy_to`` is set) and gRPC on ``grpc_port``
    (when ``proxy_grpc_to`` is), one request log for both; runs until
    ``stop_event``. ``ready(ports, stop_event)`` is called once listening, with
    ``ports`` = {"rest": port or None, "grpc": port or None}."""
    from serving import grpc_proxy

    metrics = M.new_metrics()
    tls = A.load_tls(settings)
    access = A.Access.from_settings(settings, metrics)
    logger = RequestLogger(settings.request_logs_path, settings.log_sample_rate,
                           settings.log_rotate_records, settings.log_rotate_seconds,
                           metrics=metrics, redaction=Redaction.from_settings(settings)).start()
    ports = {"rest": None, "grpc": None}
    gate = admission.Gate(settings.max_concurrent_requests)
    server = grpc_server = grpc_handler = None
    try:
        if settings.proxy_to:
            server = _rest_server(settings, logger, metrics, gate, access, tls)
            ports["rest"] = admission.bind(server, settings.rest_port, settings.host)
            log.info("proxy on %s://%s:%d -> http://%s", "https" if tls else "http",
                     settings.host, ports["rest"], settings.proxy_to)
        if settings.proxy_grpc_to:
            grpc_server, grpc_handler, ports["grpc"] = await grpc_proxy.start(
                settings, logger, metrics, gate, access, tls)
        A.warn_if_exposed(settings.host, access, tls, "tfxops serve (proxy)")
        log.info("proxy request logs in %s", settings.request_logs_path)
        stop_event = stop_event or asyncio.Event()
        if ready is not None:
            ready(ports, stop_event)
        await stop_event.wait()
    finally:   # as ModelServer.stop: the calls in flight (both APIs) are answered first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + admission.GRACE_SECONDS
        gate.drain()
        if server is not None:
            await admission.drain_and_close(server, gate, admission.GRACE_SECONDS)
        if grpc_server is not None:
            await grpc_server.stop(max(0.1, deadline - loop.time()))
            await grpc_handler.close()
        await asyncio.get_running_loop().run_in_executor(None, logger.close)


def _rest_server(settings, logger, metrics, gate, access, tls) -> admission.HTTPServer:
    """The proxy's REST server (not listening yet)."""
    args = dict(upstream=settings.proxy_to, logger=logger, metrics=metrics,
                max_request_bytes=settings.max_request_bytes, names=M.ModelNames(),
                access=access, forward_token=settings.proxy_forward_token)
    app = tornado.web.Application([
        (r"/monitoring/tfxops/metrics", MetricsHandler, dict(metrics=metrics, access=access)),
        (r".*", ProxyHandler, args)], gate=gate)
    return admission.HTTPServer(app, max_body_size=settings.max_request_bytes + 1,
                                max_header_size=MAX_REQUEST_HEAD_BYTES,
                                body_timeout=admission.body_timeout(settings),
                                ssl_options=tls.ssl_context() if tls else None)


def serve(settings) -> None:
    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_proxy(settings, stop_event=stop)
    busy_poll.run(main(), settings.busy_poll_micros)
