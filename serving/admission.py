"""Admission and draining: how many inference requests are in flight, whether one
more may start, and a shutdown that answers every request already accepted.

* ``Gate``: REST (``InferenceHandler.prepare``/``on_finish``) and gRPC
  (``GrpcGate``, an interceptor on Predict/Classify/Regress/MultiInference) count
  the requests in flight in one integer, on the event loop thread. Beyond
  ``max_concurrent_requests`` a request is answered at once with UNAVAILABLE
  (REST 503 ``{"error": ...}``), the code TF Serving answers a full batch queue
  with, and a message naming the setting; a burst never becomes connection
  resets. Status, metadata and metrics are not counted: they stay answerable.
* ``drain_and_close``: stop listening, answer new requests on open connections
  with 503 (and ``Connection: close``), wait up to the grace period until the
  requests in flight are answered and their answers written out, then close the
  connections. (Tornado's ``close_all_connections`` alone closes connections
  whose request is still being computed.)
"""
import asyncio
import logging
import weakref
from typing import Optional

import grpc
import tornado.httpserver
import tornado.netutil

from serving.errors import ServingError

log = logging.getLogger("tfxops.serving")

GATED_METHODS = frozenset({"Predict", "Classify", "Regress", "MultiInference"})
GRACE_SECONDS = 10.0     # how long a shutdown waits for the requests in flight
# Listen backlog of the REST port: connections the kernel queues before the server
# accepts them (Linux caps it at net.core.somaxconn, 4096 here; gRPC's listener
# takes somaxconn too). Tornado's default, 128, turned bursts into resets.
LISTEN_BACKLOG = 4096


class Gate:
    """Inference requests in flight (``active``) and how many may be (``limit``:
    ``max_concurrent_requests``, 0 once draining). Used on the event loop thread
    only, so a plain integer: one increment and one decrement per request."""

    def __init__(self, limit: int):
        if int(limit) < 1:
            raise ValueError(f"max_concurrent_requests must be at least 1, got {limit}")
        self.limit = self.configured = int(limit)
        self.active = 0

    def enter(self) -> Optional[ServingError]:
        """Count a request in (until ``leave``); the error to answer it with when
        it may not start (then it only waits for its answer to be sent)."""
        refused = self.active >= self.limit
        self.active += 1
        return self.refusal() if refused else None

    def leave(self) -> None:
        self.active -= 1

    def drain(self) -> None:
        """Refuse every new request from now on (shutdown)."""
        self.limit = 0

    @property
    def draining(self) -> bool:
        return self.limit == 0

    def refusal(self) -> ServingError:
        """The error a request that may not start is answered with."""
        if self.draining:
            return ServingError("UNAVAILABLE", "The server is shutting down; retry the request "
                                               "(another replica will answer it)")
        return ServingError("UNAVAILABLE", f"Too many requests in flight: the server takes at "
                                           f"most {self.configured} at once "
                                           f"(max_concurrent_requests); retry later")


class GrpcGate(grpc.aio.ServerInterceptor):
    """The gate on TF Serving's inference methods, for a grpc.aio server. The
    handler of a method is looked up once and kept (the same for every call: true
    of registered services and of the logging proxy's forwarder)."""

    def __init__(self, gate: Gate, on_refused=None):
        self.gate = gate
        self.on_refused = on_refused        # (method, request) of a refused call
        self._handlers = {}                 # method -> gated handler

    async def intercept_service(self, continuation, details):
        handler = self._handlers.get(details.method)
        if handler is None:
            handler = await continuation(details)
            if (handler is not None and handler.unary_unary is not None
                    and details.method.rpartition("/")[2] in GATED_METHODS):
                handler = handler._replace(unary_unary=self._gated(
                    handler.unary_unary, details.method.rpartition("/")[2]))
            if handler is not None:
                self._handlers[details.method] = handler
        return handler

    def _gated(self, behavior, method: str):
        gate = self.gate

        async def gated(request, context):
            refusal = gate.enter()
            try:
                if refusal is None:
                    return await behavior(request, context)
            finally:
                gate.leave()
            if self.on_refused is not None:
                self.on_refused(method, request)
            await context.abort(refusal.grpc_code, refusal.message)
        return gated


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer, remembering each connection's current request, so
    that a shutdown can have every answer in flight close its connection and wait
    until they are all written out."""

    def initialize(self, *args, **kwargs):
        super().initialize(*args, **kwargs)
        self._requests = weakref.WeakKeyDictionary()   # connection -> its current request

    def start_request(self, server_conn, request_conn):
        self._requests[server_conn] = request_conn
        return super().start_request(server_conn, request_conn)

    def close_after_answers(self) -> None:
        """Every request being answered closes its connection after the answer,
        announced with ``Connection: close`` (so its client sends nothing more on
        it). Tornado has no public call for this; its own flag does it."""
        for request_conn in list(self._requests.values()):
            request_conn._disconnect_on_finish = True    # noqa: SLF001

    def writing(self) -> bool:
        """Whether an answer is still being written to a connection."""
        return any(c.stream.writing() for c in list(self._requests) if not c.stream.closed())


def bind(server: HTTPServer, port: int, host: str) -> int:
    """Listen on ``host:port`` (backlog ``LISTEN_BACKLOG``); the port bound."""
    sockets = tornado.netutil.bind_sockets(port, address=host, reuse_port=False,
                                           backlog=LISTEN_BACKLOG)
    server.add_sockets(sockets)
    return sockets[0].getsockname()[1]


async def drain_and_close(server: HTTPServer, gate: Gate, grace: float) -> None:
    """Stop listening; wait up to ``grace`` seconds until no request is in flight
    and every answer is written out (new requests meanwhile get 503); close."""
    gate.drain()
    server.stop()
    server.close_after_answers()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while (gate.active or server.writing()) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    if gate.active:
        log.warning("shutdown: %d requests still in flight after %g s; closing their "
                    "connections", gate.active, grace)
    try:
        await asyncio.wait_for(server.close_all_connections(), max(0.1, deadline - loop.time()))
    except asyncio.TimeoutError:
        pass
