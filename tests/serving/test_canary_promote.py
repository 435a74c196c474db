"""``tfxops promote`` / ``tfxops rollback`` end to end: the real CLI against a running
server (a BackgroundServer that reloads through gRPC's HandleReloadConfigRequest),
a copy of the first run's metadata store, the audit trail, the model config file."""
import shutil

import grpc
import pytest
from ml_metadata.proto import metadata_store_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from core import audit, config, integrity, mlmd
from core.command import EXIT_BAD_INPUT, EXIT_OK
from core.ports import free_port
from serving.client import predict_request, serialize_rows
from serving.model_config import read_model_config
from serving.server import BackgroundServer
from tests.serving.serve_proc import until
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


def test_promote_then_rollback_switch_the_running_server(home, capfd):
    settings, overrides, versions = home
    stable, canary = versions["stable"], versions["canary"]
    with BackgroundServer(settings) as server:
        until(lambda: stable in _answering(server.ports.grpc), "the stable version answering")
        code, out, err = _cli(capfd, overrides, "promote")
        assert code == EXIT_OK, err
        assert f"version {canary} promoted (was {stable})" in out and "server at" in out and "reloaded" in out
        assert until(lambda: _answering(server.ports.grpc) == {canary}, "only the canary answering")
        (served,) = read_model_config(str(settings.served_model_config_path))
        assert served.labels == {"stable": canary} and served.policy.versions == (canary,)

        code, out, err = _cli(capfd, overrides, "rollback")
        assert code == EXIT_OK, err
        assert f"version {stable} rolled back (was {canary})" in out
        assert until(lambda: _answering(server.ports.grpc) == {stable}, "the stable version answering again")
        (served,) = read_model_config(str(settings.served_model_config_path))
        assert served.labels == {"stable": stable}
    _check_records(settings, stable, canary)


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
