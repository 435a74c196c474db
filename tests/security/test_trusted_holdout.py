"""The trusted holdout gate (pipeline.holdout): a retrain whose feedback span flips
the labels of a big group trains a candidate the holdout refuses (not pushed, the
reason names the AUCs and the margin, the served model stays); a clean retrain
passes it and is pushed.

Real pipeline runs (LocalDagRunner, TFMA, MLMD) on the small sample, through the
retrain path: ``monitoring.act.retrain_data_dir`` builds the directory of the
original CSVs plus the spans, ``pipeline.runner.run_pipeline`` runs on it, in a copy
of the session's trained home (tests/conftest.py's ``first_run``).
"""
import html
import json
import shutil

import pytest
from tfx.types import standard_artifacts

from core import config, mlmd
from core import features as F
from core.pushdir import newest_version
from monitoring import act, policy, report
from pipeline import holdout, runner
from pipeline.pusher import NOT_PUSHED_REASON_KEY
from tests.conftest import E2E_OVERRIDES, SMALL_ROWS, write_rows

POISONED_COMPANY = "Taxi Affiliation Services"     # a third of the small sample's rows
COPIES = 2                                          # flipped copies of each of the group's rows


def flipped(row):
    """The row with its label inverted: a big tip becomes none, none becomes a big one."""
    fare = float(row["fare"] or 0)
    big = F.is_big_tipper(float(row["tips"] or "nan"), fare)
    return dict(row, tips="0.0" if big else f"{fare * 0.5 + 1:.2f}")


@pytest.fixture(scope="module")
def holdout_settings(tmp_path_factory, e2e_settings, first_run):
    """A copy of the session's trained home (its store and served version): the retrains
    here push into the copy, never into the home other tests read."""
    assert first_run.ok and first_run.pushed, first_run.error
    home = tmp_path_factory.mktemp("holdout") / "home"
    shutil.copytree(e2e_settings.home, home)
    return config.load(dict(E2E_OVERRIDES, home=str(home), data_dir=str(e2e_settings.data_dir)), environ={})


@pytest.fixture(scope="module")
def poisoned_retrain(holdout_settings, first_run, taxi_rows):
    """A retrain whose span holds every row of one company twice, labels flipped (the
    feedback an attacker who sent those requests would give)."""
    group = [r for r in taxi_rows[:SMALL_ROWS] if r["company"] == POISONED_COMPANY]
    spans = holdout_settings.monitor_path / "spans"
    write_rows(spans / "span-poisoned.csv", [flipped(r) for r in group for _ in range(COPIES)], F.CSV_COLUMNS)
    served = newest_version(str(holdout_settings.model_push_dir))
    summary = runner.run_pipeline(holdout_settings, out=_Sink(),
                                  data_dir=str(act.retrain_data_dir(holdout_settings, holdout_settings.monitor_path)))
    return summary, len(group) * COPIES, served


@pytest.fixture(scope="module")
def clean_retrain(holdout_settings, poisoned_retrain):
    """The poisoned span dropped: a retrain on the original CSVs alone."""
    (holdout_settings.monitor_path / "spans" / "span-poisoned.csv").unlink()
    return runner.run_pipeline(holdout_settings, out=_Sink(),
                               data_dir=str(act.retrain_data_dir(holdout_settings, holdout_settings.monitor_path)))


class _Sink:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def test_a_first_run_is_judged_on_the_holdout_against_min_auc(first_run, holdout_settings):
    assert first_run.ok and first_run.pushed
    result = first_run.holdout
    assert result["passed"] and result["baseline_auc"] is None
    assert result["auc"] >= holdout_settings.min_auc and result["examples"] >= holdout_settings.holdout_min_examples
    assert result["holdout_dir"] == str(holdout_settings.data_dir)
    assert "trusted holdout" in runner.render(first_run) and "no served model" in runner.render(first_run)


def test_flipped_labels_in_a_span_are_refused_by_the_trusted_holdout(poisoned_retrain, first_run,
                                                                     holdout_settings):
    summary, span_rows, served = poisoned_retrain
    assert summary.ok, summary.error
    result = summary.holdout
    # the holdout saw none of the span: the same curated rows' eval split as the first run,
    # all of them in the retrain's eval split too (never trained on)
    assert result["examples"] == first_run.holdout["examples"]
    executions = _executions(holdout_settings, summary.run_id)
    held_out = _eval_examples(executions["TrustedHoldoutExampleGen"])
    assert len(held_out) == result["examples"] and held_out <= _eval_examples(executions["CsvExampleGen"])
    assert not result["passed"], result
    assert result["baseline_auc"] - result["auc"] > holdout_settings.holdout_max_auc_drop
    # not pushed; the reason names both AUCs and the margin; the served model stays
    assert not summary.pushed and summary.serving_version == str(served)
    assert newest_version(str(holdout_settings.model_push_dir)) == served
    reason = summary.not_pushed_reason
    assert reason == result["reason"]
    assert reason.startswith(f"trusted holdout: AUC {result['auc']:.4f} vs served {result['baseline_auc']:.4f}")
    assert "> holdout_max_auc_drop 0.02" in reason
    text = runner.render(summary)
    assert f"pushed: nothing ({reason})" in text and "REFUSED" in text
    assert json.loads(summary.to_json())["holdout"]["reason"] == reason
    assert span_rows > 2000
    [pushed] = executions["Pusher"].outputs["pushed_model"]
    assert mlmd.custom(pushed, NOT_PUSHED_REASON_KEY) == reason and not mlmd.custom(pushed, "pushed", 0)
    # nor can monitoring's reuse path re-push it later: a model the holdout refused is no blessed model
    [candidate] = executions["Trainer"].outputs["model"]
    blessed = {m.id for m in mlmd.blessed_model_artifacts(mlmd.open_store(holdout_settings))}
    assert candidate.id not in blessed and executions["Evaluator"].outputs["blessing"]


def test_the_monitor_says_the_holdout_refused_its_retrain(poisoned_retrain, holdout_settings):
    """The monitor's retrain outcome, its window decision and its report name the holdout's
    refusal, not just 'nothing pushed'."""
    summary, _, _ = poisoned_retrain
    outcome = act.retrain_outcome(summary, holdout_settings.monitor_path / "retrain_data")
    assert outcome.ok and not outcome.pushed
    # the holdout's refusal first (the Pusher's), then the Evaluator's when it refused the candidate too
    assert outcome.not_pushed_reason.startswith(summary.not_pushed_reason)
    assert ("not blessed: " in outcome.not_pushed_reason) == (summary.blessed is False)
    assert outcome.to_dict()["not_pushed_reason"].startswith("trusted holdout: AUC")
    retrain = policy.Decision(policy.RETRAIN, True, ["prediction drift"], "retrain: prediction drift")
    decision = policy.with_outcome(retrain, outcome, "w-poisoned")
    assert decision.because == f"retrain: prediction drift; nothing pushed: {outcome.not_pushed_reason}"
    assert not decision.failed
    page = report.render_html({"window": "w-poisoned", "decision": decision.to_dict()})
    assert html.escape(f"nothing pushed: {summary.not_pushed_reason}") in page


def test_a_clean_retrain_passes_the_holdout_and_is_pushed(clean_retrain, poisoned_retrain, holdout_settings):
    result = clean_retrain.holdout
    assert clean_retrain.ok and result["passed"], result
    assert result["baseline_auc"] is not None
    assert result["baseline_auc"] - result["auc"] <= holdout_settings.holdout_max_auc_drop
    assert clean_retrain.pushed and int(clean_retrain.pushed_version) > poisoned_retrain[2]
    assert "passed" in runner.render(clean_retrain)
    [candidate] = _executions(holdout_settings, clean_retrain.run_id)["Trainer"].outputs["model"]
    assert candidate.id in {m.id for m in mlmd.blessed_model_artifacts(mlmd.open_store(holdout_settings))}


def _eval_examples(example_gen):
    """The examples of an ExampleGen execution's eval split, serialized deterministically."""
    import tensorflow as tf

    [examples] = example_gen.outputs["examples"]
    files = tf.io.gfile.glob(f"{examples.uri}/Split-eval/*")
    return {tf.train.Example.FromString(record.numpy()).SerializeToString(deterministic=True)
            for record in tf.data.TFRecordDataset(files, compression_type="GZIP")}


def _executions(settings, run_id):
    store = mlmd.open_store(settings)
    run = mlmd.find_run(store, settings.pipeline_name, run_id)
    return {n.node_id: n for n in mlmd.run_executions(store, run, settings.pipeline_name)}


# ------------------------------------------------------------- without a pipeline run
def test_a_model_the_evaluator_blessed_is_not_pushed_when_the_holdout_refused_it(tmp_path):
    """TFX's Pusher executor with real artifacts: the main blessing says blessed, the
    holdout's does not: nothing is published and the PushedModel says why."""
    from tfx.proto import pusher_pb2
    from tfx.types import standard_component_specs as spec
    from tfx.utils import proto_utils

    from pipeline.pusher import AtomicPusherExecutor

    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "trainer")
    (tmp_path / "trainer" / "Format-Serving" / "variables").mkdir(parents=True)
    (tmp_path / "trainer" / "Format-Serving" / "saved_model.pb").write_bytes(b"a model")
    blessings = {}
    for name, blessed, reason in (("main", 1, ""), ("holdout", 0, "trusted holdout: AUC 0.6100 vs served 0.7400")):
        blessings[name] = standard_artifacts.ModelBlessing()
        blessings[name].uri = str(tmp_path / name)
        blessings[name].set_int_custom_property("blessed", blessed)
        blessings[name].set_string_custom_property("current_model", model.uri)
        blessings[name].set_string_custom_property(holdout.REASON_KEY, reason)
    base = tmp_path / "serving"
    destination = proto_utils.proto_to_json(pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base))))

    def push():
        pushed = standard_artifacts.PushedModel()
        pushed.uri = str(tmp_path / "pushed")
        AtomicPusherExecutor().Do(
            {spec.MODEL_KEY: [model], spec.MODEL_BLESSING_KEY: [blessings["main"]],
             holdout.HOLDOUT_BLESSING_KEY: [blessings["holdout"]]}, {spec.PUSHED_MODEL_KEY: [pushed]},
            {spec.PUSH_DESTINATION_KEY: destination, spec.CUSTOM_CONFIG_KEY: None})
        return pushed

    refused = push()
    assert refused.get_int_custom_property("pushed") == 0 and newest_version(str(base)) is None
    assert refused.get_string_custom_property(NOT_PUSHED_REASON_KEY) == "trusted holdout: AUC 0.6100 vs served 0.7400"
    blessings["holdout"].set_int_custom_property("blessed", 1)
    assert push().get_int_custom_property("pushed") == 1 and newest_version(str(base)) is not None

GATE = holdout.HoldoutGate(max_auc_drop=0.02, min_auc=0.7, min_examples=200)


def test_the_verdict_refuses_a_drop_beyond_the_margin_and_a_small_holdout():
    assert GATE.verdict(0.74, 0.75, 500).passed
    refused = GATE.verdict(0.61, 0.74, 500)
    assert not refused.passed
    assert refused.reason == "trusted holdout: AUC 0.6100 vs served 0.7400, drop 0.1300 > holdout_max_auc_drop 0.02"
    assert "fewer than holdout_min_examples 200" in GATE.verdict(0.9, 0.7, 150).reason
    assert "< min_auc 0.7 (no served model" in GATE.verdict(0.65, None, 500).reason
    assert not GATE.verdict(None, 0.7, 500).passed


def test_the_pusher_refuses_a_missing_refused_or_foreign_holdout_blessing():
    model = standard_artifacts.Model()
    model.uri = "/runs/Trainer/model/7"
    blessing = standard_artifacts.ModelBlessing()
    blessing.set_string_custom_property("current_model", "/runs/Trainer/model/7")
    blessing.set_int_custom_property("blessed", 0)
    blessing.set_string_custom_property(holdout.REASON_KEY, "trusted holdout: AUC 0.6100 vs served 0.7400, ...")
    wired = {"model": [model], holdout.HOLDOUT_BLESSING_KEY: [blessing]}
    assert holdout.pusher_refusal({"model": [model]}) is None          # not wired: TFX's Pusher as it was
    assert holdout.pusher_refusal(dict(wired, holdout_blessing=[])).startswith("trusted holdout: no holdout")
    assert holdout.pusher_refusal(wired).startswith("trusted holdout: AUC 0.6100")
    blessing.set_int_custom_property("blessed", 1)
    assert holdout.pusher_refusal(wired) is None
    blessing.set_string_custom_property("current_model", "/runs/Trainer/model/8")   # of another model
    assert "judged the model at /runs/Trainer/model/8, not this model" in holdout.pusher_refusal(wired)


def test_a_holdout_inside_a_directory_of_served_traffic_is_refused(tmp_path):
    settings = config.load({"home": str(tmp_path)}, environ={})
    for served in (settings.monitor_path / "retrain_data", settings.feedback_path, settings.request_logs_path):
        with pytest.raises(config.ConfigError, match="where served traffic is written"):
            holdout.trusted_holdout_dir(config.load({"home": str(tmp_path), "trusted_holdout_dir": str(served)},
                                             environ={}))
    assert holdout.trusted_holdout_dir(settings) == str(settings.data_dir)
    with pytest.raises(config.ConfigError, match="holdout_max_auc_drop"):
        config.load({"holdout_max_auc_drop": "-0.1"}, environ={})
