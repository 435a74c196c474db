import json
from pathlib import Path

import pytest

from core import config


def test_defaults_put_every_output_under_home():
    settings = config.load({"home": "/tmp/x"}, environ={})
    assert str(settings.pipeline_root_path) == "/tmp/x/pipeline_root"
    assert str(settings.metadata_file) == "/tmp/x/metadata.sqlite"
    assert str(settings.model_push_dir) == "/tmp/x/serving_model/taxi"
    assert str(settings.logs_path) == "/tmp/x/logs"


def test_environment_then_overrides_take_precedence():
    env = {"TFXOPS_TRAIN_STEPS": "77", "TFXOPS_MODEL_NAME": "cabs", "TFXOPS_ENABLE_CACHE": "false"}
    settings = config.load({"train_steps": "5"}, environ=env)
    assert settings.train_steps == 5            # --set wins over the environment
    assert settings.model_name == "cabs"
    assert settings.enable_cache is False


def test_lists_parse_from_commas_or_json():
    settings = config.load({"hidden_units": "8,4", "slice_features": '["a", "b"]'}, environ={})
    assert settings.hidden_units == [8, 4]
    assert settings.slice_features == ["a", "b"]
    assert settings.hparams["hidden_units"] == [8, 4]


@pytest.mark.parametrize("overrides, environ", [({"beam_runner": "flink"}, {}),
                                                ({}, {"TFXOPS_BEAM_RUNNER": "flink"})])
def test_an_unknown_beam_runner_is_refused_when_the_settings_load(overrides, environ):
    with pytest.raises(config.ConfigError, match="'beam_runner' must be one of local, portable, got 'flink'"):
        config.load(overrides, environ=environ)


def test_bad_settings_name_the_setting():
    with pytest.raises(config.ConfigError, match="unknown setting 'nope'"):
        config.load({"nope": "1"}, environ={})
    with pytest.raises(config.ConfigError, match="'train_steps' expects int"):
        config.load({"train_steps": "many"}, environ={})
    with pytest.raises(config.ConfigError, match="key=value"):
        config.parse_assignments(["train_steps"])


def test_defaults_put_monitoring_and_feedback_under_home():
    settings = config.load({"home": "/tmp/x"}, environ={})
    assert str(settings.monitor_path) == "/tmp/x/monitoring"
    assert str(settings.feedback_path) == "/tmp/x/feedback"
    assert str(settings.request_logs_path) == "/tmp/x/request_logs"
    moved = config.load({"home": "/tmp/x", "monitor_dir": "/elsewhere/m"}, environ={})
    assert str(moved.monitor_path) == "/elsewhere/m"


def test_tfxops_config_prints_every_derived_path(capsys):
    from tfxops import cli

    assert cli.main(["config", "--home", "/tmp/x"]) == 0
    printed = json.loads(capsys.readouterr().out)
    settings = config.load({"home": "/tmp/x"})
    derived = [name for name, value in vars(config.Settings).items()
               if isinstance(value, property) and isinstance(getattr(settings, name), Path)]
    assert len(derived) == len(settings.derived_paths())
    for name in derived:
        assert str(getattr(settings, name)) in printed.values(), name
    assert printed["monitor_dir"] == "/tmp/x/monitoring"
    assert printed["model_push_dir"] == "/tmp/x/serving_model/taxi"
