"""``tfxops promote`` / ``tfxops rollback`` end to end: the real CLI against a running
server (a BackgroundServer that reloads through gRPC's HandleReloadConfigRequest),
a copy of the first run's metadata store, the audit trail, the model config file."""
import logging
import shutil

import grpc
import pytest
from ml_metadata.proto import metadata_store_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from core import audit, config, integrity, mlmd
from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from core.ports import free_port
from serving.client import predict_request, serialize_rows
from monitoring.monitor import current_version as monitor_current_version
from serving.model_config import models_from_settings, read_model_config, read_serving_files, write_model_config
from serving.models import ModelManager, VersionPolicy
from serving.server import BackgroundServer
from tests.serving.serve_proc import until
from tests.security.access_setup import self_signed
from tests.serving.test_canary_versions import make_candidate
from tfxops.cli import main

CALLS = 12


@pytest.fixture(scope="module")
def home(tmp_path_factory, e2e_settings, first_run):
    """Overrides of a home holding the first run's version (stable), a candidate
    (canary) registered as pushed in a copy of its metadata store, and a tampered copy."""
    tmp = tmp_path_factory.mktemp("promote")
    shutil.copy(e2e_settings.metadata_file, tmp / "metadata.sqlite")
    stable = int(first_run.pushed_version)
    versions = {"stable": stable, "canary": stable + 100, "tampered": stable + 50}
    overrides = {"home": str(tmp), "metadata_path": str(tmp / "metadata.sqlite"), "poll_seconds": "0.2",
                 "serving_dir": str(tmp / "serving_model"), "rest_port": str(free_port()),
                 "grpc_port": str(free_port()), "model_version_policy": "all", "canary_percent": "10",
                 "version_labels": f"stable={stable},canary={versions['canary']}"}
    if hasattr(config.Settings, "mlflow_tracking"):
        overrides["mlflow_tracking"] = "false"      # tracking.registry's own tests cover the alias
    settings = config.load(overrides)
    push_dir = settings.model_push_dir
    shutil.copytree(first_run.pushed_path, push_dir / str(stable))
    make_candidate(first_run.pushed_path, push_dir, versions["canary"])
    shutil.copytree(push_dir / str(stable), push_dir / str(versions["tampered"]))
    with open(push_dir / str(versions["tampered"]) / "saved_model.pb", "ab") as graph:
        graph.write(b"\0")                      # its manifest no longer matches
    _register_push(settings, versions["canary"])
    return settings, overrides, versions


def _register_push(settings, version):
    """The candidate as a push would record it: a PushedModel with pushed_version."""
    store = mlmd.open_store(settings, readonly=False, must_exist=True)
    artifact = metadata_store_pb2.Artifact(type_id=store.get_artifact_type(mlmd.PUSHED_MODEL).id,
                                           uri=str(settings.model_push_dir / str(version)),
                                           state=metadata_store_pb2.Artifact.LIVE)
    artifact.custom_properties["pushed"].int_value = 1
    artifact.custom_properties["pushed_version"].string_value = str(version)
    artifact.custom_properties["pushed_destination"].string_value = artifact.uri
    store.put_artifacts([artifact])


def _cli(capfd, overrides, *args):
    argv = list(args) + ["--home", overrides["home"]]
    for key, value in overrides.items():
        if key != "home":
            argv += ["--set", f"{key}={value}"]
    code = main(argv)
    out, err = capfd.readouterr()
    return code, out, err


def _answering(port):
    """The versions that answered CALLS calls naming no version."""
    from tests.conftest import read_rows

    rows = read_rows()[:CALLS]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return {stub.Predict(predict_request("taxi", serialize_rows([row])), timeout=30).model_spec.version.value
                for row in rows}


def test_promote_then_rollback_switch_the_running_server(home, first_run, capfd):
    settings, overrides, versions = home
    stable, canary = versions["stable"], versions["canary"]
    assert monitor_current_version(settings) == stable, "during a canary the stable version is current"
    with BackgroundServer(settings) as server:
        until(lambda: stable in _answering(server.ports.grpc), "the stable version answering")
        code, out, err = _cli(capfd, overrides, "promote")
        assert code == EXIT_OK, err
        assert f"version {canary} promoted (was {stable})" in out and "server at" in out and "reloaded" in out
        assert "the next push is loaded (policy all)" in out
        assert until(lambda: _answering(server.ports.grpc) == {canary}, "only the canary answering")
        (served,) = read_model_config(str(settings.served_model_config_path))
        assert served.labels == {"stable": canary} and str(served.policy) == "all", "the policy is kept"
        _a_later_push_is_served_by_version(server, settings, first_run, versions)

        code, out, err = _cli(capfd, overrides, "rollback")
        assert code == EXIT_OK, err
        assert f"version {stable} rolled back (was {canary})" in out
        assert until(lambda: _answering(server.ports.grpc) == {stable}, "the stable version answering again")
        (served,) = read_model_config(str(settings.served_model_config_path))
        assert served.labels == {"stable": stable}
    assert monitor_current_version(settings) == stable, "after a rollback, newer versions on disk are not current"
    _check_records(settings, stable, canary)


def _a_later_push_is_served_by_version(server, settings, first_run, versions):
    """After a promote, a new push loads (policy kept) and answers calls naming it; calls
    naming no version stay on the promoted one, as promote's output said."""
    later = make_candidate(first_run.pushed_path, settings.model_push_dir, versions["stable"] + 200, shift=-1.0)
    request = predict_request("taxi", serialize_rows(_rows()[:1]))
    request.model_spec.version.value = later
    with grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert until(lambda: _answers(stub, request), "the later push loaded").model_spec.version.value == later
    assert _answering(server.ports.grpc) == {versions["canary"]}


def _answers(stub, request):
    try:
        return stub.Predict(request, timeout=30)
    except grpc.RpcError:
        return None


def _rows():
    from tests.conftest import read_rows
    return read_rows()


def _check_records(settings, stable, canary):
    """MLMD holds both changes (the promotion's input: the candidate's PushedModel) and so does the audit trail."""
    store = mlmd.open_store(settings)
    rollback, promote = mlmd.promotions(store)[:2]
    assert (promote["action"], promote["from_version"], promote["to_version"]) == ("promote", str(stable), str(canary))
    assert (rollback["action"], rollback["from_version"], rollback["to_version"]) == ("rollback", str(canary), str(stable))
    assert promote["actor"] and promote["model_name"] == "taxi"
    (event,) = [e for e in store.get_events_by_execution_ids([promote["id"]])]
    pushed = store.get_artifacts_by_id([event.artifact_id])[0]
    assert mlmd.custom(pushed, "pushed_version") == str(canary) and event.type == metadata_store_pb2.Event.INPUT
    actions = [(e["action"], e["model_version"]) for e in audit.entries(audit.audit_file(settings))]
    assert ("promote", str(canary)) in actions and ("rollback", str(stable)) in actions
    assert audit.verify(audit.audit_file(settings), None).ok


def test_refusals_name_the_thing_and_the_fix(home, capfd):
    settings, overrides, versions = home
    dead = f"127.0.0.1:{free_port()}"
    written = settings.served_model_config_path
    before = written.read_text() if written.exists() else None
    _register_push(settings, 777)           # pushed once, its directory removed since
    for args, expected in (
            (("promote", "12345"), "no version 12345 of model taxi in"),
            (("rollback", "777"), "version 777 of model taxi was pushed but is no longer in"),
            (("promote", str(versions["tampered"])), "fails its integrity check"),
            (("rollback", "--model", "nope"), "no model nope"),
            (("promote", "--model", "taxi", "--set", "canary_label=candidate"), "no canary to promote")):
        code, out, err = _cli(capfd, overrides, *args, "--server", dead)
        assert code == EXIT_BAD_INPUT, (args, out, err)
        assert expected in err and ("Fix" in err or "pass --model" in err), (args, err)
        assert "Traceback" not in err
    assert (written.read_text() if written.exists() else None) == before, "a refused change writes nothing"
    assert not integrity.verify_version(str(settings.model_push_dir / str(versions["tampered"])), None, True).ok


def test_promote_without_a_running_server_writes_the_file_it_will_read(home, capfd):
    settings, overrides, versions = home
    dead = f"127.0.0.1:{free_port()}"
    code, out, err = _cli(capfd, overrides, "promote", str(versions["canary"]), "--server", dead)
    assert code == EXIT_OK, err
    assert f"no server running at {dead}" in out and str(settings.served_model_config_path) in out
    (served,) = read_model_config(str(settings.served_model_config_path))
    assert served.labels == {"stable": versions["canary"]}


def test_a_relative_home_writes_absolute_paths_and_a_missing_store_is_said(home, tmp_path, monkeypatch, capfd):
    """The file tfxops serve reads needs absolute base paths (TF Serving's rule); a home
    without a metadata store: the served change stands, exit 1 naming what was not recorded."""
    settings, overrides, versions = home
    fresh = tmp_path / "fresh"
    shutil.copytree(settings.model_push_dir / str(versions["canary"]),
                    fresh / "serving_model" / "taxi" / str(versions["canary"]))
    monkeypatch.chdir(tmp_path)
    local = {"home": "fresh", "model_version_policy": "all", "version_labels": f"canary={versions['canary']}",
             **{k: v for k, v in overrides.items() if k == "mlflow_tracking"}}
    code, out, err = _cli(capfd, local, "promote", "--server", f"127.0.0.1:{free_port()}")
    assert code == 1, err
    assert "NOT RECORDED: MLMD: no metadata store" in err and "Traceback" not in err
    (served,) = read_model_config(str(fresh / "serving" / "models.config"))
    assert served.base_path == str(fresh / "serving_model" / "taxi") and served.labels == {"stable": versions["canary"]}


def test_a_model_config_file_over_explicit_settings_is_said(home, caplog):
    settings, _, _ = home
    if not settings.served_model_config_path.exists():      # (run alone: as a promote leaves it)
        write_model_config(str(settings.served_model_config_path), models_from_settings(settings))
    with caplog.at_level(logging.WARNING, logger="tfxops.serving"):
        read_serving_files(settings, explicit={"version_labels", "canary_percent"})
    assert any("version_labels given but NOT used" in r.getMessage() and str(settings.served_model_config_path)
               in r.getMessage() for r in caplog.records), caplog.text


def _fresh_home(tmp_path, settings, versions, labels):
    """A home without metadata store nor model config file: the stable and canary versions copied."""
    for name in ("stable", "canary"):
        shutil.copytree(settings.model_push_dir / str(versions[name]),
                        tmp_path / "serving_model" / "taxi" / str(versions[name]))
    return {"home": str(tmp_path), "model_version_policy": "all", "version_labels": labels,
            "grpc_port": str(free_port()), "rest_port": str(free_port()), "poll_seconds": "0.2",
            "mlflow_tracking": "false"}


def test_promote_without_a_stable_label_records_the_version_it_replaces(home, tmp_path, capfd):
    """The "from" version is the one answering calls naming no version: the newest
    non-canary, never the canary itself."""
    settings, _, versions = home
    fresh = _fresh_home(tmp_path, settings, versions, f"canary={versions['canary']}")
    code, out, err = _cli(capfd, fresh, "promote", "--server", f"127.0.0.1:{free_port()}")
    assert code == EXIT_FAILED and "NOT RECORDED: MLMD" in err        # no metadata store in this home
    assert f"version {versions['canary']} promoted (was {versions['stable']})" in out
    assert "alias champion" not in out, "mlflow_tracking is false: no alias line"


def test_stable_label_answers_unnamed_calls_with_canary_percent_0(home, tmp_path):
    """A canary label and no split (canary_percent 0): calls naming no version go to the
    stable version, never to the newer canary; without a stable label, to the newest non-canary."""
    settings, _, versions = home
    stable, canary = versions["stable"], versions["canary"]
    _fresh_home(tmp_path, settings, versions, "")
    manager = ModelManager("taxi", str(tmp_path / "serving_model" / "taxi"), VersionPolicy("all"),
                           {"stable": stable, "canary": canary}, poll_seconds=0)
    manager.start()
    try:
        for labels, expected in (({"stable": stable, "canary": canary}, stable), ({"canary": canary}, stable),
                                 ({}, canary), ({"stable": canary}, canary)):
            manager.set_labels(labels)
            loaded = manager.acquire("taxi")
            manager.release(loaded)
            assert loaded.version == expected, (labels, loaded.version)
    finally:
        manager.stop()


def test_tls_server_promote_trusts_tls_cert_file_and_a_failed_call_creates_no_file(home, tmp_path, capfd):
    """Against a TLS server: the wrong CA is "listens but the call failed" (exit 1, the fix
    named, no config file left behind where there was none); the default CA (tls_cert_file) works."""
    settings, _, versions = home
    cert, key = self_signed(tmp_path / "tls")
    other, _ = self_signed(tmp_path / "other")
    fresh = dict(_fresh_home(tmp_path, settings, versions, f"stable={versions['stable']},canary={versions['canary']}"),
                 tls_cert_file=str(cert), tls_key_file=str(key))
    fresh_settings = config.load(fresh)
    written = fresh_settings.served_model_config_path
    with BackgroundServer(fresh_settings) as server:
        target = f"127.0.0.1:{server.ports.grpc}"
        code, out, err = _cli(capfd, fresh, "promote", "--server", target, "--ca-file", str(other))
        assert code == EXIT_FAILED, (out, err)
        assert f"a server listens at {target} but the call failed" in err and "Fix:" in err
        assert "no server running" not in out + err and "Traceback" not in err
        assert not written.exists(), "a change the server did not take leaves no new config file"
        code, out, err = _cli(capfd, fresh, "promote", "--server", target)
        assert "server at" in out and "reloaded" in out, (out, err)
        assert read_model_config(str(written))[0].labels == {"stable": versions["canary"]}
