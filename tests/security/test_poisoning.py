"""The feedback loop as a poisoning channel (issue 16 part 5a), attacked: labels that
come back flipped for one group, a span the data gate refuses, and a clean span when
every span needs approval. Real request logs (the real writer), real feedback CSVs, the
real monitor pass and the real `tfxops approve` command; the retrains are real and tiny."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import audit
from core import features as F
from core.config import Settings
from core.examples import example_to_row, row_to_example
from monitoring import act, approval, monitor, poisoning, policy
from tests.monitoring.conftest import HELD_OUT, log_records, monitor_settings, write_feedback, write_logs

PER_REQUEST = 50
# a retrain the tests can afford: the pipeline's every step, on a few steps of training
TINY = {"reuse_blessed_models": "false", "cooldown_seconds": "0", "train_steps": "20", "eval_steps": "5",
        "attribution_rows": "0"}


@pytest.fixture(scope="module")
def held_out_rows(taxi_rows):
    """1,000 trips the first run never saw."""
    return taxi_rows[HELD_OUT]


def _flipped(rows):
    """The attack: every Credit Card trip labelled a small tip, and as many Cash trips
    labelled a big one, so that the overall big-tipper rate barely moves."""
    credit = sum(1 for r in rows if r["payment_type"] == "Credit Card")
    out, cash = [], 0
    for row in rows:
        row = dict(row)
        if row["payment_type"] == "Credit Card":
            row[F.LABEL_KEY] = "0"
        elif row["payment_type"] == "Cash" and cash < credit * 0.7:
            row[F.LABEL_KEY], cash = str(float(row["fare"] or 0) + 1), cash + 1
        out.append(row)
    return out


def _served_window(settings, rows, version, prefix):
    """``rows`` answered by ``version`` (request logs through the real writer), and
    their labels back in a feedback CSV."""
    chunks = [rows[i:i + PER_REQUEST] for i in range(0, len(rows), PER_REQUEST)]
    write_logs(settings.request_logs_path, log_records(chunks, version, prefix=prefix), 5)
    write_feedback(settings, [(f"{prefix}-{i}", chunk) for i, chunk in enumerate(chunks)], name=f"{prefix}.csv")


def _labelled(rows):
    """Rows as the monitor hands them to ``act``: decoded from the logged tf.Example, the tip joined."""
    out = []
    for row in rows:
        decoded = example_to_row(row_to_example({k: v for k, v in row.items() if k != F.LABEL_KEY}))
        decoded[F.LABEL_KEY] = float(row[F.LABEL_KEY]) if row[F.LABEL_KEY] != "" else None
        out.append(decoded)
    return out


def _tfxops(settings, overrides, *args):
    sets = [a for key, value in dict(overrides, data_dir=settings.data_dir).items() for a in ("--set", f"{key}={value}")]
    return subprocess.run([sys.executable, "-m", "tfxops.cli", *args, "--home", str(settings.home), *sets],
                          capture_output=True, text=True, timeout=900)


def _audited(settings, action):
    return [e for e in audit.entries(audit.audit_file(settings)) if e["action"] == action]


def _retrain():
    return policy.Decision(action=policy.RETRAIN, triggered=True, reasons=["test"], because="rerun the pipeline")


def test_flipped_labels_for_one_group_are_held_then_approved(tmp_path, e2e_settings, first_run, held_out_rows):
    settings = monitor_settings(tmp_path, e2e_settings, first_run, **TINY)
    _served_window(settings, _flipped(held_out_rows), int(first_run.pushed_version), "flip")

    result = monitor.monitor_once(settings)
    decision, window = result.decision, result.window
    outcome = decision.outcome
    # no automatic retrain: the pipeline never ran, the window is an alert (not a failure)
    assert decision.action == "retrain" and outcome.run_id is None and not result.failed
    assert outcome.held.startswith("retrain held for approval: suspected poisoning: ")
    assert "payment_type=Credit Card" in outcome.held and "payment_type=Cash" in outcome.held
    # the overall rate barely moved: only the groups give the attack away
    assert not outcome.review["labels"]["flagged"] and abs(outcome.review["labels"]["change"]) < 0.1
    assert "retrain held for approval" in result.summary_line()
    # the span is kept aside, out of the retrain data
    pending = approval.pending_dir(settings.monitor_path) / f"span-{window}.csv"
    assert Path(outcome.span) == pending and pending.is_file()
    assert not (settings.monitor_path / "spans" / f"span-{window}.csv").exists()
    (held,) = _audited(settings, audit.RETRAIN_HELD)
    assert "payment_type=Credit Card" in held["reason"] and f"tfxops approve {window}" in held["reason"]
    html = Path(result.report.html).read_text()
    assert "Retrain held for approval" in html and "payment_type=Credit Card" in html

    listed = _tfxops(settings, TINY, "approve", "--list")
    assert listed.returncode == 0 and window in listed.stdout and "payment_type=Credit Card" in listed.stdout

    released = _tfxops(settings, TINY, "approve", window)
    assert released.returncode == 0, released.stderr
    assert "Run " in released.stdout and "pushed:" in released.stdout      # the run's summary
    assert (settings.monitor_path / "spans" / f"span-{window}.csv").is_file() and not pending.exists()
    (approved,) = _audited(settings, audit.RETRAIN_APPROVED)
    assert approved["actor"] == audit.actor_name() and window in approved["reason"]
    assert _audited(settings, audit.RETRAIN)[-1]["actor"] == audit.actor_name()

    again = _tfxops(settings, TINY, "approve", window)
    assert again.returncode == 2 and f"window {window} was already approved" in again.stderr
    unknown = _tfxops(settings, TINY, "approve", "no-such-window")
    assert unknown.returncode == 2 and "no-such-window" in unknown.stderr and "--list" in unknown.stderr


def test_clean_feedback_from_the_same_data_retrains_automatically(tmp_path, e2e_settings, first_run,
                                                                  held_out_rows):
    settings = monitor_settings(tmp_path, e2e_settings, first_run, **TINY)
    _served_window(settings, held_out_rows, int(first_run.pushed_version), "clean")

    result = monitor.monitor_once(settings)
    outcome = result.decision.outcome
    assert result.decision.action == "retrain" and not outcome.held, outcome.held
    assert outcome.run_id is not None and outcome.ok, outcome.error
    assert Path(outcome.span) == settings.monitor_path / "spans" / f"span-{result.window}.csv"
    assert outcome.review["suspicions"] == [] and outcome.review["slices"]
    assert approval.held(settings.monitor_path) == [] and _audited(settings, audit.RETRAIN_HELD) == []


def test_a_span_failing_the_data_gate_is_held_naming_the_anomaly(tmp_path, small_data_dir, held_out_rows):
    settings = Settings(home=str(tmp_path), data_dir=str(small_data_dir))
    rows = _labelled(held_out_rows[:600])
    for row in rows[::10]:
        row["trip_miles"] = "a few miles"          # a client sent text where a number goes
    outcome = act.carry_out(settings, _retrain(), monitor_dir=settings.monitor_path, window_id="w-gate",
                            labelled_rows=rows, judged_version=1)
    assert outcome.held and outcome.run_id is None
    assert "fails the data gate" in outcome.held and "trip_miles" in outcome.held
    (entry,) = approval.held(settings.monitor_path)
    assert entry.window == "w-gate" and any("trip_miles" in r for r in entry.reasons)
    assert not (settings.monitor_path / "retrain_data").exists()


def _flipped_for(rows, feature, value):
    """The attack on a group the configured slices do not name: ``feature=value``'s
    labels inverted (a big tipper labelled no tip, any other trip a tip of its fare)."""
    out = []
    for row in rows:
        row = dict(row)
        if row[feature] == value:
            fare = float(row["fare"] or 0)
            big = F.is_big_tipper(float(row[F.LABEL_KEY] or 0), fare)
            row[F.LABEL_KEY] = "0" if big else str(fare + 1)
        out.append(row)
    return out


def test_flipped_labels_for_one_company_are_held_naming_it(tmp_path, small_data_dir, held_out_rows):
    """company is a model input but neither a slice nor a sensitive feature: every
    categorical model input's slices are judged."""
    company = "Dispatch Taxi Affiliation"             # 125 of the 1,000 rows, 318 of the history's
    settings = Settings(home=str(tmp_path), data_dir=str(small_data_dir))
    assert "company" not in settings.slice_features + settings.sensitive_features
    rows = _labelled(_flipped_for(held_out_rows, "company", company))
    outcome = act.carry_out(settings, _retrain(), monitor_dir=settings.monitor_path, window_id="w-company",
                            labelled_rows=rows, judged_version=1)
    assert outcome.held and outcome.run_id is None
    assert f"company={company}" in outcome.held, outcome.held
    flagged = [s["group"] for s in outcome.review["slices"] if s["flagged"]]
    assert flagged == [f"company={company}"]          # the overall rate and the configured slices pass
    assert not outcome.review["labels"]["flagged"]
    (entry,) = approval.held(settings.monitor_path)
    assert entry.window == "w-company"


def test_approval_required_holds_a_clean_span(tmp_path, small_data_dir, held_out_rows):
    rows = _labelled(held_out_rows)
    settings = Settings(home=str(tmp_path), data_dir=str(small_data_dir))
    assert not poisoning.review(settings, act.write_span(rows, tmp_path / "probe", "w"),
                                act.training_history(settings, settings.monitor_path)).held
    settings = Settings(home=str(tmp_path), data_dir=str(small_data_dir), retrain_requires_approval=True)
    outcome = act.carry_out(settings, _retrain(), monitor_dir=settings.monitor_path, window_id="w-clean",
                            labelled_rows=rows, judged_version=1)
    assert outcome.held == "retrain held for approval: approval required by retrain_requires_approval"
    assert outcome.review["suspicions"] == []
    rejected = act.discard(settings, "w-clean", audit.actor_name())
    assert rejected.state == approval.REJECTED and not Path(outcome.span).exists()
    (entry,) = _audited(settings, audit.RETRAIN_REJECTED)
    assert entry["actor"] == audit.actor_name()
    assert json.loads((settings.monitor_path / "spans" / "decided" / "span-w-clean.json").read_text())[
        "decided_by"] == audit.actor_name()


def test_bounds_out_of_range_are_refused_naming_the_setting():
    from core import config

    for name, value in (("poisoning_max_slice_label_rate_change", "1.5"), ("poisoning_significance", "0"),
                        ("poisoning_min_slice_rows", "0"), ("poisoning_unjudged_features", "trip_month")):
        with pytest.raises(config.ConfigError, match=name):
            config.load({name: value}, environ={})


def _held_span(settings, window):
    """A span the guard held, as ``act.carry_out`` leaves one: its CSV and its hold in spans/pending."""
    pending = approval.pending_dir(settings.monitor_path)
    pending.mkdir(parents=True)
    span = pending / approval.span_name(window)
    span.write_text("tips\n1.0\n")
    approval.hold(settings.monitor_path, window, span, ["test hold"], {"rows": 1}, 1)
    return span


def test_approve_names_a_span_it_cannot_move_and_refuses_a_window_that_is_a_path(tmp_path):
    settings = Settings(home=str(tmp_path))
    span = _held_span(settings, "w1")
    blocked = settings.monitor_path / "spans" / approval.span_name("w1")
    blocked.mkdir()                                  # the target is taken by a directory: os.replace fails
    (blocked / "x").write_text("x")
    moved = _tfxops(settings, {}, "approve", "w1")
    assert moved.returncode == 2 and "Traceback" not in moved.stderr, moved.stderr
    assert str(span) in moved.stderr and str(blocked) in moved.stderr and "approve again" in moved.stderr
    assert span.is_file() and [e.window for e in approval.held(settings.monitor_path)] == ["w1"]

    for args in (("../../etc/passwd",), ("--reject", "w1/../w1")):
        refused = _tfxops(settings, {}, "approve", *args)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert "is not a window id" in refused.stderr and "no path separators" in refused.stderr
    assert span.is_file()
    with pytest.raises(approval.ApprovalError, match="is not a window id"):
        approval.reject(settings.monitor_path, "w 1", "someone")
