"""The errors a request can end in, with TF Serving's codes.

A ``ServingError`` carries a ``tensorflow.error.Code`` name (what TF Serving's
``Status`` holds) and maps it the way TF Serving does: to a gRPC status code, and
to an HTTP status for the REST API (``http_rest_api_handler``/``ToHTTPStatusCode``).
"""
import grpc

# tensorflow.error.Code name -> (HTTP status, grpc.StatusCode)
_CODES = {
    "OK": (200, grpc.StatusCode.OK),
    "CANCELLED": (499, grpc.StatusCode.CANCELLED),
    "UNKNOWN": (500, grpc.StatusCode.UNKNOWN),
    "INVALID_ARGUMENT": (400, grpc.StatusCode.INVALID_ARGUMENT),
    "DEADLINE_EXCEEDED": (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    "NOT_FOUND": (404, grpc.StatusCode.NOT_FOUND),
    "ALREADY_EXISTS": (409, grpc.StatusCode.ALREADY_EXISTS),
    "PERMISSION_DENIED": (403, grpc.StatusCode.PERMISSION_DENIED),
    "UNAUTHENTICATED": (401, grpc.StatusCode.UNAUTHENTICATED),
    "RESOURCE_EXHAUSTED": (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    "FAILED_PRECONDITION": (400, grpc.StatusCode.FAILED_PRECONDITION),
    "ABORTED": (409, grpc.StatusCode.ABORTED),
    "OUT_OF_RANGE": (400, grpc.StatusCode.OUT_OF_RANGE),
    "UNIMPLEMENTED": (501, grpc.StatusCode.UNIMPLEMENTED),
    "INTERNAL": (500, grpc.StatusCode.INTERNAL),
    "UNAVAILABLE": (503, grpc.StatusCode.UNAVAILABLE),
    "DATA_LOSS": (500, grpc.StatusCode.DATA_LOSS),
}


MAX_MESSAGE_CHARS = 1000     # messages quote what callers sent: never more than this


class ServingError(Exception):
    """A request failed with a TF Serving status code and a message for the caller
    (at most ``MAX_MESSAGE_CHARS``: a message never echoes unbounded input)."""

    def __init__(self, code: str, message: str):
        if code not in _CODES:
            raise ValueError(f"unknown error code {code!r}")
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} " \
                      f"more characters)"
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _CODES[self.code][0]

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return _CODES[self.code][1]

    def __repr__(self):
        return f"ServingError({self.code}, {self.message!r})"


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def internal_error(doing: str) -> ServingError:
    """INTERNAL for an unexpected failure while ``doing`` something: the traceback
    goes to the server's log (under an id the caller gets), never to the caller."""
    import logging
    import secrets

    incident = secrets.token_hex(4)
    logging.getLogger("tfxops.serving").exception("internal error %s while %s", incident, doing)
    return ServingError("INTERNAL", f"internal error while {doing}; the server's log has the "
                                    f"details under incident {incident}")


def from_tf_error(exc) -> ServingError:
    """A tf.errors.OpError (raised by a Session run) as a ServingError with its code."""
    import tensorflow as tf  # local: this module is imported by light clients too

    name = tf.errors.error_code_from_exception_type(type(exc)) if hasattr(
        tf.errors, "error_code_from_exception_type") else None
    code = getattr(exc, "error_code", None) if name is None else name
    try:
        from tensorflow.core.protobuf import error_codes_pb2
        code_name = error_codes_pb2.Code.Name(int(code))
    except Exception:  # pragma: no cover - defensive
        code_name = "INTERNAL"
    if code_name not in _CODES:
        code_name = "INTERNAL"
    return ServingError(code_name, getattr(exc, "message", str(exc)))


def http_status_to_code(status: int) -> str:
    """Best-effort inverse, for the proxy: an upstream HTTP status as a code name."""
    for name, (http, _) in _CODES.items():
        if http == status:
            return name
    return "UNKNOWN" if status >= 400 else "OK"
