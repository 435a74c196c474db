"""The monitor's directories must be local: a URI is refused up front, naming the
setting, with the bad-input exit code and no traceback."""
import pytest

from core.config import ConfigError, Settings
from monitoring import traffic
from tfxops import cli


@pytest.mark.parametrize("options, setting", [
    (["--set", "request_log_dir=gs://b/logs"], "request_log_dir"),
    (["--set", "monitor_dir=gs://b/monitoring"], "monitor_dir"),
    (["--set", "feedback_dir=gs://b/feedback"], "feedback_dir"),
    (["--home", "gs://b/home"], "request_log_dir"),
])
def test_monitor_refuses_a_uri_directory(tmp_path, capsys, options, setting):
    argv = ["monitor", "--dry-run"] + (options if options[0] == "--home" else ["--home", str(tmp_path)] + options)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"setting '{setting}'" in err and "URI" in err
    assert "Traceback" not in err


def test_load_feedback_refuses_a_uri(tmp_path):
    settings = Settings(home=str(tmp_path), feedback_dir="gs://b/feedback")
    with pytest.raises(ConfigError, match="feedback_dir"):
        traffic.load_feedback(settings.feedback_path)
