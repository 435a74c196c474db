"""A small client for TF Serving's APIs (ours or the real one), shared by
``tfxops predict``, the tests and the benchmark.

Rows are dicts of raw values (CSV strings or typed values); they are sent as
serialized tf.Examples (``core.examples.row_to_example``, CsvExampleGen's
encoding) to ``serving_default`` — over gRPC as a PredictRequest, over REST as
``{"instances": [{"b64": ...}]}``. For a secured server (``serving/access.py``):
``token`` (sent as ``Authorization: Bearer``, gRPC metadata ``authorization``; read
it with ``read_token``, never from a command line) and ``ca_file`` (TLS, the CA
that signed the server's certificate).
"""
import base64
import os
import socket
import ssl
import time
from typing import Dict, Iterable, List, Optional, Sequence

import grpc
import requests
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from core import features as F
from core.request_log import new_request_id
from core.examples import row_to_example


def serialize_rows(rows: Iterable[Dict], columns: Optional[Sequence[str]] = None) -> List[bytes]:
    cols = list(columns or F.SERVING_FEATURES)
    return [row_to_example(r, [c for c in cols if c in r]).SerializeToString() for r in rows]


def predict_request(model_name: str, serialized: Sequence[bytes],
                    signature_name: str = F.DEFAULT_SIGNATURE,
                    version: Optional[int] = None) -> predict_pb2.PredictRequest:
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
        url = self.base + (f"/versions/{version}" if version is not None else "") + ":predict"
        headers = {"X-Request-Id": request_id or new_request_id()}
        r = self.session.post(url, json=rest_body(serialized), headers=headers,
                              timeout=self.timeout, verify=self.verify)
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
        return self.session.get(self.base, timeout=self.timeout, verify=self.verify).json()

    def close(self):
        self.session.close()


class GrpcClient:
    def __init__(self, host: str, port: int, model_name: str, timeout: float = 30.0,
                 token: Optional[str] = None, ca_file: Optional[str] = None):
        if ca_file:
            with open(ca_file, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            self.channel = grpc.secure_channel(f"{host}:{port}", credentials)
        else:
            self.channel = grpc.insecure_channel(f"{host}:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name = model_name
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def predict_serialized(self, serialized: Sequence[bytes], version: Optional[int] = None,
                           request_id: Optional[str] = None) -> List[float]:
        request = predict_request(self.model_name, serialized, version=version)
        metadata = (("x-request-id", request_id or new_request_id()),) + self.metadata
        try:
            response = self.stub.Predict(request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise ServingError(exc.code().name, exc.details()) from None
        return list(response.outputs[F.PREDICTION_KEY].float_val)

    def predict_rows(self, rows: Iterable[Dict], **kwargs) -> List[float]:
        return self.predict_serialized(serialize_rows(rows), **kwargs)

    def close(self):
        self.channel.close()


def make_client(protocol: str, host: str, port: int, model_name: str,
                token: Optional[str] = None, ca_file: Optional[str] = None):
    return (GrpcClient if protocol == "grpc" else RestClient)(host, port, model_name,
                                                             token=token, ca_file=ca_file)
