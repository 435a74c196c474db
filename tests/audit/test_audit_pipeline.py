"""The audit trail as the system writes it: a real pipeline run (the shared
``first_run``), a monitor's re-push of that run's model, and a server loading and
unloading its pushed version; each entry's MLMD ids exist in the run's store."""
import shutil

from core import audit, config, mlmd
from monitoring import act, policy
from monitoring.reuse import ReuseCandidate
from serving.server import BackgroundServer
from tests.serving.conftest import serving_settings


def _entries_of_run(settings, run_id):
    """The entries from the start of the run named ``run_id`` to its end."""
    entries = list(audit.entries(audit.audit_file(settings)))
    end = next(i for i, e in enumerate(entries) if e["action"] == "run_ended" and run_id in e["reason"])
    start = max(i for i, e in enumerate(entries[:end]) if e["action"] == "run_started")
    return entries[start:end + 1]


def _assert_ids_exist(store, evidence):
    assert evidence
    for name, value in evidence.items():
        if "execution_id" in name:
            assert store.get_executions_by_id([value]), name
        elif "context_id" in name:
            assert store.get_contexts_by_id([value]), name
        else:
            assert store.get_artifacts_by_id([value]), name


def test_a_pipeline_run_records_its_start_push_and_end(first_run, e2e_settings):
    assert first_run.ok and first_run.pushed and first_run.audit_error is None
    entries = _entries_of_run(e2e_settings, first_run.run_id)
    assert [e["action"] for e in entries] == ["run_started", "pushed", "run_ended"]
    store = mlmd.open_store(e2e_settings)
    pushed, ended = entries[1], entries[2]
    assert pushed["model_version"] == first_run.pushed_version and first_run.pushed_path in pushed["reason"]
    _assert_ids_exist(store, pushed["evidence"])
    [pushed_model] = store.get_artifacts_by_id([pushed["evidence"]["output_pushed_model_id"]])
    assert mlmd.custom(pushed_model, "pushed_version") == first_run.pushed_version
    assert store.get_executions_by_id([pushed["evidence"]["execution_id"]])[0].id == \
        mlmd.producer(store, pushed_model.id).id
    _assert_ids_exist(store, ended["evidence"])
    [run] = store.get_contexts_by_id([ended["evidence"]["pipeline_run_context_id"]])
    assert run.name == first_run.run_id and "succeeded" in ended["reason"]
    assert audit.verify(audit.audit_file(e2e_settings), None).ok


def test_a_monitor_repush_records_its_decision_and_the_new_version(first_run, e2e_settings, tmp_path):
    store = mlmd.open_store(e2e_settings)
    served = mlmd.pushed_model_for_version(store, first_run.pushed_version)
    model = mlmd.artifact(store, audit.version_evidence(e2e_settings.model_push_dir,
                                                        first_run.pushed_version)["model_artifact_id"])
    settings = config.load({"home": str(tmp_path)})
    shutil.copytree(served.destination, settings.model_push_dir / first_run.pushed_version)
    newer = str(int(first_run.pushed_version) + 5)     # a version pushed after the judged one
    shutil.copytree(served.destination, settings.model_push_dir / newer)
    reuse = ReuseCandidate(model_id=model.id, model_uri=model.uri, model_path=f"{model.uri}/Format-Serving",
                           over=[], errors=0, matches=True, score=0.0, why="test")
    decision = policy.Decision(action=policy.REPUSH, triggered=True, reasons=["2 features over their skew threshold"],
                               because="re-push blessed model", reuse=reuse)
    outcome = act.carry_out(settings, decision, monitor_dir=tmp_path / "monitoring", window_id="w1",
                            labelled_rows=[], judged_version=first_run.pushed_version)
    decided, repushed = list(audit.entries(audit.audit_file(settings)))
    assert decided["action"] == "monitor_decision" and decided["actor"].startswith("monitor:")
    assert decided["model_version"] == first_run.pushed_version and "skew threshold" in decided["reason"]
    assert decided["evidence"]["model_artifact_id"] == model.id
    _assert_ids_exist(store, decided["evidence"])
    assert repushed["action"] == "repush" and repushed["model_version"] == outcome.pushed_version
    assert repushed["evidence"] == {"model_artifact_id": model.id}


def test_the_server_records_the_versions_it_serves(first_run, e2e_settings, tmp_path):
    settings = serving_settings(tmp_path)
    shutil.copytree(first_run.pushed_path, settings.model_push_dir / "7")
    server = BackgroundServer(settings)
    server.start()
    server.stop()
    loaded, unloaded = list(audit.entries(audit.audit_file(settings)))
    assert loaded["action"] == unloaded["action"] == "served_version_changed"
    assert loaded["model_version"] == unloaded["model_version"] == "7"
    assert "now served" in loaded["reason"] and "no longer served" in unloaded["reason"]
    assert loaded["actor"].startswith("server:")
    _assert_ids_exist(mlmd.open_store(e2e_settings), loaded["evidence"])
    assert set(loaded["evidence"]) == {"model_artifact_id", "pusher_execution_id"}


def test_a_run_whose_audit_write_fails_keeps_its_result_and_exits_1(first_run, e2e_settings, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import E2E_OVERRIDES, REPO

    home = tmp_path / "home"
    shutil.copytree(e2e_settings.home, home)
    (tmp_path / "not-a-directory").write_text("")
    audit_path = tmp_path / "not-a-directory" / "audit.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "tfxops", "run", "--data", str(e2e_settings.data_dir), "--home", str(home),
         f"--set=audit_path={audit_path}", *[f"--set={k}={v}" for k, v in E2E_OVERRIDES.items()]],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=900)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "succeeded" in result.stdout and f"AUDIT TRAIL NOT WRITTEN: could not append 'run_started' to the " \
                                             f"audit trail {audit_path}" in result.stdout
    assert f"tfxops run: could not append 'run_started' to the audit trail {audit_path}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_that_fails_before_recording_anything_takes_nothing_from_the_run_before(
        first_run, e2e_settings, tmp_path, monkeypatch):
    """After a successful run in the same home, a run on the portable runner whose
    local Beam job service exits at start (its Python finds no standard library under
    PYTHONHOME) stops before its first node: no push, no run id, no ids of the run
    before it."""
    import dataclasses
    import io

    from pipeline import runner

    home = tmp_path / "home"
    shutil.copytree(e2e_settings.home, home)
    settings = dataclasses.replace(e2e_settings, home=str(home), beam_runner="portable")
    before = len(list(audit.entries(audit.audit_file(settings))))
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "no-python-here"))
    summary = runner.run_pipeline(settings, out=io.StringIO())
    monkeypatch.delenv("PYTHONHOME")
    assert not summary.ok and summary.failed_node == runner.BEAM_SERVICES, summary.error
    assert "exited at start" in summary.error
    assert summary.run_id == "-" and not summary.pushed and summary.blessed is None
    assert first_run.run_id not in summary.to_json()
    entries = list(audit.entries(audit.audit_file(settings)))[before:]
    assert [e["action"] for e in entries] == ["run_started", "run_ended"]
    assert first_run.run_id not in entries[1]["reason"] and "failed at Beam services" in entries[1]["reason"]
    assert entries[1]["evidence"] == {} and entries[1]["model_version"] is None
    assert audit.verify(audit.audit_file(settings), None).ok
