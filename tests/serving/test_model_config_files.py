"""TF Serving's configuration files as tfxops reads them (serving/model_config.py):
the repository's own serving/*.config files, a round trip through write_model_config,
and each broken file refused before anything loads, naming the file, the field and
the fix (the CLI: exit 2, no traceback)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import config
from serving import model_config as mc
from serving.models import VersionPolicy

REPO = Path(__file__).resolve().parents[2]

GOOD = """model_config_list {
  config { name: "taxi" base_path: "%s" model_platform: "tensorflow"
           model_version_policy { specific { versions: 1 versions: 2 } }
           version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } }
  config { name: "other" base_path: "%s" model_platform: "tensorflow"
           model_version_policy { all {} } }
}
"""


def write(tmp_path, text, name="models.config"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_repository_files_read_as_tf_serving_reads_them():
    assert mc.read_model_config(str(REPO / "serving/models.config")) == [
        mc.ServedModel("taxi", "/models/taxi", VersionPolicy("latest", 1), {})]
    assert mc.read_batching_parameters(str(REPO / "serving/batching.config")) == mc.BatchingParameters(
        max_batch_size=32, batch_timeout_micros=1000, num_batch_threads=2, max_enqueued_batches=100)
    assert mc.read_monitoring_config(str(REPO / "serving/monitoring.config")) == mc.MonitoringConfig(
        True, "/monitoring/prometheus/metrics")


def test_write_then_read_round_trip_is_atomic_and_tf_serving_text(tmp_path):
    models = [mc.ServedModel("taxi", "/srv/taxi", VersionPolicy("specific", versions=(1, 2)),
                             {"stable": 1, "canary": 2}),
              mc.ServedModel("other", "gs://bucket/other", VersionPolicy("latest", 3), {})]
    path = str(tmp_path / "models.config")
    mc.write_model_config(path, models)
    assert mc.read_model_config(path) == models
    assert [p.name for p in tmp_path.iterdir()] == ["models.config"]     # no temporary left behind
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    parsed = text_format.Parse(Path(path).read_text(), model_server_config_pb2.ModelServerConfig())
    assert parsed.model_config_list.config[0].version_labels["canary"] == 2


@pytest.mark.parametrize("text, words", [
    ("model_config_list { config { name: 'a' base_path: '/m' model_platform: 'tensorflow' }",
     ["Invalid protobuf file", "Fix the file"]),
    ("model_config_list { config { name: 'a' base_pth: '/m' } }", ["Invalid protobuf file", "base_pth"]),
    ("custom_model_config { }", ["does not yet support custom model config", "model_config_list"]),
    ("model_config_list { config { name: 'a' base_path: '/m' model_platform: 'pytorch' } }",
     ["model a", "pytorch", "not supported", 'model_platform: "tensorflow"']),
    ("model_config_list { config { name: 'a' base_path: '/m' } }",
     ["Illegal setting neither", "add model_platform"]),
    ("model_config_list { config { name: 'a' base_path: '/m' model_platform: 'tensorflow' }"
     " config { name: 'a' base_path: '/n' model_platform: 'tensorflow' } }",
     ["Illegal to list model a multiple times in config list", "one entry per name"]),
    ("model_config_list { config { name: 'a' base_path: 'models/a' model_platform: 'tensorflow' } }",
     ["Expected model a to have an absolute path or URI; got base_path()=models/a"]),
    ("model_config_list { config { name: 'a' base_path: '/m' model_platform: 'tensorflow'"
     " model_version_policy { specific { versions: 1 } } version_labels { key: 'stable' value: 2 } } }",
     ["Request to assign label to version 2 of model a", "not currently available", "point stable"]),
    ("", ["lists no model"]),
])
def test_broken_model_config_is_refused_naming_file_field_and_fix(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(mc.ModelConfigError) as caught:
        mc.check_labels(mc.read_model_config(path), path)
    for word in [path] + words:
        assert word in str(caught.value)


def test_label_to_a_version_the_latest_policy_does_not_serve(tmp_path):
    for version in (1, 2, 3):
        (tmp_path / "m" / str(version)).mkdir(parents=True)
    models = [mc.ServedModel("a", str(tmp_path / "m"), VersionPolicy("latest", 2), {"old": 1})]
    with pytest.raises(mc.ModelConfigError) as caught:
        mc.check_labels(models, "f")
    assert caught.value.code == "FAILED_PRECONDITION" and "serves [2, 3]" in str(caught.value)
    mc.check_labels([mc.ServedModel("a", str(tmp_path / "m"), VersionPolicy("latest", 2), {"new": 3})], "f")


def test_broken_batching_and_monitoring_files(tmp_path):
    with pytest.raises(mc.ModelConfigError, match="max_batch_size .* out of range"):
        mc.read_batching_parameters(write(tmp_path, "max_batch_size { value: 0 }", "b.config"))
    with pytest.raises(mc.ModelConfigError, match="Invalid protobuf file.*max_batch"):
        mc.read_batching_parameters(write(tmp_path, "max_batch { value: 4 }", "b.config"))
    with pytest.raises(mc.ModelConfigError, match="must start with /"):
        mc.read_monitoring_config(write(tmp_path, "prometheus_config { enable: true path: 'metrics' }", "m.config"))
    with pytest.raises(mc.ModelConfigError, match="cannot read model_config_file .*No such file"):
        mc.read_model_config(str(tmp_path / "missing.config"))


def test_container_paths_read_from_the_volume_mounted_there(tmp_path):
    volumes = ["./outputs/serving_model/taxi:/models/taxi:ro", f"{tmp_path}:/config"]
    assert mc.host_path("/models/taxi", volumes) == os.path.abspath("outputs/serving_model/taxi")
    assert mc.host_path("/models/taxi/7", volumes) == os.path.abspath("outputs/serving_model/taxi/7")
    assert mc.host_path("/config/models.config", volumes) == str(tmp_path / "models.config")
    assert mc.host_path("/models/taxicab", volumes) == "/models/taxicab"      # not under the mount
    with pytest.raises(config.ConfigError, match="container_volumes"):
        config.load({"container_volumes": "relative/only"})


def test_models_from_settings_prefers_the_file_then_home_config_then_settings(tmp_path):
    home = tmp_path / "home"
    settings = config.load({"home": str(home), "version_labels": "stable=3", "model_version_policy": "all"})
    assert mc.models_from_settings(settings) == [
        mc.ServedModel("taxi", str(home / "serving_model" / "taxi"), VersionPolicy("all"), {"stable": 3})]
    mc.write_model_config(str(settings.served_model_config_path), [mc.ServedModel("promoted", "/srv/p")])
    assert [m.name for m in mc.models_from_settings(settings)] == ["promoted"]
    path = write(tmp_path, GOOD % ("/models/taxi", "/models/other"))
    settings = config.load({"home": str(home), "model_config_file": path,
                            "container_volumes": f"{tmp_path}/srv:/models"})
    assert [(m.name, m.base_path) for m in mc.models_from_settings(settings)] == [
        ("taxi", f"{tmp_path}/srv/taxi"), ("other", f"{tmp_path}/srv/other")]


def serve_exit(tmp_path, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-m", "tfxops.cli", "serve", "--home", str(tmp_path / "h"), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(REPO))
    return done.returncode, done.stderr


def test_serve_refuses_a_broken_config_before_loading_without_traceback(tmp_path):
    path = write(tmp_path, "model_config_list { config { name: 'a' base_path: '/m' model_platform: 'tensorflow' }"
                           " config { name: 'a' base_path: '/n' model_platform: 'tensorflow' } }")
    code, err = serve_exit(tmp_path, f"--model_config_file={path}", "--port=1", "--rest_api_port=2")
    assert code == 2, err
    assert f"tfxops serve: {path}: Illegal to list model a multiple times" in err
    assert "Traceback" not in err and "AVAILABLE" not in err


def test_batching_file_values_yield_to_explicit_settings_and_bad_values_are_refused(tmp_path):
    models = write(tmp_path, GOOD % ("/a", "/b"))
    batching = write(tmp_path, "max_batch_size { value: 8 } batch_timeout_micros { value: 500 }"
                               " num_batch_threads { value: 3 } max_enqueued_batches { value: 10 }", "b.config")
    settings = config.load({"model_config_file": models, "batching_parameters_file": batching,
                            "max_batch_size": "16"})
    files = mc.read_serving_files(settings, explicit={"max_batch_size"})
    assert (files.settings.max_batch_size, files.settings.batch_timeout_micros) == (16, 500)   # --set wins
    assert files.num_batch_threads == 3 and files.settings.max_concurrent_requests == 10 * 16
    assert [m.name for m in files.models] == ["taxi", "other"]
    write(tmp_path, "max_batch_size { value: -4 }", "b.config")
    with pytest.raises(mc.ModelConfigError, match="b.config: max_batch_size { value: -4 } is out of range"):
        mc.read_serving_files(settings)
    off = write(tmp_path, "prometheus_config { enable: false }", "m.config")
    assert mc.read_serving_files(config.load({"monitoring_config_file": off})).metrics_path == ""


def test_file_system_poll_wait_seconds_zero_scans_once_as_tf_serving(tmp_path):
    import threading
    from serving.models import ModelManager

    once = ModelManager("once", str(tmp_path), poll_seconds=0)
    watched = ModelManager("watched", str(tmp_path), poll_seconds=30)
    once.start()
    watched.start()
    names = {t.name for t in threading.enumerate()}
    once.stop(0)
    watched.stop(0)
    assert "model-watcher-watched" in names and "model-watcher-once" not in names
