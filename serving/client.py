"""A small client for TF Serving's APIs (ours or the real one), shared by
``tfxops predict``, the tests and the benchmark.

Rows are dicts of raw values (CSV strings or typed values); they are sent as
serialized tf.Examples (CsvExampleGen's encoding, as ``core.examples.row_to_example``
makes them) to ``serving_default`` — over gRPC as a PredictRequest, over REST as
``{"instances": [{"b64": ...}]}``. For a secured server (``serving/access.py``):
``token`` (sent as ``Authorization: Bearer``, gRPC metadata ``authorization``; read
it with ``read_token``, never from a command line) and ``ca_file`` (TLS, the CA
that signed the server's certificate).

The REST client imports neither TensorFlow nor gRPC (``tfxops predict`` starts in a
fraction of a second): the examples are written in protobuf's wire format here
(``serialize_rows``; tests/e2e/test_terminal_predict.py parses them back with
TensorFlow and compares them with ``row_to_example``'s). gRPC needs the
tensorflow-serving-api messages, which import TensorFlow: ``GrpcClient`` does, when made.
"""
import base64
import math
import os
import socket
import ssl
import struct
import time
from typing import Dict, Iterable, List, Optional, Sequence

import requests

from core import features as F
from core.protowire import length_delimited, varint
from core.request_log import new_request_id


def serialize_rows(rows: Iterable[Dict], columns: Optional[Sequence[str]] = None) -> List[bytes]:
    cols = list(columns or F.SERVING_FEATURES)
    return [serialize_row(r, [c for c in cols if c in r]) for r in rows]


def serialize_row(row: Dict[str, object], columns: Sequence[str]) -> bytes:
    """A tf.Example of ``row``'s ``columns``, serialized: each typed by
    ``core.features.column_type``; an empty cell (None, "", NaN) is a feature with
    an empty list, as CsvExampleGen encodes it. ValueError naming the column whose
    value is not of its type."""
    entries = b""
    for column in columns:
        kind, value = F.column_type(column), row.get(column)
        try:
            feature = _feature(kind, value)
        except (ValueError, OverflowError):
            raise ValueError(f"{column}: {value!r} is not {'an int' if kind == 'int' else 'a float'} "
                             f"(the feature's type)") from None
        entry = length_delimited(1, column.encode()) + length_delimited(2, feature)
        entries += length_delimited(1, entry)              # Features.feature: a map entry
    return length_delimited(1, entries)                    # Example.features


def _feature(kind: str, value) -> bytes:
    """A Feature message: int64_list (3) / float_list (2) / bytes_list (1), packed numbers."""
    missing = value is None or value == "" or value == b"" or (isinstance(value, float) and value != value)
    if kind == "int":
        return length_delimited(3, b"" if missing else length_delimited(1, varint(int(float(value)))))
    if kind == "float":
        return length_delimited(2, b"" if missing else length_delimited(1, _float32(float(value))))
    data = value if isinstance(value, bytes) else str(value).encode()
    return length_delimited(1, b"" if missing else length_delimited(1, data))


def _float32(value: float) -> bytes:
    """As protobuf stores a double in a float field: beyond float32's range, infinity."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, value))


def predict_request(model_name: str, serialized: Sequence[bytes],
                    signature_name: str = F.DEFAULT_SIGNATURE,
                    version: Optional[int] = None):
    """A ``tensorflow.serving.PredictRequest`` (imports TensorFlow)."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    tensor = request.inputs["examples"]
    tensor.dtype = 7  # DT_STRING
    tensor.tensor_shape.dim.add().size = len(serialized)
    tensor.string_val.extend(serialized)
    return request


def wait_listening(port: int, proc=None, host: str = "127.0.0.1", timeout: float = 180.0) -> None:
    """Wait until a server (``proc``: its subprocess.Popen, checked for an early exit)
    accepts connections on ``port``; RuntimeError when it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not listen on {host}:{port} within {timeout:g} s")


def rest_body(serialized: Sequence[bytes], signature_name: str = F.DEFAULT_SIGNATURE) -> Dict:
    return {"signature_name": signature_name,
            "instances": [{"b64": base64.b64encode(s).decode("ascii")} for s in serialized]}


class ServingError(RuntimeError):
    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def read_token(token_file: Optional[str] = None, token_env: Optional[str] = None) -> Optional[str]:
    """A client's token: the first line of ``token_file`` (a file only its owner may
    write), else the environment variable ``token_env``; None when neither is given.
    ValueError naming the file or variable when it holds none."""
    if token_file:
        from serving.access import check_private_file
        check_private_file(token_file, "--token-file")
        try:
            lines = [line.strip() for line in open(token_file, encoding="utf-8").read().splitlines()]
        except OSError as exc:
            raise ValueError(f"--token-file {token_file}: cannot read it ({exc.strerror}): pass a file "
                             f"holding the token on one line, readable by this user") from None
        except UnicodeDecodeError:
            raise ValueError(f"--token-file {token_file} is not text: pass a file holding the token "
                             f"on one line") from None
        token = next((line for line in lines if line and not line.startswith("#")), "")
        if not token:
            raise ValueError(f"{token_file} holds no token (one line: the token)")
        return token
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise ValueError(f"the environment variable {token_env} holds no token: export it")
        return token
    return None


def check_ca_file(ca_file: str) -> None:
    """ValueError naming ``ca_file`` when it is not a readable PEM certificate (bundle)."""
    try:
        ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError:
        raise ValueError(f"--ca-file {ca_file} holds no PEM certificate: pass the certificate of the "
                         f"CA that signed the server's certificate (its tls_cert_file, when "
                         f"self-signed)") from None
    except OSError as exc:
        raise ValueError(f"--ca-file {ca_file}: cannot read it ({exc.strerror}): check the path "
                         f"and that this user may read it") from None


class Unreachable(ConnectionError):
    """No answer from the server: nothing listens there, the host is unknown or
    silent, TLS does not match. The message names the address and what to do."""


START_ONE = "start one (`tfxops serve`), or pass --host and --port of the one that runs"


def rest_unreachable(url: str, exc: requests.RequestException, timeout: float) -> Unreachable:
    """What a failed REST call to ``url`` means for the person who made it."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return Unreachable(f"no TLS server at {url} that this client trusts (the handshake failed): pass "
                           f"--ca-file with the certificate of the CA that signed the server's (a self-signed "
                           f"server: its own certificate), or leave --ca-file out for a server without TLS")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Unreachable(f"no server at {url} (no answer within {timeout:g} s): check --host and --port, "
                           f"and that no firewall is in between")
    if isinstance(exc, requests.exceptions.Timeout):
        return Unreachable(f"the server at {url} took more than {timeout:g} s to answer: send fewer rows, "
                           f"or look at the server's log")
    if any(marker in text for marker in ("Name or service not known", "name resolution", "nodename nor servname")):
        return Unreachable(f"no server at {url} (the host name does not resolve): check --host")
    if "Connection refused" in text:
        return Unreachable(f"no server at {url} (connection refused): {START_ONE}")
    if any(marker in text for marker in ("RemoteDisconnected", "Connection aborted", "Connection reset")):
        return Unreachable(f"the server at {url} closed the connection without answering: if it serves TLS, "
                           f"pass --ca-file; else look at the server's log")
    return Unreachable(f"no server at {url} (cannot connect): {START_ONE}")


class RestClient:
    def __init__(self, host: str, port: int, model_name: str, timeout: float = 30.0,
                 token: Optional[str] = None, ca_file: Optional[str] = None):
        self.base = f"{'https' if ca_file else 'http'}://{host}:{port}/v1/models/{model_name}"
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.verify = ca_file or True      # per request: a session's is overridden by REQUESTS_CA_BUNDLE
        self.timeout = timeout

    def predict_serialized(self, serialized: Sequence[bytes], version: Optional[int] = None,
                           request_id: Optional[str] = None) -> List[float]:
        """The predictions; ``ServingError`` when the server refuses, ``Unreachable``
        when no server answers."""
        url = self.base + (f"/versions/{version}" if version is not None else "") + ":predict"
        headers = {"X-Request-Id": request_id or new_request_id()}
        try:
            r = self.session.post(url, json=rest_body(serialized), headers=headers,
                                  timeout=self.timeout, verify=self.verify)
        except requests.RequestException as exc:
            raise rest_unreachable(url, exc, self.timeout) from None
        try:
            body = r.json()
        except ValueError:
            raise ServingError(r.status_code, r.text[:1000]) from None
        if r.status_code != 200:
            raise ServingError(r.status_code, body.get("error", r.text))
        return body["predictions"]

    def predict_rows(self, rows: Iterable[Dict], **kwargs) -> List[float]:
        return self.predict_serialized(serialize_rows(rows), **kwargs)

    def status(self) -> Dict:
        try:
            return self.session.get(self.base, timeout=self.timeout, verify=self.verify).json()
        except requests.RequestException as exc:
            raise rest_unreachable(self.base, exc, self.timeout) from None

    def close(self):
        self.session.close()


class GrpcClient:
    def __init__(self, host: str, port: int, model_name: str, timeout: float = 30.0,
                 token: Optional[str] = None, ca_file: Optional[str] = None):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        if ca_file:
            with open(ca_file, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.secure_channel(f"{host}:{port}", credentials)
        else:
            self.channel = grpc.insecure_channel(f"{host}:{port}")
        self.address = f"{host}:{port}"
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name = model_name
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def predict_serialized(self, serialized: Sequence[bytes], version: Optional[int] = None,
                           request_id: Optional[str] = None) -> List[float]:
        """The predictions; ``ServingError`` when the server refuses, ``Unreachable``
        when no server answers."""
        import grpc

        request = predict_request(self.model_name, serialized, version=version)
        metadata = (("x-request-id", request_id or new_request_id()),) + self.metadata
        try:
            response = self.stub.Predict(request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise self._failure(exc.code(), exc.details() or "") from None
        return list(response.outputs[F.PREDICTION_KEY].float_val)

    def _failure(self, code, details: str) -> Exception:
        """``Unreachable`` when the call reached no server, else the server's ``ServingError``."""
        if code.name == "UNAVAILABLE" and "failed to connect" in details.lower():
            why = "connection refused" if "refused" in details.lower() else "cannot connect"
            return Unreachable(f"no gRPC server at {self.address} ({why}): {START_ONE}")
        if code.name == "UNAVAILABLE" and ("handshake" in details.lower() or "ssl" in details.lower()):
            return Unreachable(f"no gRPC server at {self.address} that this client can talk to (TLS does not "
                               f"match): pass --ca-file for a TLS server, leave it out for a plain one")
        if code.name == "DEADLINE_EXCEEDED":
            return Unreachable(f"no answer from the gRPC server at {self.address} within {self.timeout:g} s: "
                               f"check --host and --port, send fewer rows, or look at the server's log")
        return ServingError(code.name, details)

    def predict_rows(self, rows: Iterable[Dict], **kwargs) -> List[float]:
        return self.predict_serialized(serialize_rows(rows), **kwargs)

    def close(self):
        self.channel.close()


def make_client(protocol: str, host: str, port: int, model_name: str,
                token: Optional[str] = None, ca_file: Optional[str] = None):
    return (GrpcClient if protocol == "grpc" else RestClient)(host, port, model_name,
                                                             token=token, ca_file=ca_file)
