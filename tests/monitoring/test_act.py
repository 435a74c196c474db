"""A retrain's data directory: the original CSVs of data_dir (local, file:// or an
object store, here TensorFlow's ram://) beside the monitor's spans."""
import dataclasses
import os
import stat
import uuid

import tensorflow as tf

from core.config import Settings
from monitoring import act, policy
from pipeline import runner

HEADER = "trip_miles,tips\n"


def _spans(monitor_dir):
    spans = monitor_dir / "spans"
    spans.mkdir(parents=True)
    (spans / "span-w1.csv").write_text(HEADER + "2.0,1.0\n")


def _assert_originals_and_span(target, original_text):
    assert sorted(p.name for p in target.iterdir()) == ["original-a.csv", "span-w1.csv"]
    assert (target / "original-a.csv").read_text() == original_text


def test_retrain_data_includes_the_original_csvs_of_a_ram_uri(tmp_path):
    data_dir = f"ram://tfxops-{uuid.uuid4().hex}/data"
    tf.io.gfile.makedirs(data_dir)
    with tf.io.gfile.GFile(f"{data_dir}/a.csv", "w") as handle:
        handle.write(HEADER + "1.0,0.5\n")
    with tf.io.gfile.GFile(f"{data_dir}/notes.txt", "w") as handle:
        handle.write("not a CSV")
    _spans(tmp_path / "monitoring")
    target = act.retrain_data_dir(Settings(home=str(tmp_path), data_dir=data_dir), tmp_path / "monitoring")
    _assert_originals_and_span(target, HEADER + "1.0,0.5\n")


def test_retrain_data_includes_the_original_csvs_of_a_file_uri(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text(HEADER + "3.0,0.1\n")
    _spans(tmp_path / "monitoring")
    settings = Settings(home=str(tmp_path), data_dir=f"file://{tmp_path / 'data'}")
    _assert_originals_and_span(act.retrain_data_dir(settings, tmp_path / "monitoring"), HEADER + "3.0,0.1\n")


def test_retrain_with_a_missing_data_dir_fails_naming_the_setting(tmp_path):
    settings = Settings(home=str(tmp_path), data_dir=str(tmp_path / "missing"), retrain_with_feedback=True)
    decision = policy.Decision(action=policy.RETRAIN, triggered=True, reasons=["drift"], because="test")
    outcome = act.carry_out(settings, decision, monitor_dir=tmp_path / "monitoring", window_id="w1",
                            labelled_rows=[{"trip_miles": 1.0, "tips": 0.5}], judged_version=1)
    assert not outcome.ok and outcome.run_id is None
    assert "data_dir" in outcome.error and "retrain_include_original=false" in outcome.error
    assert outcome.span and outcome.span_rows == 1


def test_repush_marker_names_the_model(tmp_path):
    from core.pushdir import read_marker
    from monitoring.reuse import ReuseCandidate

    model = tmp_path / "Trainer" / "model" / "7" / "Format-Serving"
    model.mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"model")
    candidate = ReuseCandidate(model_id=7, model_uri=str(tmp_path / "Trainer" / "model" / "7"),
                               model_path=str(model), over=[], errors=0, matches=True, score=0.0, why="test")
    settings = Settings(home=str(tmp_path))
    outcome = act.repush(settings, candidate)
    pushed = settings.model_push_dir / outcome.pushed_version
    assert (pushed / "saved_model.pb").read_bytes() == b"model"
    marker = read_marker(pushed)
    assert marker["model_uri"] == candidate.model_uri and marker["model_artifact_id"] == 7


def test_a_retrain_the_gates_refused_says_why_nothing_was_pushed():
    """A run that succeeded but pushed nothing: the outcome carries the Pusher's reason, else
    the Evaluator's (the fairness gate's failure), never a bare 'nothing pushed'."""
    refused = runner.RunSummary(run_id="r1", ok=True, wall_seconds=1.0, nodes=[], blessed=False,
                                blessing_reasons=["fairness gate: payment_type=Cash: false positive rate 0.31 "
                                                  "above 0.2"])
    outcome = act.retrain_outcome(refused, "/data")
    assert outcome.not_pushed_reason == "not blessed: fairness gate: payment_type=Cash: false positive rate " \
                                        "0.31 above 0.2"
    assert outcome.to_dict()["not_pushed_reason"] == outcome.not_pushed_reason
    assert "pushed: nothing" in outcome.summary_text
    already = dataclasses.replace(refused, blessed=True, blessing_reasons=[],
                                  not_pushed_reason="model already pushed as version 3")
    assert act.retrain_outcome(already, "/data").not_pushed_reason == "model already pushed as version 3"
    pushed = dataclasses.replace(refused, blessed=True, blessing_reasons=[], pushed=True, pushed_version="4")
    outcome = act.retrain_outcome(pushed, "/data")
    assert outcome.not_pushed_reason is None and "not_pushed_reason" not in outcome.to_dict()
    failed = dataclasses.replace(refused, ok=False, failed_node="Trainer", error="out of memory")
    assert act.retrain_outcome(failed, "/data").not_pushed_reason is None


def test_a_span_copied_where_no_symlink_can_be_made_stays_owner_only(tmp_path):
    """The retrain directory's copy of a span of request rows is 0600 like the span, whatever
    the umask, not readable by other users (a symlink cannot be made where the name is taken,
    as on a filesystem without symlinks)."""
    span = act.write_span([{"trip_miles": 2.0, "company": "Flash Cab", "tips": 1.0}], tmp_path / "spans", "w1")
    copy = tmp_path / "retrain_data" / span.name
    copy.parent.mkdir()
    copy.write_text("stale\n")
    os.chmod(copy, 0o644)
    umask = os.umask(0o022)
    try:
        act.link_or_copy(span, copy)
    finally:
        os.umask(umask)
    assert not copy.is_symlink() and copy.read_bytes() == span.read_bytes()
    assert "Flash Cab" in copy.read_text()
    assert stat.S_IMODE(copy.stat().st_mode) == stat.S_IMODE(span.stat().st_mode) == 0o600
