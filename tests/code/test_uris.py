"""URIs stay URIs, and a push works on a store without directory rename.

TensorFlow's in-memory file system (``ram://``) stands in for an object store: its
directory "rename" moves the directory entry but not the files under it, like a
store without rename, so a push there takes the copy-then-marker path. A local
directory given as a ``file://`` URI takes the URI code path (``tf.io.gfile``)
with an atomic rename."""
import json
import os
import socket
import uuid

import pytest

from core import config, pushdir, storage

SCHEMES = ["gs://bucket/tfx", "s3://bucket/tfx", "hdfs://namenode:8020/tfx", "ram://bucket/tfx"]
PATH_SETTINGS = {"pipeline_root": "pipeline_root_path", "metadata_path": "metadata_file",
                 "serving_dir": "serving_base", "log_dir": "logs_path",
                 "request_log_dir": "request_logs_path", "monitor_dir": "monitor_path",
                 "feedback_dir": "feedback_path"}


def _model(tmp_path, files=5):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    for i in range(files):
        (model / "variables" / f"shard{i}").write_bytes(os.urandom(1000))
    (model / "saved_model.pb").write_bytes(b"pb")
    return model


def _ram_base() -> str:
    return f"ram://tfxops-{uuid.uuid4().hex}/serving/taxi"


def _dead_owner() -> dict:
    """This host and pid, but another start time: a process that is gone."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": 1}


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("home", SCHEMES)
def test_a_uri_home_puts_every_derived_path_under_it_with_its_slashes(home):
    settings = config.load({"home": home + "/"}, environ={})
    derived = settings.derived_paths()
    assert len(derived) == len(PATH_SETTINGS) + 2      # model_push_dir, served_model_config: no setting of their own
    for name, value in derived.items():
        assert value.startswith(home + "/") and "//" not in value[len(home.split("://")[0]) + 3:], (name, value)
    assert derived["model_push_dir"] == home + "/serving_model/taxi"
    assert settings.pipeline_root_path == home + "/pipeline_root"


@pytest.mark.parametrize("uri", SCHEMES)
def test_every_path_setting_keeps_a_uri_as_given(uri):
    overrides = {setting: f"{uri}/{setting}" for setting in PATH_SETTINGS}
    settings = config.load(dict(overrides, home="/tmp/local-home"), environ={})
    for setting, prop in PATH_SETTINGS.items():
        assert getattr(settings, prop) == f"{uri}/{setting}", setting
        assert settings.derived_paths()[setting] == f"{uri}/{setting}"
    assert settings.model_push_dir == f"{uri}/serving_dir/taxi"
    from_env = config.load({}, environ={"TFXOPS_SERVING_DIR": uri + "/s"})
    assert from_env.model_push_dir == uri + "/s/taxi"
    inputs = config.load({"data_dir": uri + "/data", "schema_path": uri + "/schema.pbtxt"}, environ={})
    assert (inputs.data_dir, inputs.schema_path) == (uri + "/data", uri + "/schema.pbtxt")


def test_tfxops_config_prints_uris_with_their_slashes(capsys):
    from tfxops import cli

    assert cli.main(["config", "--home", "gs://bucket/h", "--set", "serving_dir=s3://models/x"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pipeline_root"] == "gs://bucket/h/pipeline_root"
    assert printed["model_push_dir"] == "s3://models/x/taxi"


def test_local_paths_stay_paths():
    settings = config.load({"home": "/tmp/x", "serving_dir": "file:///srv/models"}, environ={})
    assert settings.pipeline_root_path == storage.Path("/tmp/x/pipeline_root")
    assert settings.model_push_dir == "file:///srv/models/taxi"
    assert storage.join("/a", "b", "c") == storage.Path("/a/b/c")
    assert storage.join("gs://b/", "x/", "y") == "gs://b/x/y"
    assert [storage.has_atomic_rename(p) for p in ("/a", "file:///a", "gs://b", "s3://b", "ram://b")] == [
        True, True, False, False, False]


def test_what_needs_a_local_disk_names_the_setting():
    with pytest.raises(config.ConfigError, match="'request_log_dir' is gs://b/logs, a URI"):
        config.require_local("request_log_dir", "gs://b/logs", "the request-log writer locks its files")
    assert config.require_local("monitor_dir", "/tmp/m", "a lock") == storage.Path("/tmp/m")


def test_the_request_log_writer_and_the_monitor_lock_refuse_a_uri():
    from monitoring.lock import MonitorLock
    from serving.log_writer import RequestLogger

    settings = config.load({"home": "gs://bucket/h"}, environ={})
    with pytest.raises(config.ConfigError, match="'request_log_dir' is gs://bucket/h/request_logs"):
        RequestLogger(settings.request_logs_path)
    with pytest.raises(config.ConfigError, match="'monitor_dir' is gs://bucket/h/monitoring"):
        MonitorLock(settings.monitor_path)


# ------------------------------------------------------------- object store push
def test_a_push_to_a_store_without_rename_publishes_a_whole_version_marker_last(tmp_path):
    base = _ram_base()
    version = pushdir.publish_atomically(str(_model(tmp_path)), base, {"model_uri": "m"})
    assert pushdir.existing_versions(base) == [int(version)] and pushdir.newest_version(base) == int(version)
    assert sorted(storage.listdir(base)) == [version]                   # no staging left
    target = f"{base}/{version}"
    assert storage.read_text(f"{target}/saved_model.pb") == "pb"
    assert len(storage.listdir(f"{target}/variables")) == 5
    marker = pushdir.read_marker(target)
    assert marker["base_directory"] == base and marker["model_uri"] == "m" and marker["version"] == version
    second = pushdir.publish_atomically(str(tmp_path / "model"), base)
    assert pushdir.existing_versions(base) == [int(version), int(second)]


def test_a_version_without_its_completion_marker_is_not_there_yet(tmp_path):
    base = _ram_base()
    storage.copy_tree(str(_model(tmp_path)), f"{base}/2000000000")      # a copy under way
    assert pushdir.existing_versions(base) == [] and pushdir.newest_version(base) is None
    assert pushdir.next_version(base, now=5) == 2000000001               # its number stays taken
    storage.write_text(f"{base}/2000000000/{pushdir.MARKER}", "{}")
    assert pushdir.existing_versions(base) == [2000000000]


def test_a_failed_push_to_a_store_leaves_nothing(tmp_path):
    base = _ram_base()
    with pytest.raises(OSError):
        pushdir.publish_atomically(str(tmp_path / "missing-model"), base)
    assert storage.listdir(base) == []


def test_recovery_on_a_store_removes_a_dead_writers_half_copy_and_moves_an_orphan_aside(tmp_path):
    from pipeline import recovery

    settings = config.load({"home": str(tmp_path / "home"), "serving_dir": _ram_base()}, environ={})
    base = settings.model_push_dir
    model = str(_model(tmp_path))
    # what a writer killed while copying to version 7 leaves: its staging and a version without marker
    staging = f"{base}/{pushdir.INCOMING_PREFIX}7-{os.getpid()}"
    storage.copy_tree(model, staging)
    storage.write_text(f"{staging}/{pushdir.MARKER}", json.dumps({"owner": _dead_owner(), "version": "7"}))
    storage.copy_tree(model, f"{base}/7")
    # a whole version whose writer died before its MLMD record
    orphan = f"{base}/9"
    storage.copy_tree(model, orphan)
    storage.write_text(f"{orphan}/{pushdir.MARKER}", json.dumps({"owner": _dead_owner(), "base_directory": base}))

    report = recovery.recover(settings)
    assert sorted(report.removed_staging) == sorted([staging, f"{base}/7"])
    assert report.moved_aside == [f"{base}/{pushdir.ORPHANED_PREFIX}9"]
    assert sorted(storage.listdir(base)) == [f"{pushdir.ORPHANED_PREFIX}9"]
    assert pushdir.read_marker(report.moved_aside[0])["base_directory"] == base
    assert len(storage.listdir(f"{report.moved_aside[0]}/variables")) == 5


def test_a_push_to_a_file_uri_renames_atomically_through_the_uri_path(tmp_path):
    base = f"file://{tmp_path}/serving/taxi"
    version = pushdir.publish_atomically(str(_model(tmp_path)), base)
    assert os.listdir(tmp_path / "serving" / "taxi") == [version]
    assert pushdir.existing_versions(base) == [int(version)]
    assert pushdir.read_marker(f"{base}/{version}")["base_directory"] == base
    assert "version" not in pushdir.read_marker(f"{base}/{version}")     # renamed, not copied


def test_the_server_discovers_and_loads_only_complete_versions_on_a_store(tmp_path):
    import tensorflow as tf

    from serving.models import AVAILABLE, ModelManager

    base = _ram_base()
    storage.copy_tree(str(_model(tmp_path)), f"{base}/3")               # no marker: not there yet
    manager = ModelManager("taxi", base)
    manager.poll_once()
    with pytest.raises(Exception, match="Could not find any versions"):
        manager.status("taxi")
    doubler = tf.Module()
    doubler.serve = tf.function(lambda x: {"y": x * 2}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(doubler, str(tmp_path / "saved"), signatures={"serving_default": doubler.serve})
    version = pushdir.publish_atomically(str(tmp_path / "saved"), base)
    manager.poll_once()
    try:
        assert [(s.version, s.state) for s in manager.status("taxi")] == [(int(version), AVAILABLE)]
    finally:
        manager.stop(wait_seconds=0)


def test_a_failed_load_on_a_store_is_retried_once_its_files_change(tmp_path):
    from serving.models import END, ModelManager, dir_fingerprint

    base = _ram_base()
    version = int(pushdir.publish_atomically(str(_model(tmp_path)), base))   # not a SavedModel
    manager = ModelManager("taxi", base)
    manager.poll_once()
    [status] = manager.status("taxi")
    assert status.state == END and status.fingerprint == dir_fingerprint(f"{base}/{version}") != ()
    storage.write_text(f"{base}/{version}/saved_model.pb", "a longer graph")
    assert dir_fingerprint(f"{base}/{version}") != status.fingerprint            # so the next scan retries


def test_sync_models_fills_a_local_directory_with_complete_versions_only(tmp_path, capsys):
    """What an operator points TF Serving at: TF Serving checks no marker, so it
    watches a local directory that ``tfxops sync-models`` fills, one rename per version."""
    from tfxops import cli

    serving_dir = f"ram://tfxops-{uuid.uuid4().hex}/models"
    base = f"{serving_dir}/taxi"
    version = pushdir.publish_atomically(str(_model(tmp_path)), base)
    storage.copy_tree(str(tmp_path / "model"), f"{base}/{int(version) + 5}")     # still being copied
    target = tmp_path / "tf-serving" / "taxi"
    argv = ["sync-models", "--home", str(tmp_path / "home"), "--set", f"serving_dir={serving_dir}",
            "--to", str(target), "--once"]
    assert cli.main(argv) == 0
    assert os.listdir(target) == [version] and len(os.listdir(target / version / "variables")) == 5
    assert f"version {version}: copied" in capsys.readouterr().out
    assert cli.main(argv) == 0 and capsys.readouterr().out == ""                 # nothing new
    assert cli.main(argv[:-3] + ["--to", "gs://bucket/x", "--once"]) == 2
    assert "must be a local directory" in capsys.readouterr().err


def test_a_run_with_a_uri_home_names_the_local_only_setting_before_it_starts(tmp_path, capsys):
    from pipeline import preflight
    from tfxops import cli

    assert preflight.check_data_dir("gs://bucket/data") == 0        # CsvExampleGen reads it where it runs
    assert cli.main(["run", "--home", "gs://bucket/h"]) == 2
    err = capsys.readouterr().err
    assert "'log_dir' is gs://bucket/h/logs, a URI" in err and "Traceback" not in err


def test_a_run_with_sqlite_on_a_uri_names_metadata_path_before_it_writes_anything(tmp_path, capsys):
    from tfxops import cli

    assert cli.main(["run", "--home", str(tmp_path / "home"),
                     "--set", "metadata_path=gs://bucket/h/metadata.sqlite"]) == 2
    err = capsys.readouterr().err
    assert "'metadata_path' is gs://bucket/h/metadata.sqlite, a URI" in err and "metadata_backend=mysql" in err
    assert "Traceback" not in err and not (tmp_path / "home").exists()
