"""Admission and draining: how many inference requests are in flight, whether one
more may start, and a shutdown that answers every request already accepted.

* ``Gate``: REST (``GatedHandler``, the server's and the proxy's handlers) and gRPC
  (``GrpcGate``, an interceptor on Predict/Classify/Regress/MultiInference) count
  the calls in flight in one integer, on the event loop thread. A call counts
  while the server works on it: from the moment its request is complete (a REST
  body fully read, a gRPC message received) until its work ends, whether or not
  its client is still there (gRPC cancels the handler of a call whose client
  left; the model's future, ``serving.batching.ModelFuture``, lets that
  cancellation through only once the model returned). A client still sending
  its body holds a connection, not a slot, and is dropped after
  ``request_body_timeout_seconds``.
  Beyond ``max_concurrent_requests`` a call is answered at once with
  RESOURCE_EXHAUSTED (REST 429 ``{"error": ...}``) and ``Retry-After: 1`` (gRPC
  trailing metadata ``retry-after``), as the per-client rate limit answers
  (``serving/access.py``), and a message naming the setting; a burst never
  becomes connection resets. Status, metadata and metrics are not counted: they
  stay answerable. A shutdown's refusals stay UNAVAILABLE (503): another replica
  may answer at once.
* ``drain_and_close``: stop listening, answer new requests on open connections
  with 503 (and ``Connection: close``), wait up to the grace period until the
  calls in flight are answered, the bodies still arriving are read and answered
  503, and every answer is written out; then close the connections. (Tornado's
  ``close_all_connections`` alone closes connections whose request is still
  being computed.)
* ``raise_open_files_limit``: one open file per connection (two in the proxy),
  so ``tfxops serve`` raises its soft RLIMIT_NOFILE to the hard limit and warns
  when that is too low for ``max_concurrent_requests``.
"""
import asyncio
import functools
import logging
import resource
import time
import weakref
from typing import Optional

import grpc
import tornado.httpserver
import tornado.ioloop
import tornado.netutil

from serving.access import Refusal, grpc_client, send_refusal

log = logging.getLogger("tfxops.serving")

GATED_METHODS = frozenset({"Predict", "Classify", "Regress", "MultiInference"})
GRACE_SECONDS = 10.0     # how long a shutdown waits for the requests in flight
# Listen backlog of the REST port: connections the kernel queues before the server
# accepts them (Linux caps it at net.core.somaxconn, 4096 here; gRPC's listener
# takes somaxconn too). Tornado's default, 128, turned bursts into resets.
LISTEN_BACKLOG = 4096
# Open files besides the connections of calls in flight: the model's and the
# request log's files, gRPC's and TensorFlow's descriptors, idle connections.
OPEN_FILES_HEADROOM = 256
BODY_SWEEP_SECONDS = 1.0  # how often bodies still arriving are looked at (body_timeout)


class Gate:
    """Inference calls in flight (``active``) and how many may be (``limit``:
    ``max_concurrent_requests``, 0 once draining). Used on the event loop thread
    only, so a plain integer: one increment and one decrement per call."""

    def __init__(self, limit: int):
        if int(limit) < 1:
            raise ValueError(f"max_concurrent_requests must be at least 1, got {limit}")
        self.limit = self.configured = int(limit)
        self.active = 0

    def enter(self) -> Optional[Refusal]:
        """Count a call in (until ``leave``), or the error to answer it with when
        it may not start (then it is not counted)."""
        if self.active >= self.limit:
            return self.refusal()
        self.active += 1
        return None

    def leave(self) -> None:
        self.active -= 1

    def drain(self) -> None:
        """Refuse every new request from now on (shutdown)."""
        self.limit = 0

    @property
    def draining(self) -> bool:
        return self.limit == 0

    def refusal(self) -> Refusal:
        """The error a request that may not start is answered with."""
        if self.draining:
            return Refusal("UNAVAILABLE", "The server is shutting down; retry the request "
                                          "(another replica will answer it)")
        return Refusal("RESOURCE_EXHAUSTED", f"Too many requests in flight: the server takes at "
                                             f"most {self.configured} at once "
                                             f"(max_concurrent_requests); retry later",
                       retry_after=1)


class GatedHandler:
    """Mixin of the tornado handlers of inference calls (the server's and the
    proxy's): the ``post`` a subclass defines is counted by the application's
    ``gate`` from when it starts (tornado calls it once the body is read) until
    it returns, its answer written, also when the client left meanwhile (the
    model still runs). A call the gate refuses gets its 429 (503 when shutting
    down) instead of ``post``: after its body was read, so a client still
    sending sees the answer, not a reset; so does a call whose ``prepare`` set
    ``denied`` (``serving.access``: no token, over its rate), which takes no slot.
    ``refused`` is called for it first."""

    denied: Optional[Refusal] = None     # set by prepare() when access refuses the call

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "post" in vars(cls):
            cls.post = _counted(vars(cls)["post"])

    def refused(self, refusal: Refusal) -> None:
        """A call the gate refused, before its answer is sent (e.g. to count it)."""


def _counted(post):
    @functools.wraps(post)
    async def counted(self, *args, **kwargs):
        if self._finished:       # answered while its body was read (413)
            return None
        if self.denied is not None:
            return _answer_refused(self, self.denied, False)
        gate = self.application.settings["gate"]
        refusal = gate.enter()
        if refusal is not None:
            return _answer_refused(self, refusal, gate.draining)
        try:
            return await post(self, *args, **kwargs)
        finally:
            gate.leave()
    return counted


def _answer_refused(handler, refusal: Refusal, draining: bool) -> None:
    handler.refused(refusal)
    if draining:
        handler.set_header("Connection", "close")
    send_refusal(handler, refusal)


class GrpcGate(grpc.aio.ServerInterceptor):
    """The gate on TF Serving's inference methods, for a grpc.aio server. The
    handler of an inference method is looked up once and kept (the same for every
    call: true of registered services and of the logging proxy's forwarder);
    other methods, whose names callers choose, are looked up on every call."""

    def __init__(self, gate: Gate, on_refused=None):
        self.gate = gate
        self.on_refused = on_refused        # (method, request, refusal, client) of a refused call
        self._handlers = {}                 # full method name -> gated handler

    async def intercept_service(self, continuation, details):
        handler = self._handlers.get(details.method)
        if handler is not None:
            return handler
        handler = await continuation(details)
        method = details.method.rpartition("/")[2]
        if handler is None or handler.unary_unary is None or method not in GATED_METHODS:
            return handler
        handler = handler._replace(unary_unary=self._gated(handler.unary_unary, method))
        self._handlers[details.method] = handler
        return handler

    def _gated(self, behavior, method: str):
        gate, on_refused = self.gate, self.on_refused

        async def gated(request, context):
            refusal = gate.enter()
            if refusal is not None:
                if on_refused is not None:
                    on_refused(method, request, refusal, grpc_client(context))
                await context.abort(refusal.grpc_code, refusal.message,
                                    trailing_metadata=refusal.trailing_metadata())
            try:     # a caller that leaves cancels this only once the model returned
                return await behavior(request, context)   # (serving.batching.ModelFuture)
            finally:
                gate.leave()
        return gated


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer, remembering each connection's current request, so
    that a shutdown can have every answer in flight close its connection and wait
    until they are all written out, and so that stalled bodies are dropped:
    ``body_timeout`` is tornado's setting, but checked for all connections every
    ``BODY_SWEEP_SECONDS`` instead of with a timer per request (tornado's
    ``gen.with_timeout``, a cost on every request); a body is dropped
    between ``body_timeout`` and ``body_timeout`` + 2 sweeps after it started."""

    def initialize(self, *args, body_timeout: Optional[float] = None, **kwargs):
        super().initialize(*args, **kwargs)
        self._requests = weakref.WeakKeyDictionary()   # connection -> its current request
        self._receiving = {}          # request whose body is arriving -> first seen so
        self._sweeper = None
        if body_timeout is not None:
            self.body_timeout = body_timeout
            self._sweeper = tornado.ioloop.PeriodicCallback(
                self._drop_stalled_bodies, 1000 * min(BODY_SWEEP_SECONDS, body_timeout / 4))
            self._sweeper.start()

    def start_request(self, server_conn, request_conn):
        self._requests[server_conn] = request_conn
        return super().start_request(server_conn, request_conn)

    def _drop_stalled_bodies(self) -> None:
        now, seen, self._receiving = time.monotonic(), self._receiving, {}
        dropped = 0
        for server_conn, request in list(self._requests.items()):
            if server_conn.stream.closed() or not _receiving(request):
                continue
            since = seen.get(request, now)
            if now - since < self.body_timeout:
                self._receiving[request] = since
            else:
                server_conn.stream.close()
                dropped += 1
        if dropped:
            log.info("closed %d connection(s) whose request body was not complete after %g s "
                     "(request_body_timeout_seconds)", dropped, self.body_timeout)

    async def close_all_connections(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
        await super().close_all_connections()

    def close_after_answers(self) -> None:
        """Every request being answered closes its connection after the answer,
        announced with ``Connection: close`` (so its client sends nothing more on
        it). Tornado has no public call for this; its own flag does it."""
        for request_conn in list(self._requests.values()):
            request_conn._disconnect_on_finish = True    # noqa: SLF001

    def unanswered(self) -> int:
        """Requests whose head was read and whose answer is not written out yet
        (a body still arriving, a call computed, an answer being sent), on open
        connections."""
        return sum(1 for server_conn, request in list(self._requests.items())
                   if not server_conn.stream.closed() and (
                       server_conn.stream.writing() or _unanswered(request)))


# A request's state, read from tornado's HTTP1Connection (it has no public call).
def _receiving(request) -> bool:
    """Whether its head was read and its body is still arriving."""
    return request._request_start_line is not None and not request._read_finished  # noqa: SLF001


def _unanswered(request) -> bool:
    """Whether its head was read and its answer is not finished."""
    return request._request_start_line is not None and not request._write_finished  # noqa: SLF001


def body_timeout(settings) -> float:
    """``request_body_timeout_seconds``: how long a REST request body may take to
    arrive in full before its connection is closed (checked)."""
    value = float(settings.request_body_timeout_seconds)
    if not value > 0:
        raise ValueError(f"request_body_timeout_seconds must be more than 0, got {value}")
    return value


def bind(server: HTTPServer, port: int, host: str) -> int:
    """Listen on ``host:port`` (backlog ``LISTEN_BACKLOG``); the port bound. OSError
    naming the port and the setting when it cannot be bound."""
    try:
        sockets = tornado.netutil.bind_sockets(port, address=host, reuse_port=False,
                                               backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise port_error("REST", host, port, "rest_port", exc.strerror or str(exc)) from None
    server.add_sockets(sockets)
    return sockets[0].getsockname()[1]


def bind_grpc(server, port: int, host: str, credentials=None) -> int:
    """``server.add_insecure_port`` (``add_secure_port`` with TLS ``credentials``);
    OSError naming the port and the setting when it cannot be bound (grpc raises
    RuntimeError, or returns 0 in older versions)."""
    try:
        bound = server.add_insecure_port(f"{host}:{port}") if credentials is None else \
            server.add_secure_port(f"{host}:{port}", credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise port_error("gRPC", host, port, "grpc_port", "in use, or not an address here")
    return bound


def port_error(api: str, host: str, port: int, setting: str, why: str) -> OSError:
    return OSError(f"cannot listen for {api} on {host}:{port} ({why}): stop the process "
                   f"using it, or choose another port with --set {setting}=PORT")


async def drain_and_close(server: HTTPServer, gate: Gate, grace: float) -> None:
    """Stop listening; wait up to ``grace`` seconds until no call is in flight and
    every request received is answered and its answer written out (new calls,
    and bodies still arriving, get 503); close."""
    gate.drain()
    server.stop()
    server.close_after_answers()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while (gate.active or server.unanswered()) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    if gate.active or server.unanswered():
        log.warning("shutdown: after %g s, %d calls still in flight (REST and gRPC) and %d "
                    "REST requests unanswered (computing, or their bodies still arriving); "
                    "closing their connections", grace, gate.active, server.unanswered())
    try:
        await asyncio.wait_for(server.close_all_connections(), max(0.1, deadline - loop.time()))
    except asyncio.TimeoutError:
        pass


def raise_open_files_limit(max_concurrent_requests: int) -> int:
    """Raise this process's soft limit of open files to its hard limit (each
    connection is one; a call in flight through the proxy, two), and warn when
    the limit is below 2 x ``max_concurrent_requests`` + ``OPEN_FILES_HEADROOM``:
    connections beyond it are not accepted. The soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open files: soft limit raised from %d to %d (the hard limit)", soft, hard)
            soft = hard
        except (ValueError, OSError) as exc:    # an unlimited hard limit the kernel caps
            log.info("open files: soft limit %d kept (%s)", soft, exc)
    needed = 2 * max_concurrent_requests + OPEN_FILES_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open files: the limit is %d, below the %d that max_concurrent_requests=%d "
                    "needs (2 per call in flight + %d): connections beyond it are not accepted. "
                    "Raise the hard limit (`ulimit -n %d` as root before starting, LimitNOFILE= "
                    "in systemd, `--ulimit nofile=%d` in Docker) or lower max_concurrent_requests",
                    soft, needed, max_concurrent_requests, OPEN_FILES_HEADROOM, needed, needed)
    return soft
