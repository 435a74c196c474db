"""The gRPC half of the logging proxy (``tfxops serve --proxy-grpc-to HOST:PORT``):
TF Serving's gRPC services passed through unchanged, with Predict, Classify and
Regress logged as PredictionLog records.

Every unary method of ``tensorflow.serving.PredictionService`` and
``tensorflow.serving.ModelService`` is forwarded as raw bytes (nothing is parsed
or re-serialized on the way), with the caller's metadata and deadline; the
upstream's answer, or its status code, details and trailing metadata, come back
as they were, so TF Serving's own clients see TF Serving. An ``x-request-id`` is read from the
caller's metadata (or made up) and passed upstream; the caller's own is returned
in the trailing metadata, as ``tfxops serve`` does.

Logging costs the request path one queue append: the request and response bytes
are kept as they crossed the proxy, and the writer thread reads the model name
and signature from the request, the version that answered from the response, and
concatenates the record (``core.request_log.answered_record``), marking the rows
outside the input domain of the version that answered when the proxy sees the push
directory (``serving.domain_check.VersionDomains``; ``out_of_domain_action`` not off).

With ``serving.access`` checks, ``access.GrpcGuard`` refuses calls before they are
forwarded, and the caller's ``authorization`` metadata is not passed on unless
``proxy_forward_token``; records name the client (token name, else address).
"""
import logging
import time
from typing import Optional

import grpc

from core import request_log
from core.request_log import new_request_id
from core.domain import LOG, OFF
from serving import access as A, admission, metrics as M
from serving.domain_check import DomainCheck, VersionDomains
from serving.errors import MAX_MESSAGE_CHARS
from serving.grpc_service import REQUEST_ID_KEY

log = logging.getLogger("tfxops.serving")

SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
LOGGED = {"Predict": "predict", "Classify": "classify", "Regress": "regress"}
# Metadata gRPC manages itself: not copied between the two calls.
_HOP_BY_HOP = {"grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "user-agent",
               "content-type", "te", "host", ":authority"}
UPSTREAM_TIMEOUT_SECONDS = 60.0
MAX_CACHED_METHODS = 64   # upstream call objects kept, one per method name (TF Serving has 7)


def _request_classes():
    from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2
    return {"predict": (predict_pb2.PredictRequest, predict_pb2.PredictResponse),
            "classify": (classification_pb2.ClassificationRequest,
                         classification_pb2.ClassificationResponse),
            "regress": (regression_pb2.RegressionRequest, regression_pb2.RegressionResponse)}


def build_record(kind: str, request: bytes, response: bytes, request_id: str,
                 arrived: float, versions: Optional[dict] = None, client: str = "",
                 domains: Optional[VersionDomains] = None) -> bytes:
    """The serialized PredictionLog of one proxied call (run on the writer thread);
    ``versions`` (model name -> version) learns the version that answered; ``domains``
    marks the rows outside its input domain (``serving.domain_check``)."""
    request_type, response_type = _request_classes()[kind]
    spec = request_type.FromString(request).model_spec
    answered = response_type.FromString(response).model_spec
    version = answered.version.value if answered.HasField("version") else (
        spec.version.value if spec.HasField("version") else None)
    if versions is not None and version is not None and (
            spec.name in versions or len(versions) < 64):
        versions[spec.name] = version
    marked = () if domains is None else domains.marked(kind, spec.name, version, request)
    return request_log.answered_record(kind, spec.name, version,
                                       answered.signature_name or spec.signature_name,
                                       request_id, arrived, request, response, client, marked)


class ProxyHandler(grpc.GenericRpcHandler):
    """Forwards every unary method of TF Serving's services to ``upstream``."""

    def __init__(self, upstream: str, logger, metrics: M.Metrics, max_message_bytes: int,
                 drop_token: bool = False, domains: Optional[VersionDomains] = None):
        self.upstream = upstream
        self.domains = domains            # out-of-domain marks (serving.domain_check)
        self.drop_token = drop_token      # the caller's authorization stays here
        self.logger = logger
        self.metrics = metrics
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        self.channel = grpc.aio.insecure_channel(upstream, options=options)
        self._calls = {}
        self.names = M.ModelNames()
        self._answered_versions: dict = {}   # model name -> version of its last answer

    def service(self, details: grpc.HandlerCallDetails) -> Optional[grpc.RpcMethodHandler]:
        service, _, method = details.method.lstrip("/").rpartition("/")
        if service not in SERVICES:
            return None    # UNIMPLEMENTED, as TF Serving answers an unknown service
        call = self._calls.get(details.method)
        if call is None:
            call = self.channel.unary_unary(details.method)
            if len(self._calls) < MAX_CACHED_METHODS:    # method names come from callers
                self._calls[details.method] = call

        async def forward(request: bytes, context: grpc.aio.ServicerContext):
            return await self._forward(call, method, request, context)

        return grpc.unary_unary_rpc_method_handler(forward)   # bytes in, bytes out

    async def _forward(self, call, method: str, request: bytes, context) -> bytes:
        started, arrived = time.perf_counter(), time.time()
        metadata, rid = [], None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                rid = str(value)[:128]
            elif key == A.AUTHORIZATION and self.drop_token:
                continue
            elif key not in _HOP_BY_HOP and not key.startswith("grpc-"):
                metadata.append((key, value))
        returned = ((REQUEST_ID_KEY, rid),) if rid else ()
        rid = rid or new_request_id()
        metadata.append((REQUEST_ID_KEY, rid))
        remaining = context.time_remaining()
        timeout = UPSTREAM_TIMEOUT_SECONDS if remaining is None else remaining
        kind, (client, peer) = LOGGED.get(method), A.grpc_caller(context)
        try:
            response = await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            self._record(kind, request, started, err.code().name)
            self._log_rejected(kind, request, rid, arrived, err, client, peer)
            details = err.details() or ""
            if err.code() == grpc.StatusCode.UNAVAILABLE and "connect" in details:
                details = f"upstream {self.upstream} unavailable: {details}"   # not TF Serving's
            await context.abort(err.code(), details, trailing_metadata=_returned(
                err.trailing_metadata()) + returned)
        if returned:
            context.set_trailing_metadata(returned)
        self._record(kind, request, started, "OK")
        if kind is not None and self.logger is not None and self.logger.sampled():
            versions, domains = self._answered_versions, self.domains
            self.logger.submit(lambda: _safe_record(kind, request, response, rid, arrived, versions,
                                                    A.client_name(client, peer), domains))
        return response

    def _log_rejected(self, kind: Optional[str], request: bytes, rid: str, arrived: float,
                      err: grpc.aio.AioRpcError, client: str, peer: str) -> None:
        code = err.code().name
        if request_log.logs_rejection(kind, code) and self.logger is not None and \
                self.logger.sampled():
            details, versions = err.details() or "", self._answered_versions
            self.logger.submit(lambda: _safe_rejected(kind, request, rid, arrived, code, details,
                                                      versions, A.client_name(client, peer)))

    def _record(self, kind: Optional[str], request: bytes, started: float, status: str) -> None:
        if kind is None:
            return
        name = model_name(request)
        if status == "OK":
            self.names.answered(name)
        name = self.names.label(name)
        self.metrics.inc(M.REQUEST_COUNT, (("model_name", name), ("status", status)))
        self.metrics.observe(M.REQUEST_LATENCY, (("model_name", name), ("API", kind),
                                                 ("entrypoint", "GRPC")),
                             (time.perf_counter() - started) * 1e6, M.LATENCY_BUCKETS_US)

    async def close(self) -> None:
        await self.channel.close()


def model_name(request: bytes) -> str:
    """The model name of a serialized Predict/Classify/Regress request, read from
    its leading ``model_spec`` field (field 1 in all three; serializers write it
    first) without parsing the rest; "" when it is not there."""
    from tensorflow_serving.apis import model_pb2

    if not request or request[0] != 0x0A:       # field 1, length-delimited
        return ""
    length, shift, i = 0, 0, 1
    while i < len(request):
        byte = request[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            break
        shift += 7
    try:
        return model_pb2.ModelSpec.FromString(request[i:i + length]).name[:200]
    except Exception:   # noqa: BLE001 - a malformed request: upstream will say so
        return ""


def _returned(metadata) -> tuple:
    return tuple((k, v) for k, v in (metadata or ()) if k not in _HOP_BY_HOP
                 and not k.startswith("grpc-") and k != REQUEST_ID_KEY)


def build_rejected(kind: str, request: bytes, request_id: str, arrived: float, code: str,
                   message: str, versions: dict, client: str = "") -> bytes:
    """The rejected-call record of a call TF Serving refused. Its version: the one
    the call asked for, else the one that answered the model's last successful
    call (what TF Serving would have run, unless it swapped versions meanwhile)."""
    request_type, _ = _request_classes()[kind]
    parsed = request_type.FromString(request)
    spec = parsed.model_spec
    version = spec.version.value if spec.HasField("version") else versions.get(spec.name)
    if kind != "predict":
        from serving.api import serialized_examples
        request = request_log.examples_request(serialized_examples(parsed.input))
    return request_log.rejected_record(spec.name, version, spec.signature_name, request_id,
                                       arrived, code, message[:MAX_MESSAGE_CHARS], request, client)


def _safe_rejected(kind, request, rid, arrived, code, message, versions, client):
    try:
        return build_rejected(kind, request, rid, arrived, code, message, versions, client)
    except Exception:   # noqa: BLE001 - bytes that do not parse: logged without the request
        return request_log.rejected_record(model_name(request), None, "", rid, arrived, code,
                                           message[:MAX_MESSAGE_CHARS], None, client)


def _safe_record(kind, request, response, rid, arrived, versions=None, client="", domains=None):
    try:
        return build_record(kind, request, response, rid, arrived, versions, client, domains)
    except Exception as exc:   # noqa: BLE001 - an unreadable call is not logged, not fatal
        log.warning("proxy: could not log a gRPC %s call: %s", kind, exc)
        return None


def proxy_domains(settings, metrics: M.Metrics) -> VersionDomains:
    """The input domains of the versions TF Serving answers with, from the push directory
    (``model_push_dir``); the proxy marks (never refuses) unless out_of_domain_action is off."""
    action = OFF if settings.out_of_domain_action == OFF else LOG
    return VersionDomains(DomainCheck(action, metrics, settings.model_name), settings.model_name,
                          str(settings.model_push_dir))


async def start(settings, logger, metrics: M.Metrics, gate=None,
                access: Optional[A.Access] = None, tls: Optional[A.Tls] = None):
    """The proxy's gRPC server on ``settings.grpc_port``, its calls checked by
    ``access`` (serving.access.Access, or None) and its Predict/Classify/Regress
    calls counted by ``gate`` (serving.admission.Gate); TLS with ``tls``; returns
    (server, handler, port)."""
    drop_token = access is not None and access.tokens is not None and \
        not settings.proxy_forward_token
    handler = ProxyHandler(settings.proxy_grpc_to, logger, metrics, settings.max_request_bytes,
                           drop_token, proxy_domains(settings, metrics))
    interceptors = ([A.GrpcGuard(access)] if access is not None else []) + (
        [admission.GrpcGate(gate)] if gate is not None else [])
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.so_reuseport", 0)],
        interceptors=interceptors or None)
    server.add_generic_rpc_handlers((handler,))
    port = admission.bind_grpc(server, settings.grpc_port, settings.host,
                               tls.grpc_credentials() if tls else None)
    await server.start()
    log.info("proxy on grpc %s:%d -> %s", settings.host, port, settings.proxy_grpc_to)
    return server, handler, port
