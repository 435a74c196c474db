"""``tfxops serve``: wires the model manager, batcher, request log, metrics, the
gRPC and REST APIs onto one asyncio loop, and shuts down cleanly on SIGTERM/SIGINT:
stop accepting, answer every request in flight (REST and gRPC, up to
``admission.GRACE_SECONDS``; requests arriving meanwhile get UNAVAILABLE), close the
connections, flush the request log, exit 0. At most ``max_concurrent_requests``
inference requests are in flight; more are answered RESOURCE_EXHAUSTED at once
(``serving/admission.py``). Tokens, rate limits and TLS: ``serving/access.py``.
"""
import asyncio
import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional

from core import audit, config, domain as domain_lib, integrity

from serving import access, admission, busy_poll, metrics as M
from serving.batching import Batcher, model_name_of
from serving.model_config import (ModelConfigError, ServedModel, ServingFiles, check_labels, host_path,
                                  models_from_settings, read_serving_files, served_models)
from serving.model_set import ModelSet, ModelSetChange
from serving.models import AVAILABLE, END, ModelManager, SessionThreads
from serving.log_writer import RequestLogger
from core.redact import Redaction
from serving.api import GRPC, Call, ServingApi
from serving.domain_check import DomainCheck
from serving.service import ModelRunner
from serving.traffic_split import TrafficSplit

log = logging.getLogger("tfxops.serving")
V2_INFER = "ModelInfer"          # KServe V2's inference method (serving/v2/grpc.py)


@dataclass
class Ports:
    rest: int
    grpc: int


class ModelServer:
    """The embedded server. ``start()`` in a running loop, or ``run()`` to block."""

    def __init__(self, settings: config.Settings, enable_logging: bool = True,
                 num_batch_threads: Optional[int] = None, freeze_gc: bool = False,
                 files: Optional[ServingFiles] = None):
        # TF Serving's files (serving/model_config.py): the models, batching, metrics path
        self.files = files or read_serving_files(settings)      # ModelConfigError before anything loads
        settings = self.settings = self.files.settings
        self.freeze_gc = freeze_gc     # the process is ours alone (tfxops serve): see _freeze_gc
        self.metrics = M.new_metrics()
        self.tls = access.load_tls(settings)      # before any model loads: AccessError
        self.access = access.Access.from_settings(
            settings, self.metrics, metrics_paths={self.files.metrics_path} - {""})
        self.reload_permission = access.ReloadPermission.from_settings(settings, self.access)
        self._reloading = threading.Lock()       # one model config reload at a time (gRPC or the file's poll)
        self._refused_reloads, self._next_refusal_audit = 0, 0.0     # since the last audit entry, and when the next may be
        self._refused_reloads_lock = threading.Lock()
        self.integrity = integrity.IntegrityPolicy.from_settings(settings)
        self.traffic_split = TrafficSplit.from_settings(settings, self.metrics)   # canary, shadow; None: off
        self.models = ModelSet(self.files.models, self._make_manager)
        self._config_text: Optional[str] = None          # the model config file as last applied
        self._config_stop = threading.Event()
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
                                   num_batch_threads or self.files.num_batch_threads or max(1, cpus // 2),
                                   on_batch=self._on_batch)
        self.api = ServingApi(ModelRunner(self.models, self.batcher, self.executor,
                                          settings.max_request_bytes),
                              self.metrics, self.logger,
                              DomainCheck(settings.out_of_domain_action, self.metrics, self.models.names()[0]))
        if self.traffic_split is not None:                # canary and shadow (serving/traffic_split.py)
            self.api.use_traffic_split(self.traffic_split)
        self.gate = admission.Gate(settings.max_concurrent_requests)
        self.grpc_server = None
        self.http_server = None
        self.ports: Optional[Ports] = None
        self._stopped: Optional[asyncio.Event] = None

    @property
    def manager(self) -> ModelManager:
        """The first model's manager (with one model served: its manager)."""
        return next(iter(self.models.by_name.values()))

    def _make_manager(self, model: ServedModel) -> ModelManager:
        """The manager of one configured model; its version events and integrity
        refusals are counted and audited under its name."""
        s = self.settings
        manager = ModelManager(model.name, model.base_path, model.policy, model.labels, s.poll_seconds,
                               threads=SessionThreads(s.intra_op_threads, s.inter_op_threads),
                               integrity=self.integrity,
                               reads_domain=s.out_of_domain_action != domain_lib.OFF)
        manager.listener = functools.partial(self._on_version_event, manager)
        manager.on_refused = functools.partial(self._on_integrity_refusal, manager)
        manager.traffic_split = self.traffic_split        # routes requests naming no version (issue 17 part 4)
        manager.use_label_names(s.stable_label, s.canary_label)   # core.served.default_version's labels
        return manager

    def _on_version_event(self, manager: ModelManager, state: str, version: int, message: str):
        self.metrics.inc(M.VERSION_EVENTS, (("model_name", manager.name), ("state", state)))
        self.metrics.set(M.VERSIONS_AVAILABLE, (("model_name", manager.name),),
                         len(manager.available_versions()))
        self._audit_version_event(manager, state, version, message)

    def _audit_version_event(self, manager: ModelManager, state: str, version: int, message: str) -> None:
        """A version that starts or stops being served, in the audit trail (a failed
        load, state END with its error message, changes nothing served)."""
        if state == AVAILABLE or (state == END and not message):
            what = "loaded: now served" if state == AVAILABLE else "unloaded: no longer served"
            audit.record(self.settings, audit.SERVED_VERSION_CHANGED,
                         f"model {manager.name} version {version} {what} (policy {manager.policy}; "
                         f"served versions now {manager.available_versions()})",
                         audit.version_evidence(manager.base_path, version), model_version=version,
                         actor=audit.actor_name("server"))

    def _on_integrity_refusal(self, manager: ModelManager, version: int,
                              checked: integrity.VersionIntegrity) -> None:
        """A version refused for its files (``core.integrity``): counted and audited."""
        self.metrics.inc(M.INTEGRITY_FAILURES, (("model_name", manager.name),))
        audit.record(self.settings, audit.MODEL_REFUSED,
                     f"model {manager.name} version {version} not loaded: it failed its integrity check: "
                     f"{checked.summary()} (served versions still {manager.available_versions()})",
                     audit.version_evidence(manager.base_path, version), model_version=version,
                     actor=audit.actor_name("server"))

    # ------------------------------------------------ the served configuration
    def reload_models(self, models: List[ServedModel], source: str, actor: str) -> ModelSetChange:
        """Serve ``models`` instead of the current list, with TF Serving's semantics
        (serving.model_set.ModelSet.reload); a configuration TF Serving would refuse
        raises ModelConfigError and changes nothing. Audited when it changes anything."""
        check_labels(models, source)
        with self._reloading:
            change = self.models.reload(models)
        if change:
            served = "; ".join(f"{m.name} ({m.base_path}, policy {m.policy}, labels {m.labels or 'none'})"
                               for m in models)
            audit.record(self.settings, audit.SERVED_CONFIG_CHANGED,
                         f"model config from {source}: {change.summary()}; now serving {served}", actor=actor)
        empty = [name for name in change.added + change.changed if not self.models.by_name[name].available_versions()]
        if empty:       # TF Serving's answer too; the new list stays (a version pushed later is served)
            raise ModelConfigError(f"{len(empty)} model(s) did not become available: {', '.join(empty)} (no loadable "
                                   f"version under their base_path; the new config is applied): push a version "
                                   f"there or fix base_path", "UNKNOWN")
        return change

    def reload_config(self, config, client: str, address: str) -> None:
        """HandleReloadConfigRequest from ``client`` at ``address``: when
        ``reload_permission`` allows it and no other reload runs (else
        ModelConfigError PERMISSION_DENIED, audited / RESOURCE_EXHAUSTED), the
        ModelServerConfig ``config`` replaces the served list (its container paths read
        through container_volumes, as the file's); an empty config changes nothing
        (TF Serving's "no action for empty config")."""
        source = f"HandleReloadConfigRequest from {client}"
        refusal = self.reload_permission.refusal(client, address)
        if refusal is None and self.gate.draining:
            refusal = self.gate.refusal()
        if refusal is not None:
            if refusal.code == "PERMISSION_DENIED":
                self._audit_reload_refusal(source, address, client, refusal.message)
            raise ModelConfigError(refusal.message, refusal.code)
        if self._reloading.locked():
            raise ModelConfigError("another model config reload is in progress: retry when it is done",
                                   "RESOURCE_EXHAUSTED")
        models = [dataclasses.replace(m, base_path=host_path(m.base_path, self.settings.container_volumes))
                  for m in served_models(config, source)]
        if models:
            self.reload_models(models, source, f"grpc:{client}")

    def _audit_reload_refusal(self, source: str, address: str, client: str, message: str) -> None:
        """A refused reload in the audit trail and the log: at most one entry per
        ``access.REFUSAL_LOG_SECONDS``, counting the refusals since the last one (a
        caller repeating its request cannot grow the trail without bound)."""
        with self._refused_reloads_lock:
            self._refused_reloads += 1
            now = time.monotonic()
            if now < self._next_refusal_audit:
                return
            count, self._refused_reloads = self._refused_reloads, 0
            self._next_refusal_audit = now + access.REFUSAL_LOG_SECONDS
        log.warning("%s (%s) refused (%d refused since the last such line): %s", source, address, count, message)
        audit.record(self.settings, audit.SERVED_CONFIG_REFUSED,
                     f"{source} ({address}) refused ({count} refused since the last such entry): {message}",
                     actor=f"grpc:{client}")

    def _watch_config_file(self) -> None:
        """Re-read the model config file every model_config_file_poll_wait_seconds
        (TF Serving's poll); a file TF Serving would refuse is logged and the models
        served stay as they are."""
        path = self.files.config_file
        while not self._config_stop.wait(self.settings.model_config_file_poll_wait_seconds):
            try:
                with open(path, encoding="utf-8") as source:
                    text = source.read()
                if text != self._config_text:
                    self._config_text = text
                    self.reload_models(models_from_settings(self.settings), path, audit.actor_name("server"))
            except (OSError, ValueError) as exc:      # ModelConfigError is a ValueError
                log.error("model config %s not applied, the models served stay as they were: %s", path, exc)
            except Exception:   # noqa: BLE001 - the watcher must survive anything
                log.exception("re-reading the model config %s failed", path)

    def _start_config_watch(self) -> None:
        path = self.files.config_file
        if not path or self.settings.model_config_file_poll_wait_seconds <= 0:
            return
        try:
            with open(path, encoding="utf-8") as source:
                self._config_text = source.read()
        except OSError:
            self._config_text = None
        threading.Thread(target=self._watch_config_file, name="model-config-watcher", daemon=True).start()

    def _log_configuration(self) -> None:
        """What is served, as configured (the models, batching, metrics page)."""
        s = self.settings
        for model in self.files.models:
            log.info("model %s: base path %s, policy %s, labels %s", model.name, model.base_path, model.policy,
                     model.labels or "none")
        if self.batcher is not None:
            log.info("batching: max_batch_size=%d batch_timeout_micros=%d num_batch_threads=%d "
                     "max_concurrent_requests=%d", s.max_batch_size, s.batch_timeout_micros,
                     self.batcher.num_batch_threads, s.max_concurrent_requests)
        log.info("metrics: %s", self.files.metrics_path or "not exposed (monitoring_config_file)")

    def _on_grpc_refused(self, method: str, request, refusal, client: str) -> None:
        """Count an inference call (TF Serving's or V2's ModelInfer) the gate or access
        refused (its model name read from the request)."""
        if method in admission.GATED_METHODS:
            spec = getattr(request[0] if isinstance(request, tuple) else request, "model_spec", None)
            api, name = method.lower(), spec.name if spec is not None else ""
        elif method == V2_INFER:            # counted as the V2 service counts its calls: predict
            api, name = "predict", getattr(request, "model_name", "")
        else:
            return
        self.api.rejected(Call(api, GRPC, "", name, client=client), refusal)

    def _on_batch(self, key: tuple, rows: int, requests: int):
        labels = (("model_name", model_name_of(key)),)
        self.metrics.observe(M.BATCH_SIZE, labels, rows, M.BATCH_BUCKETS)
        self.metrics.observe(M.BATCH_REQUESTS, labels, requests, M.BATCH_BUCKETS)

    async def start(self) -> Ports:
        import grpc

        from serving import grpc_service, rest
        from serving.v2 import grpc as v2_grpc, rest as v2_rest

        s = self.settings
        if self.logger is not None:
            self.logger.start()
        loop = asyncio.get_running_loop()
        self._log_configuration()
        await loop.run_in_executor(None, self.models.start)
        self._start_config_watch()
        if self.freeze_gc:
            _freeze_gc()
        options = [("grpc.max_receive_message_length", s.max_request_bytes),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024),
                   ("grpc.so_reuseport", 0)]
        guard = [access.GrpcGuard(self.access, self._on_grpc_refused)] if self.access else []
        self.grpc_server = grpc.aio.server(options=options, interceptors=guard + [
            admission.GrpcGate(self.gate, self._on_grpc_refused)])
        grpc_service.add_to_server(self.grpc_server, self.api, self.reload_config)
        v2_grpc.add_to_server(self.grpc_server, self.api, self.models, self.gate)
        grpc_port = admission.bind_grpc(self.grpc_server, s.grpc_port, s.host,
                                        self.tls.grpc_credentials() if self.tls else None)
        await self.grpc_server.start()
        app = rest.make_app(self.api, s.max_request_bytes, self.files.metrics_path, self.access)
        app.settings["gate"] = self.gate
        v2_rest.add_to_app(app, self.api, s.max_request_bytes, self.access, self.models)
        # The REST handlers check max_request_bytes themselves (413 with a JSON body).
        self.http_server = admission.HTTPServer(
            app, max_body_size=s.max_request_bytes + 1, xheaders=False, idle_connection_timeout=300,
            max_header_size=rest.MAX_REQUEST_HEAD_BYTES, body_timeout=admission.body_timeout(s),
            ssl_options=self.tls.ssl_context() if self.tls else None)
        rest_port = admission.bind(self.http_server, s.rest_port, s.host)
        self.ports = Ports(rest_port, grpc_port)
        self._stopped = asyncio.Event()
        log.info("serving %s: REST %s://%s:%d, gRPC %s:%d%s",
                 ", ".join(f"model {m} from {self.models.by_name[m].base_path}" for m in self.models.names()),
                 "https" if self.tls else "http", s.host, rest_port, s.host,
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
        await self.api.finish_shadows(max(0.1, deadline - loop.time()))   # their records before the log closes
        left = max(0.0, deadline - loop.time())
        self._config_stop.set()
        await loop.run_in_executor(None, self.models.stop, left)
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


def serve(settings: config.Settings, files: Optional[ServingFiles] = None) -> None:
    """Run until SIGTERM/SIGINT, on a busy-polling loop (``busy_poll_micros``: the
    process is the server alone; BackgroundServer's loop shares its process's GIL
    with the caller and does not spin). ``files``: TF Serving's files as read by the
    command (None: read here)."""
    busy_poll.run(ModelServer(settings, freeze_gc=True, files=files).serve_forever(),
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
