"""Who may call the serving APIs, how often, and over what: bearer tokens, per-client
rate limits, TLS. Used by ``tfxops serve`` (REST ``serving/rest.py``, gRPC
``serving/grpc_service.py``) and by the logging proxy (``serving/proxy.py``,
``serving/grpc_proxy.py``); all of it is off by default (``Access.from_settings``
is None and the front ends take one branch on that).

* Tokens (``auth_tokens_file``: lines ``NAME TOKEN``; ``auth_token_env``: a variable
  holding one more): a call sends ``Authorization: Bearer TOKEN`` (gRPC metadata
  ``authorization``). Every API call needs one: inference, metadata, status; the
  metrics pages only with ``auth_metrics`` (Prometheus scrapers often cannot send
  one; the pages hold counts, no data). TF Serving has no health endpoint of its
  own: status is the health check, so a health checker sends the token too.
  Refused: REST 401 ``{"error": ...}`` with ``WWW-Authenticate``, gRPC UNAUTHENTICATED.
  The token sent is hashed and compared with every configured token's hash
  (``hmac.compare_digest``, no early exit): its time says nothing of the tokens.
* The client of a call: the token's name with tokens, else the peer's IP address.
  It names the client in the request log (``Call.client``) and in the rate limit.
* Rate limit (``rate_limit_per_second``, ``rate_limit_burst``): a token bucket per
  client (without tokens: per IPv4 address, per IPv6 /64 network); beyond it 429 / RESOURCE_EXHAUSTED with ``Retry-After`` (REST header,
  gRPC trailing metadata ``retry-after``), in seconds. At most
  ``rate_limit_max_clients`` buckets are kept: a bucket idle long enough to be full
  again is forgotten (nothing lost), and beyond the bound the longest idle one.
* TLS (``tls_cert_file``, ``tls_key_file``): both APIs; read and checked before
  any model loads, so a wrong file is an error naming it.
* ``warn_if_exposed``: a loud warning when listening beyond loopback without
  tokens (anyone who reaches the port may query) or tokens without TLS.
"""
import contextvars
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import ssl
import stat
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Optional, Tuple

import grpc

from serving import metrics as M
from serving.errors import ServingError

log = logging.getLogger("tfxops.serving")

AUTHORIZATION = "authorization"           # REST header (any case) and gRPC metadata key
RETRY_AFTER = "retry-after"               # gRPC trailing metadata key (REST: Retry-After)
REALM = 'Bearer realm="tfxops"'
MIN_TOKEN_CHARS = 16
PROMETHEUS_METRICS_PATH = "/monitoring/prometheus/metrics"   # TF Serving's (monitoring_config_file moves it)
PROXY_METRICS_PATH = "/monitoring/tfxops/metrics"             # the logging proxy's own page
METRICS_PATHS = frozenset({PROMETHEUS_METRICS_PATH, PROXY_METRICS_PATH})
GRPC_SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
GRPC_METHODS = frozenset({"Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata",
                          "GetModelStatus", "HandleReloadConfigRequest"})
REFUSAL_LOG_SECONDS = 1.0                 # at most one log line per this many seconds
CLIENT = contextvars.ContextVar("tfxops_client", default="")
"""The client of the gRPC call being handled, once ``GrpcGuard`` identified it."""


class ThrottledLog:
    """Warnings about refusals, which come in floods: at most one line per
    ``REFUSAL_LOG_SECONDS``, saying how many there were since the last line."""

    def __init__(self, what: str):
        self.what = what                      # e.g. "access: refused"
        self._count, self._next_line = 0, 0.0

    def warning(self, example: str, *args) -> None:
        """Count one; log it (``example % args``) unless a line was logged lately."""
        self._count += 1
        now = time.monotonic()
        if now >= self._next_line:
            log.warning("%s %d call(s) since the last such line, e.g. " + example,
                        self.what, self._count, *args)
            self._count, self._next_line = 0, now + REFUSAL_LOG_SECONDS


class AccessError(ValueError):
    """A token, certificate or key file that cannot be used; the message names it."""


class Refusal(ServingError):
    """A call refused before it ran, with what tells its caller how to get in:
    ``headers`` (REST) and ``retry_after`` (seconds; REST ``Retry-After``, gRPC
    trailing metadata ``retry-after``)."""

    def __init__(self, code: str, message: str, retry_after: Optional[int] = None,
                 headers: Tuple[Tuple[str, str], ...] = ()):
        super().__init__(code, message)
        self.retry_after = retry_after
        self.headers = headers + ((("Retry-After", str(retry_after)),)
                                  if retry_after is not None else ())

    def trailing_metadata(self) -> Tuple[Tuple[str, str], ...]:
        return ((RETRY_AFTER, str(self.retry_after)),) if self.retry_after is not None else ()


def unauthenticated(sent_one: bool) -> Refusal:
    if sent_one:
        return Refusal("UNAUTHENTICATED", "The bearer token sent is not valid",
                       headers=(("WWW-Authenticate", REALM + ', error="invalid_token"'),))
    return Refusal("UNAUTHENTICATED", "This API needs a bearer token: send the header "
                                      "'Authorization: Bearer TOKEN' (gRPC: metadata "
                                      "'authorization')", headers=(("WWW-Authenticate", REALM),))


# ------------------------------------------------------------------ tokens
@dataclass(frozen=True)
class TokenTable:
    """The configured tokens, as (client name, SHA-256 of the token)."""
    digests: Tuple[Tuple[str, bytes], ...]

    def identify(self, presented: str) -> Optional[str]:
        """The name of the token ``presented``, or None. Compared with every token,
        in constant time each, whatever matched before."""
        digest = _digest(presented)
        found = None
        for name, expected in self.digests:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer TOKEN`` value (None: not one)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def check_private_file(path: str, setting: str) -> None:
    """Refuse a secret file others may write (AccessError); warn when others may read it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise AccessError(f"setting '{setting}': cannot read {path} ({exc.strerror}): "
                          f"check the path and that this user may read it") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AccessError(f"setting '{setting}': {path} may be written by other users, who could "
                          f"change it: chmod 600 {path}")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s (%s) may be read by other users: chmod 600 %s", path, setting, path)


def read_token_file(path: str, setting: str = "auth_tokens_file") -> List[Tuple[str, str]]:
    """(name, token) of each line ``NAME TOKEN`` of ``path`` (blank lines and lines
    starting with # skipped); AccessError naming the line (never its token)."""
    check_private_file(path, setting)
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        raise AccessError(f"setting '{setting}': cannot read {path} ({exc.strerror}): check the path "
                          f"and that this user may read it") from None
    except UnicodeDecodeError:
        raise AccessError(f"setting '{setting}': {path} is not text: lines 'NAME TOKEN'") from None
    tokens = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise AccessError(f"{path} line {number}: expected 'NAME TOKEN' (two fields "
                              f"separated by a space), found {len(fields)} fields")
        tokens.append((fields[0], fields[1]))
    return tokens


def token_table(tokens: List[Tuple[str, str]], source: str) -> TokenTable:
    """The table of ``tokens`` (read from ``source``); AccessError for a short or
    repeated token, or a repeated name."""
    names, digests = set(), {}
    for name, token in tokens:
        if len(token) < MIN_TOKEN_CHARS:
            raise AccessError(f"{source}: the token of {name} has {len(token)} characters, fewer "
                              f"than {MIN_TOKEN_CHARS}: make one with `python3 -c \"import "
                              f"secrets; print(secrets.token_urlsafe(32))\"`")
        digest = _digest(token)
        if name in names or digest in digests:
            raise AccessError(f"{source}: {name if name in names else 'a token'} appears twice "
                              f"(each client needs its own name and token)")
        names.add(name)
        digests[digest] = name
    return TokenTable(tuple((name, digest) for digest, name in digests.items()))


def load_tokens(settings, environ: Optional[Mapping[str, str]] = None) -> Optional[TokenTable]:
    """The tokens of ``auth_tokens_file`` and ``auth_token_env`` (None: none configured)."""
    environ = os.environ if environ is None else environ
    tokens, sources = [], []
    if settings.auth_tokens_file:
        tokens += read_token_file(settings.auth_tokens_file)
        sources.append(settings.auth_tokens_file)
    variable = settings.auth_token_env
    if variable:
        if not environ.get(variable, "").strip():
            raise AccessError(f"setting 'auth_token_env' names the environment variable {variable}, "
                              f"which is not set: export it (a token), or unset the setting")
        tokens.append((variable, environ[variable].strip()))
        sources.append(f"${variable}")
    return token_table(tokens, " and ".join(sources)) if tokens else None


# ------------------------------------------------------------------ rate limit
class RateLimiter:
    """A token bucket per client: ``burst`` calls at once, refilled at ``rate`` per
    second. Used on the event loop's thread only (no lock)."""

    def __init__(self, rate: float, burst: int, max_clients: int, clock=time.monotonic):
        self.rate, self.burst, self.max_clients = float(rate), float(burst), int(max_clients)
        self.full_after = self.burst / self.rate        # an idle bucket is full again by then
        self.clock = clock
        self._buckets: "OrderedDict[str, List[float]]" = OrderedDict()   # client -> [left, when]

    def take(self, client: str) -> Optional[int]:
        """None when ``client`` may make a call now (it is counted), else the
        seconds until it may (at least 1)."""
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[client] = [self.burst, now]
        else:
            self._buckets.move_to_end(client)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return None
        return max(1, math.ceil((1.0 - bucket[0]) / self.rate))

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets idle long enough to be full (as good as absent), and the
        longest idle ones beyond ``max_clients``: room for one more."""
        buckets = self._buckets
        while buckets:
            oldest, (_, when) = next(iter(buckets.items()))
            if now - when < self.full_after and len(buckets) < self.max_clients:
                return
            del buckets[oldest]

    def __len__(self) -> int:
        return len(self._buckets)


@functools.lru_cache(maxsize=4096)
def rate_limit_key(address: str) -> str:
    """The rate-limit bucket of a client known by its IP address: an IPv6 address by
    its /64 (a host commonly holds a whole /64, and would otherwise get a bucket per
    address: no limit, and other clients' buckets evicted); IPv4 (or IPv4-mapped
    IPv6) and anything else as it is."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if ip.version == 4:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


# ------------------------------------------------------------------ the checks
class Access:
    """Tokens and rate limit of one server or proxy (either may be None)."""

    def __init__(self, tokens: Optional[TokenTable], limiter: Optional[RateLimiter],
                 metrics_need_token: bool, metrics: Optional[M.Metrics] = None,
                 metrics_paths: FrozenSet[str] = METRICS_PATHS):
        self.tokens, self.limiter = tokens, limiter
        self.metrics_need_token = metrics_need_token
        self.metrics_paths = metrics_paths      # the metrics pages (open unless metrics_need_token)
        self.metrics = metrics
        self._refusals = ThrottledLog("access: refused")

    @classmethod
    def from_settings(cls, settings, metrics: Optional[M.Metrics] = None,
                      environ: Optional[Mapping[str, str]] = None,
                      metrics_paths: FrozenSet[str] = METRICS_PATHS) -> Optional["Access"]:
        """The access checks ``settings`` ask for; None when there are none (then
        the front ends check nothing). ``metrics_paths``: where the metrics pages
        are (a monitoring_config_file's prometheus_config.path for tfxops serve).
        AccessError for an unusable token file."""
        tokens = load_tokens(settings, environ)
        limiter = None
        if settings.rate_limit_per_second > 0:
            limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst,
                                  settings.rate_limit_max_clients)
        if tokens is None and limiter is None:
            return None
        return cls(tokens, limiter, settings.auth_metrics, metrics, frozenset(metrics_paths))

    def guards(self, path: str) -> bool:
        """Whether a REST request for ``path`` is checked (all but the metrics pages,
        unless ``auth_metrics``)."""
        return self.metrics_need_token or path not in self.metrics_paths

    def admit(self, authorization: Optional[str], address: str) -> Tuple[str, Optional[Refusal]]:
        """(the call's client, None) when it may run, else (client, its refusal)."""
        client, bucket = address, None
        if self.tokens is not None:
            token = bearer_token(authorization)
            name = self.tokens.identify(token) if token is not None else None
            if name is None:
                return client, self._deny(unauthenticated(token is not None), client)
            client = bucket = name
        if self.limiter is not None:
            wait = self.limiter.take(bucket or rate_limit_key(address))
            if wait is not None:
                return client, self._deny(Refusal(
                    "RESOURCE_EXHAUSTED", f"Client {client} made more than "
                    f"{self.limiter.rate:g} calls per second (burst {self.limiter.burst:g}; "
                    f"rate_limit_per_second): retry after {wait} s", retry_after=wait), client)
        return client, None

    def _deny(self, refusal: Refusal, client: str) -> Refusal:
        """Count a refusal (metric, by code) and log it (``ThrottledLog``)."""
        if self.metrics is not None:
            self.metrics.inc(M.ACCESS_DENIED, (("code", refusal.code),))
        self._refusals.warning("%s from client %.100s: %s", refusal.code, client, refusal.message)
        return refusal


# ------------------------------------------------------------------ REST (tornado handlers)
def send_refusal(handler, refusal: Refusal) -> None:
    """Answer a tornado request with ``refusal``: its status and headers, and
    ``{"error": message}``."""
    for name, value in refusal.headers:
        handler.set_header(name, value)
    handler.set_header("Content-Type", "application/json")
    handler.set_status(refusal.http_status)
    handler.finish(json.dumps({"error": refusal.message}).encode())


def admit_request(handler, access: Optional[Access]) -> Optional[Refusal]:
    """Check a tornado request (a ``prepare``): sets ``handler.client``; a request
    ``access`` refuses is answered (``send_refusal``), its refusal returned."""
    handler.client = handler.request.remote_ip
    if access is None or not access.guards(handler.request.path):
        return None
    handler.client, refusal = access.admit(handler.request.headers.get(AUTHORIZATION), handler.client)
    if refusal is not None:
        send_refusal(handler, refusal)
    return refusal


# ------------------------------------------------------------------ gRPC
def peer_address(peer: str) -> str:
    """The IP address of a gRPC peer (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, with
    the brackets sometimes %-encoded); other peers as they are."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    address = rest.rpartition(":")[0]
    return address.replace("%5B", "").replace("%5D", "").strip("[]")


def grpc_client(context) -> str:
    """The client of a gRPC call: as ``GrpcGuard`` identified it, else its address."""
    return client_name(*grpc_caller(context))


def grpc_caller(context) -> Tuple[str, str]:
    """(client, peer) of a gRPC call, cheap enough for every call: the client as
    ``GrpcGuard`` identified it ("" without access checks) and, when there is none,
    the raw peer string, for ``client_name`` where the log record is built."""
    client = CLIENT.get()
    return client, ("" if client else context.peer())


def client_name(client: str, peer: str) -> str:
    """The client of a call: ``client`` when known, else the address of ``peer``."""
    return client or peer_address(peer)


def authorization_metadata(metadata) -> Optional[str]:
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            return value if isinstance(value, str) else None
    return None


class GrpcGuard(grpc.aio.ServerInterceptor):
    """``Access`` on every unary method of TF Serving's services, for a grpc.aio
    server (installed only when there is one). ``on_refused(method, request,
    refusal, client)`` is called for a refused call before it is answered."""

    def __init__(self, access: Access, on_refused=None):
        self.access = access
        self.on_refused = on_refused
        self._handlers: Dict[str, grpc.RpcMethodHandler] = {}   # known method -> guarded

    async def intercept_service(self, continuation, details):
        handler = self._handlers.get(details.method)
        if handler is not None:
            return handler
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, _, method = details.method.lstrip("/").rpartition("/")
        handler = handler._replace(unary_unary=self._guarded(handler.unary_unary, method))
        if service in GRPC_SERVICES and method in GRPC_METHODS:   # names come from callers
            self._handlers[details.method] = handler
        return handler

    def _guarded(self, behavior, method: str):
        access, on_refused = self.access, self.on_refused

        async def guarded(request, context):
            client, refusal = access.admit(authorization_metadata(context.invocation_metadata()),
                                           peer_address(context.peer()))
            if refusal is not None:
                if on_refused is not None:
                    on_refused(method, request, refusal, client)
                await context.abort(refusal.grpc_code, refusal.message,
                                    trailing_metadata=refusal.trailing_metadata())
            CLIENT.set(client)
            return await behavior(request, context)
        return guarded


# ------------------------------------------------------------------ model config reloads
def is_loopback_address(address: str) -> bool:
    """Whether a caller's IP address (``peer_address``) is this machine's loopback:
    127.0.0.0/8, ::1, or 127.x as an IPv4-mapped IPv6 address."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or bool(ip.version == 6 and ip.ipv4_mapped and ip.ipv4_mapped.is_loopback)


@dataclass(frozen=True)
class ReloadPermission:
    """Who may change the served models with gRPC HandleReloadConfigRequest: with
    tokens, the token names listed in ``reload_config_clients``; without tokens,
    callers on this machine only (a loopback peer)."""
    tokens_on: bool
    clients: FrozenSet[str]

    @classmethod
    def from_settings(cls, settings, access: Optional[Access]) -> "ReloadPermission":
        return cls(access is not None and access.tokens is not None,
                   frozenset(settings.reload_config_clients))

    def refusal(self, client: str, address: str) -> Optional[Refusal]:
        """None when the caller (``client``: its token name with tokens; ``address``:
        its IP address) may reload, else its PERMISSION_DENIED."""
        if self.tokens_on:
            if client in self.clients:
                return None
            return Refusal("PERMISSION_DENIED", f"client {client} may not reload the model config "
                           f"(HandleReloadConfigRequest changes the models served): list its token's "
                           f"name in the setting reload_config_clients (for tfxops promote/rollback: "
                           f"the name of the token it sends, --token-file or auth_token_env)")
        if is_loopback_address(address):
            return None
        return Refusal("PERMISSION_DENIED", f"HandleReloadConfigRequest from {address} refused: without "
                       f"tokens only callers on this machine (127.0.0.1, ::1) may reload the model "
                       f"config. To reload from elsewhere, set auth_tokens_file and list the caller's "
                       f"token name in the setting reload_config_clients")


# ------------------------------------------------------------------ TLS
@dataclass(frozen=True)
class Tls:
    """A server's certificate (chain) and private key, PEM, as read at start."""
    cert_file: str
    key_file: str
    cert: bytes
    key: bytes

    def ssl_context(self) -> ssl.SSLContext:
        """For tornado (REST): TLS 1.2 or later."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)])


def load_tls(settings) -> Optional[Tls]:
    """The certificate and key of ``tls_cert_file`` / ``tls_key_file`` (None: plain
    text), read and checked to belong together; AccessError naming the file."""
    if not settings.tls_cert_file:
        return None
    check_private_file(settings.tls_key_file, "tls_key_file")
    files = {}
    for setting in ("tls_cert_file", "tls_key_file"):
        path = getattr(settings, setting)
        try:
            files[setting] = open(path, "rb").read()
        except OSError as exc:
            raise AccessError(f"setting '{setting}': cannot read {path} ({exc.strerror}): "
                              f"check the path and that this user may read it") from None
    tls = Tls(settings.tls_cert_file, settings.tls_key_file, files["tls_cert_file"],
              files["tls_key_file"])
    try:
        tls.ssl_context()
    except (ssl.SSLError, ValueError) as exc:
        raise AccessError(f"settings 'tls_cert_file' {tls.cert_file} and 'tls_key_file' "
                          f"{tls.key_file} are not a PEM certificate and its private key "
                          f"({getattr(exc, 'reason', None) or exc})") from None
    return tls


# ------------------------------------------------------------------ exposure
def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


def exposure_warnings(host: str, access: Optional[Access], tls: Optional[Tls]) -> List[str]:
    """What is unsafe about listening on ``host`` with these checks."""
    if is_loopback(host):
        return []
    if access is None or access.tokens is None:
        return [f"listening on {host or 'every address'}, beyond this machine, WITHOUT "
                f"AUTHENTICATION: anyone who reaches the port can query the model without limit. "
                f"To secure it (and silence this warning), set auth_tokens_file (or auth_token_env); "
                f"or bind to 127.0.0.1 (host) when only this machine calls. In a container, "
                f"publishing the port on 127.0.0.1 does not make this bind private: other containers "
                f"on its network can still call it"]
    if tls is None:
        return [f"listening on {host or 'every address'} with tokens but WITHOUT TLS: tokens "
                f"and data cross the network in clear text. Set tls_cert_file and tls_key_file"]
    return []


def warn_if_exposed(host: str, access: Optional[Access], tls: Optional[Tls], who: str) -> None:
    """``exposure_warnings`` on stderr and in the log."""
    for warning in exposure_warnings(host, access, tls):
        log.warning("%s: %s", who, warning)
        print(f"\n*** WARNING *** {who}: {warning}\n", file=sys.stderr, flush=True)
