"""``tfxops serve``: wires the model manager, batcher, request log, metrics, the
gRPC and REST APIs onto one asyncio loop, and shuts down cleanly on SIGTERM/SIGINT:
stop accepting, answer every request in flight (REST and gRPC, up to
``admission.GRACE_SECONDS``; requests arriving meanwhile get UNAVAILABLE), close the
connections, flush the request log, exit 0. At most ``max_concurrent_requests``
inference requests are in flight; more are answered RESOURCE_EXHAUSTED at once
(``serving/admission.py``). Tokens, rate limits and TLS: ``serving/access.py``.
"""
import asyncio
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from core import audit, config, domain as domain_lib, integrity

from serving import access, admission, busy_poll, metrics as M
from serving.batching import Batcher
from serving.models import AVAILABLE, END, ModelManager, SessionThreads, VersionPolicy, parse_labels
from serving.log_writer import RequestLogger
from core.redact import Redaction
from serving.api import GRPC, Call, ServingApi
from serving.domain_check import DomainCheck
from serving.service import ModelRunner

log = logging.getLogger("tfxops.serving")


@dataclass
class Ports:
    rest: int
    grpc: int


class ModelServer:
    """The embedded server. ``start()`` in a running loop, or ``run()`` to block."""

    def __init__(self, settings: config.Settings, enable_logging: bool = True,
                 num_batch_threads: Optional[int] = None, freeze_gc: bool = False):
        self.settings = settings
        self.freeze_gc = freeze_gc     # the process is ours alone (tfxops serve): see _freeze_gc
        self.metrics = M.new_metrics()
        self.tls = access.load_tls(settings)      # before any model loads: AccessError
        self.access = access.Access.from_settings(settings, self.metrics)
        self.manager = ModelManager(
            settings.model_name, str(settings.model_push_dir),
            VersionPolicy.parse(settings.model_version_policy),
            parse_labels(settings.version_labels), settings.poll_seconds,
            listener=self._on_version_event,
            threads=SessionThreads(settings.intra_op_threads, settings.inter_op_threads),
            integrity=integrity.IntegrityPolicy.from_settings(settings),
            on_refused=self._on_integrity_refusal,
            reads_domain=settings.out_of_domain_action != domain_lib.OFF)
        self.logger = None
        if enable_logging and settings.log_sample_rate > 0:
            self.logger = RequestLogger(settings.request_logs_path, settings.log_sample_rate,
                                        settings.log_rotate_records, settings.log_rotate_seconds,
                                        metrics=self.metrics, redaction=Redaction.from_settings(settings))
        cpus = os.cpu_count() or 1
        self.executor = ThreadPoolExecutor(max(4, 2 * cpus), thread_name_prefix="model")
        self.batcher = None
        if settings.enable_batching:
            self.batcher = Batcher(settings.max_batch_size, settings.batch_timeout_micros,
                                   num_batch_threads or max(1, cpus // 2),
                                   on_batch=self._on_batch)
        self.api = ServingApi(ModelRunner(self.manager, self.batcher, self.executor,
                                          settings.max_request_bytes),
                              self.metrics, self.logger,
                              DomainCheck(settings.out_of_domain_action, self.metrics, settings.model_name))
        self.gate = admission.Gate(settings.max_concurrent_requests)
        self.grpc_server = None
        self.http_server = None
        self.ports: Optional[Ports] = None
        self._stopped: Optional[asyncio.Event] = None

    def _on_version_event(self, state: str, version: int, message: str):
        self.metrics.inc(M.VERSION_EVENTS, (("model_name", self.settings.model_name),
                                            ("state", state)))
        self.metrics.set(M.VERSIONS_AVAILABLE, (("model_name", self.settings.model_name),),
                         len(self.manager.available_versions()))
        self._audit_version_event(state, version, message)

    def _audit_version_event(self, state: str, version: int, message: str) -> None:
        """A version that starts or stops being served, in the audit trail (a failed
        load, state END with its error message, changes nothing served)."""
        if state == AVAILABLE or (state == END and not message):
            s = self.settings
            what = "loaded: now served" if state == AVAILABLE else "unloaded: no longer served"
            audit.record(s, audit.SERVED_VERSION_CHANGED,
                         f"model {s.model_name} version {version} {what} (policy {s.model_version_policy}; "
                         f"served versions now {self.manager.available_versions()})",
                         audit.version_evidence(s.model_push_dir, version), model_version=version,
                         actor=audit.actor_name("server"))

    def _on_integrity_refusal(self, version: int, checked: integrity.VersionIntegrity) -> None:
        """A version refused for its files (``core.integrity``): counted and audited."""
        s = self.settings
        self.metrics.inc(M.INTEGRITY_FAILURES, (("model_name", s.model_name),))
        audit.record(s, audit.MODEL_REFUSED,
                     f"model {s.model_name} version {version} not loaded: it failed its integrity check: "
                     f"{checked.summary()} (served versions still {self.manager.available_versions()})",
                     audit.version_evidence(s.model_push_dir, version), model_version=version,
                     actor=audit.actor_name("server"))

    def _on_grpc_refused(self, method: str, request, refusal, client: str) -> None:
        """Count a gRPC call the gate or access refused (its model name read from the request)."""
        if method not in admission.GATED_METHODS:
            return
        spec = getattr(request[0] if isinstance(request, tuple) else request, "model_spec", None)
        call = Call(method.lower(), GRPC, "", spec.name if spec is not None else "", client=client)
        self.api.rejected(call, refusal)

    def _on_batch(self, rows: int, requests: int):
        labels = (("model_name", self.settings.model_name),)
        self.metrics.observe(M.BATCH_SIZE, labels, rows, M.BATCH_BUCKETS)
        self.metrics.observe(M.BATCH_REQUESTS, labels, requests, M.BATCH_BUCKETS)

    async def start(self) -> Ports:
        import grpc

        from serving import grpc_service, rest

        s = self.settings
        if self.logger is not None:
            self.logger.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.manager.start)
        if self.freeze_gc:
            _freeze_gc()
        options = [("grpc.max_receive_message_length", s.max_request_bytes),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024),
                   ("grpc.so_reuseport", 0)]
        guard = [access.GrpcGuard(self.access, self._on_grpc_refused)] if self.access else []
        self.grpc_server = grpc.aio.server(options=options, interceptors=guard + [
            admission.GrpcGate(self.gate, self._on_grpc_refused)])
        grpc_service.add_to_server(self.grpc_server, self.api)
        grpc_port = admission.bind_grpc(self.grpc_server, s.grpc_port, s.host,
                                        self.tls.grpc_credentials() if self.tls else None)
        await self.grpc_server.start()
        app = rest.make_app(self.api, s.max_request_bytes, self.access)
        app.settings["gate"] = self.gate
        # The REST handlers check max_request_bytes themselves (413 with a JSON body).
        self.http_server = admission.HTTPServer(
            app, max_body_size=s.max_request_bytes + 1, xheaders=False, idle_connection_timeout=300,
            max_header_size=rest.MAX_REQUEST_HEAD_BYTES, body_timeout=admission.body_timeout(s),
            ssl_options=self.tls.ssl_context() if self.tls else None)
        rest_port = admission.bind(self.http_server, s.rest_port, s.host)
        self.ports = Ports(rest_port, grpc_port)
        self._stopped = asyncio.Event()
        log.info("serving model %s from %s: REST %s://%s:%d, gRPC %s:%d%s", s.model_name,
                 s.model_push_dir, "https" if self.tls else "http", s.host, rest_port, s.host,
                 grpc_port, " (TLS)" if self.tls else "")
        access.warn_if_exposed(s.host, self.access, self.tls, "tfxops serve")
        return self.ports

    async def stop(self, grace: float = admission.GRACE_SECONDS) -> None:
        """Stop accepting; answer the requests in flight, REST and gRPC, within
        ``grace`` seconds (new ones meanwhile get UNAVAILABLE); close the
        connections; unload; flush the request log."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.gate.drain()      # from now on both APIs answer inference calls UNAVAILABLE
        if self.http_server is not None:   # waits for REST and gRPC calls in flight
            await admission.drain_and_close(self.http_server, self.gate, grace)
        if self.grpc_server is not None:   # calls that still come are CANCELLED by gRPC
            await self.grpc_server.stop(max(0.1, deadline - loop.time()))
        left = max(0.0, deadline - loop.time())
        await loop.run_in_executor(None, self.manager.stop, left)
        if self.batcher is not None:
            self.batcher.shutdown(wait=False)
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.logger is not None:
            await loop.run_in_executor(None, self.logger.close)
        if self._stopped is not None:
            self._stopped.set()

    async def serve_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):   # not the main thread
                pass
        await self.start()
        await stop.wait()
        log.info("shutting down")
        await self.stop()


class BackgroundServer:
    """A ModelServer on its own loop thread (tests, benchmarks, notebooks)."""

    def __init__(self, settings: config.Settings, **kwargs):
        self.server = ModelServer(settings, **kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="serving-loop",
                                        daemon=True)
        self.ports: Optional[Ports] = None

    def start(self) -> Ports:
        self._thread.start()
        self.ports = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(300)
        return self.ports

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def _freeze_gc() -> None:
    """Move everything allocated so far (TensorFlow's modules, the loaded graphs:
    about a million objects) out of the garbage collector's sight, so that its
    collections scan what requests allocate instead of walking all of them again.
    Only in a process that is just the server: frozen objects that later form
    garbage cycles are never collected."""
    import gc
    gc.collect()
    gc.freeze()


def serve(settings: config.Settings) -> None:
    """Run until SIGTERM/SIGINT, on a busy-polling loop (``busy_poll_micros``: the
    process is the server alone; BackgroundServer's loop shares its process's GIL
    with the caller and does not spin)."""
    busy_poll.run(ModelServer(settings, freeze_gc=True).serve_forever(),
                  settings.busy_poll_micros)
    _exit_if_calls_remain()


def _exit_if_calls_remain() -> None:
    """After a shutdown whose grace period ran out with model calls still running
    (a model that never returns), end the process without them: the request log is
    flushed and every connection closed by now; Python would wait for those threads
    forever."""
    others = [t for t in threading.enumerate()
              if t is not threading.current_thread() and not t.daemon]
    deadline = time.monotonic() + 2.0          # idle pool threads end at once
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    running = [t.name for t in others if t.is_alive()]
    if running:
        log.warning("model calls still running after the shutdown's grace period (%s): "
                    "exiting without them", ", ".join(sorted(running)))
        logging.shutdown()
        os._exit(0)
