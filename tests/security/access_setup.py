"""What the access tests share (issue 16 part 2): a real self-signed certificate
(``cryptography``), token files, and calls to the waiting model
(``tests/serving/conftest.waiting_model``) with a token, over TLS or not."""
import datetime
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Dict, Optional, Tuple

import grpc
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

WAITER_PREDICT = "/v1/models/waiter:predict"


def self_signed(directory: Path) -> Tuple[Path, Path]:
    """(certificate, key) PEM files for localhost / 127.0.0.1, the key owner-only;
    the certificate is its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def token_file(path: Path, names) -> Dict[str, str]:
    """An owner-only token file with a new token per name; {name: token}."""
    tokens = {name: secrets.token_urlsafe(24) for name in names}
    path.write_text("# clients of the access tests\n"
                    + "".join(f"{name} {token}\n" for name, token in tokens.items()))
    os.chmod(path, 0o600)
    return tokens


def bearer(token: Optional[str]) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def rest_predict(base: str, path: str, token: Optional[str] = None,
                 verify=True) -> requests.Response:
    """A predict of the waiting model for ``path`` (a file that exists: at once)."""
    return requests.post(f"{base}{WAITER_PREDICT}", json={"instances": [str(path)]},
                         headers=bearer(token), verify=verify, timeout=60)


def grpc_predict(port: int, path, token: Optional[str] = None,
                 ca: Optional[Path] = None) -> Tuple[str, str, dict]:
    """(status code name, details, trailing metadata) of a gRPC Predict of the
    waiting model, with ``token`` in the metadata, over TLS trusting ``ca``."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "waiter"
    request.inputs["path"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[str(path).encode()],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    target = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes())) \
        if ca else grpc.insecure_channel(target)
    with channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            _, call = stub.Predict.with_call(request, metadata=metadata, timeout=60)
        except grpc.RpcError as err:
            return err.code().name, err.details(), dict(err.trailing_metadata() or ())
    return "OK", "", dict(call.trailing_metadata() or ())
