"""Who may change the served models with gRPC HandleReloadConfigRequest
(``reload_config_clients``), over real gRPC with tensorflow_serving's stubs: a token
not listed, and (tokens off) a caller not on this machine, are refused
PERMISSION_DENIED and nothing served changes (an unsigned model elsewhere on disk is
never loaded); a listed token reloads. The same server (tokens on, two models,
batching, a monitoring_config_file moving the metrics page) also shows that the
moved metrics page is scraped without a token and that batch metrics name each model."""
import os
import socket
import subprocess

import grpc
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from core import audit
from serving import model_config as mc
from serving.access import ReloadPermission, is_loopback_address
from serving.server import BackgroundServer
from tests.serving.conftest import copy_version, serving_settings
from tests.serving.test_model_config import answered_version, predict, refused, status

PROMOTER, READER = "promoter-token-0123456789", "reader-token-0123456789ab"
METRICS_PATH = "/custom/metrics"


def _token_file(tmp):
    path = tmp / "tokens"
    path.write_text(f"promoter {PROMOTER}\nreader {READER}\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, pushed_model):
    """tokens on (promoter may reload, reader may not), models taxi and other,
    batching on, metrics at METRICS_PATH (a monitoring_config_file)."""
    tmp = tmp_path_factory.mktemp("reload_permission")
    copy_version(pushed_model, tmp / "taxi", 1)
    copy_version(pushed_model, tmp / "other", 5)
    copy_version(pushed_model, tmp / "evil", 9)          # what an attacker would have served
    config_path = str(tmp / "models.config")
    mc.write_model_config(config_path, [mc.ServedModel("taxi", str(tmp / "taxi")),
                                        mc.ServedModel("other", str(tmp / "other"))])
    monitoring = tmp / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    settings = serving_settings(tmp, model_config_file=config_path, auth_tokens_file=_token_file(tmp),
                                reload_config_clients="promoter", monitoring_config_file=str(monitoring),
                                enable_batching=True, batch_timeout_micros=2000)
    server = BackgroundServer(settings)
    server.start()
    server.tmp, server.target = tmp, f"127.0.0.1:{server.ports.grpc}"
    channel = grpc.insecure_channel(server.target)
    server.predictions_channel = channel
    yield server
    channel.close()
    server.stop()


class _Authorized:
    """tests.serving.test_model_config's helpers' view of a server, sending a token."""

    def __init__(self, server, token):
        from tensorflow_serving.apis import prediction_service_pb2_grpc
        metadata = (("authorization", f"Bearer {token}"),)
        self.predictions = _WithMetadata(
            prediction_service_pb2_grpc.PredictionServiceStub(server.predictions_channel), metadata)
        self.model_service = _WithMetadata(
            model_service_pb2_grpc.ModelServiceStub(server.predictions_channel), metadata)


class _WithMetadata:
    def __init__(self, stub, metadata):
        self.stub, self.metadata = stub, metadata

    def __getattr__(self, name):
        method = getattr(self.stub, name)
        return lambda request, timeout=None: method(request, timeout=timeout, metadata=self.metadata)


def _evil_config(server):
    return [mc.ServedModel("taxi", str(server.tmp / "evil"))]


def _refusals(server):
    return [e for e in audit.entries(audit.audit_file(server.server.settings))
            if e["action"] == audit.SERVED_CONFIG_REFUSED]


def test_a_token_not_listed_is_refused_and_nothing_changes(guarded, rows):
    client = _Authorized(guarded, READER)
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(mc.model_server_config(_evil_config(guarded)))
    code, details = refused(lambda: client.model_service.HandleReloadConfigRequest(request, timeout=30))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "reload_config_clients" in details, details
    with pytest.raises(mc.ModelConfigError) as caught:                 # what tfxops promote says
        mc.reload_server(guarded.target, _evil_config(guarded), token=READER)
    assert "PERMISSION_DENIED" in str(caught.value) and "reload_config_clients" in str(caught.value)
    with pytest.raises(mc.ModelConfigError) as caught:                 # no token: not even that far
        mc.reload_server(guarded.target, _evil_config(guarded))
    assert "UNAUTHENTICATED" in str(caught.value)
    assert answered_version(client, rows, "taxi") == 1 and status(client, "taxi") == {1: "AVAILABLE"}
    assert guarded.server.models.manager("taxi").base_path == str(guarded.tmp / "taxi")
    refusals = _refusals(guarded)
    assert refusals and "reader" in refusals[-1]["reason"] and "reload_config_clients" in refusals[-1]["reason"]


def test_a_listed_token_reloads(guarded, rows):
    client = _Authorized(guarded, READER)
    mc.reload_server(guarded.target, [mc.ServedModel("taxi", str(guarded.tmp / "taxi")),
                                      mc.ServedModel("other", str(guarded.tmp / "other")),
                                      mc.ServedModel("third", str(guarded.tmp / "evil"))], token=PROMOTER)
    assert answered_version(client, rows, "third") == 9
    mc.reload_server(guarded.target, [mc.ServedModel("taxi", str(guarded.tmp / "taxi")),
                                      mc.ServedModel("other", str(guarded.tmp / "other"))], token=PROMOTER)
    assert sorted(guarded.server.models.names()) == ["other", "taxi"]


def test_the_moved_metrics_page_needs_no_token_and_batches_name_their_model(guarded, rows):
    client = _Authorized(guarded, READER)
    for name in ("taxi", "other", "other"):
        predict(client, rows, name)
    rest = f"http://127.0.0.1:{guarded.ports.rest}"
    page = requests.get(rest + METRICS_PATH, timeout=10)             # Prometheus sends no token
    assert page.status_code == 200, page.text
    assert requests.get(rest + "/v1/models/taxi", timeout=10).status_code == 401   # the API still needs one
    batches = [line for line in page.text.splitlines()
               if line.startswith(":tensorflow:serving:batching_session:processed_batch_size_count")]
    counts = {name: sum(float(line.rsplit(" ", 1)[1]) for line in batches if f'model_name="{name}"' in line)
              for name in ("taxi", "other")}
    assert counts["taxi"] >= 1 and counts["other"] >= 2 and counts["taxi"] < counts["other"] + 1, batches


def _non_loopback_address():
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except OSError:
        return None
    for address in out:
        if not is_loopback_address(address) and ":" not in address:
            try:
                with socket.socket() as probe:
                    probe.bind((address, 0))
                return address
            except OSError:
                continue
    return None


def test_without_tokens_a_caller_not_on_this_machine_is_refused(tmp_path, pushed_model, rows):
    address = _non_loopback_address()
    if address is None:        # no such address here: the peer check on real addresses
        permission = ReloadPermission(False, frozenset())
        assert permission.refusal("", "127.0.0.1") is None and permission.refusal("", "::1") is None
        assert permission.refusal("", "::ffff:127.0.0.1") is None
        assert permission.refusal("", "10.0.0.1").code == "PERMISSION_DENIED"
        pytest.skip("no non-loopback IPv4 address on this machine: the check tested on addresses only")
    settings = serving_settings(tmp_path, host=address)
    copy_version(pushed_model, settings.model_push_dir, 1)
    copy_version(pushed_model, tmp_path / "evil", 9)
    with BackgroundServer(settings) as server:
        target = f"{address}:{server.ports.grpc}"
        with pytest.raises(mc.ModelConfigError) as caught:
            mc.reload_server(target, [mc.ServedModel("taxi", str(tmp_path / "evil"))])
        assert "PERMISSION_DENIED" in str(caught.value)
        assert "reload_config_clients" in str(caught.value) and address in str(caught.value)
        assert server.server.models.manager("taxi").base_path == str(settings.model_push_dir)
        assert server.server.models.manager("taxi").available_versions() == [1]
        refusals = _refusals(server)
        assert refusals and address in refusals[-1]["reason"]


def test_the_fallback_library_log_follows_no_link_and_is_private(tmp_path):
    """A link planted where the library log goes (the shared temporary directory)
    is not followed: the file it points at stays as it was; the log is 0600."""
    from core.env import library_output_to

    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    planted = tmp_path / "tfxops.log"
    planted.symlink_to(victim)
    with library_output_to(planted):
        os.write(2, b"library noise\n")
    assert victim.read_text() == "untouched\n" and planted.is_symlink()
    written = [p for p in tmp_path.glob(f"tfxops-{os.getuid()}-*.log")]
    assert len(written) == 1 and "library noise" in written[0].read_text()
    assert written[0].stat().st_mode & 0o777 == 0o600
    own = tmp_path / "own.log"
    with library_output_to(own):
        os.write(2, b"more noise\n")
    assert own.stat().st_mode & 0o777 == 0o600 and "more noise" in own.read_text()
