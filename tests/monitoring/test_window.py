"""The window and its checkpoint with the real request-log writer, in-process:
crash and resume, an empty window, and the policy's cool-down (unreadable files
and versions without lineage: test_reliability.py)."""
import json
import time

import pytest

from monitoring import monitor, policy
from monitoring.reuse import ReuseCandidate
from monitoring.window import Checkpoint
from tests.monitoring.conftest import log_records, monitor_settings, write_logs
from tfxops import cli


def _chunks(rows, per_request):
    return [rows[i:i + per_request] for i in range(0, len(rows), per_request)]


def test_crash_then_resume_counts_every_request_once(tmp_path, e2e_settings, first_run, held_out_rows):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    version = int(first_run.pushed_version)
    logs = settings.request_logs_path
    first = write_logs(logs, log_records(_chunks(held_out_rows[:600], 20), version, prefix="a"), 10)
    assert len(first) == 3
    # a crash after the window was opened: the report directory cannot be created
    reports = settings.monitor_path / "reports"
    reports.parent.mkdir(parents=True)
    reports.write_text("not a directory")
    with pytest.raises(OSError):
        monitor.monitor_once(settings)
    state = json.loads((reports.parent / "state.json").read_text())
    assert sorted(state["open_window"]["files"]) == sorted(p.name for p in first)
    assert state["files"] == {}
    # more traffic arrives meanwhile (a new second: the writer names files by second)
    time.sleep(1.1)
    later = write_logs(logs, log_records(_chunks(held_out_rows[600:700], 20), version, prefix="b"), 10)
    reports.unlink()

    resumed = monitor.monitor_once(settings)        # exactly the crashed window
    assert resumed.resumed and resumed.rows == 600
    assert sorted(resumed.files) == sorted(p.name for p in first)
    after = monitor.monitor_once(settings)          # then what came after it
    assert not after.resumed and after.rows == 100
    assert after.files == [p.name for p in later]
    assert monitor.monitor_once(settings).status == "no_new_requests"
    checkpoint = Checkpoint(reports.parent)
    assert sum(f["rows"] for f in checkpoint.data["files"].values()) == 700
    assert len(checkpoint.data["windows"]) == 2


def test_empty_window_is_not_an_error(tmp_path, e2e_settings, first_run, capsys):
    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    settings.request_logs_path.mkdir(parents=True)     # the server made it, wrote nothing yet
    code = cli.main(["monitor", "--home", str(settings.home), "--set", f"metadata_path={settings.metadata_path}"])
    assert code == 0
    assert "no new requests" in capsys.readouterr().out


def test_policy_cooldown_and_one_action_per_window(e2e_settings):
    settings = e2e_settings
    reasons = ["1 feature(s) over their skew threshold"]
    now = 1_000_000.0
    last = {"window": "w1", "action": "retrain", "time": now - 60}
    judged = dict(reasons=reasons, is_current=True, dry_run=False, labelled_rows=10_000, now=now)
    d = policy.decide(settings, rows=10_000, window_action=None, last_action=last, **judged)
    assert d.action == "none" and d.triggered and "cool-down" in d.because
    d = policy.decide(settings, rows=10_000, window_action=None,
                      last_action=dict(last, time=now - settings.cooldown_seconds - 1), **judged)
    assert d.action == "retrain"
    d = policy.decide(settings, rows=10_000, window_action=last, last_action=None, **judged)
    assert d.action == "none" and "never triggers twice" in d.because
    d = policy.decide(settings, rows=10, window_action=None, last_action=None, **judged)
    assert d.action == "none" and "monitor_min_rows" in d.because
    match = ReuseCandidate(model_id=7, model_uri="", model_path="", over=[], errors=0, matches=True, score=0.0,
                           why="matches")
    d = policy.decide(settings, rows=10_000, window_action=None, last_action=None, reuse=match, **judged)
    assert d.action == "repush"


def test_unexpected_feature_and_wrong_type_are_anomalies(tmp_path, e2e_settings, first_run, held_out_rows):
    """Examples that do not fit the schema are decoded as logged (not through the
    schema's types), so the anomalies name them."""
    import tensorflow as tf

    settings = monitor_settings(tmp_path, e2e_settings, first_run, monitor_min_rows="10")
    version = int(first_run.pushed_version)
    records = log_records(_chunks(held_out_rows[:300], 10), version)
    for record in records:    # a feature the schema does not know; trip_miles as strings
        tensor = record.predict_log.request.inputs["examples"]
        examples = [tf.train.Example.FromString(s) for s in tensor.string_val]
        for e in examples:
            e.features.feature["surge_multiplier"].float_list.value.append(1.5)
            miles = e.features.feature["trip_miles"]
            values = list(miles.float_list.value)
            miles.ClearField("float_list")
            miles.bytes_list.value.extend([str(m).encode() for m in values])
        del tensor.string_val[:]
        tensor.string_val.extend(e.SerializeToString() for e in examples)
    write_logs(settings.request_logs_path, records, 10)
    result = monitor.monitor_once(settings, dry_run=True)
    (group,) = result.versions
    assert {"surge_multiplier", "trip_miles"} <= set(group.anomalous_features)
    by_name = {f.name: f for f in group.features}
    assert any(a["severity"] == "ERROR" for a in by_name["trip_miles"].anomalies)
    assert result.decision.triggered
