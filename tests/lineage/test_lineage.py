"""`tfxops lineage` on the store the end-to-end pipeline test wrote (SQLite), and on
a real MariaDB server.

Runs in order: reads of the first run; a cached rerun (diff: no change); a run on a
different data slice in another process while lineage reads the store (diff: the
data fingerprint changed); the pipeline and lineage against MariaDB.
"""
import hashlib
import json
import shutil
import sqlite3

import pytest

from pipeline.pipeline import code_fingerprint
from tests.conftest import SMALL_ROWS
from tests.lineage.conftest import MYSQL_DATABASE, lineage_cli, settings_args
from core import config, mlmd, pushdir
from core.domain import DOMAIN_FILE, read_domain
from core import features as F


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _model_json(settings, *extra):
    code, out, err = lineage_cli("model", *extra, "--json", *settings_args(settings))
    assert code == 0, err
    return json.loads(out)


# --------------------------------------------------------------------- model
def test_model_traces_the_pushed_version_to_its_csv_with_its_metrics(first_run, e2e_settings,
                                                                     small_data_dir):
    report = _model_json(e2e_settings, first_run.pushed_version)
    assert report["version"] == first_run.pushed_version
    assert report["run_id"] == first_run.run_id
    summary = report["summary"]

    data = summary["data"]
    csv = small_data_dir / "data.csv"
    assert data["input_base"] == str(small_data_dir)
    assert [f["path"] for f in data["files"]] == [str(csv)]
    fingerprint = data["input_fingerprint"]
    assert f"total_bytes:{csv.stat().st_size}" in fingerprint and "num_files:1" in fingerprint
    assert data["unchanged_since"] is True
    assert sum(data["num_examples"].values()) == SMALL_ROWS

    evaluation = summary["evaluation"]
    assert evaluation["blessed"] is True
    ours = {m["metric"]: m["value"] for m in evaluation["metrics"]}
    theirs = {m["metric"]: m["value"] for m in first_run.metrics}
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value)
    assert evaluation["thresholds"]["auc"].startswith(f">= {e2e_settings.min_auc:g}")
    assert evaluation["thresholds"]["binary_accuracy"] == f">= {e2e_settings.min_binary_accuracy:g}"

    training = summary["training"]
    assert training["train_args"] == {"num_steps": e2e_settings.train_steps}
    assert training["hyperparameters"] == json.loads(json.dumps(e2e_settings.hparams))
    fingerprint = code_fingerprint([e2e_settings.preprocessing_fn, e2e_settings.run_fn],
                                   shared_modules=[F.__name__])   # as the pipeline records it
    assert summary["code"]["Trainer"]["code_fingerprint"] == fingerprint
    assert summary["code"]["Transform"]["code_fingerprint"] == fingerprint
    assert summary["schema"]["features"] > 0

    # the chain, in order, as the tree shows it
    chain, node = [], report["tree"]
    while node:
        chain.append(node["type"] if node["kind"] == "artifact" else node["node_id"])
        follow = [n for n in node.get("produced_by", []) + node.get("inputs", [])
                  if not n.get("shown_elsewhere") and n.get("key") not in ("model_blessing", "schema")]
        follow = [n for n in follow if not (n["kind"] == "artifact" and n["type"] == "TransformGraph")] or follow
        follow = [n for n in follow if n.get("key") == "model"] or follow     # the Pusher's model, not its side inputs
        node = follow[-1] if follow else None
    assert chain == ["PushedModel", "Pusher", "Model", "Trainer", "Examples", "CsvExampleGen"]
    # the version's input domain and its holdout verdict are shown beside its card and its blessing
    pusher_inputs = [n["key"] for n in report["tree"]["produced_by"][0]["inputs"]]
    assert pusher_inputs[:5] == ["model_blessing", "holdout_blessing", "model_card", "input_domain", "model"]
    assert report["input_domain"].endswith(DOMAIN_FILE)
    assert read_domain(report["input_domain"][:-len(DOMAIN_FILE)]) is not None


def test_model_defaults_to_the_version_being_served(first_run, e2e_settings):
    report = _model_json(e2e_settings)
    served = pushdir.newest_version(str(e2e_settings.model_push_dir))
    assert report["version"] == str(served) and report["serving_now"] is True
    assert _model_json(e2e_settings, "serving")["version"] == str(served)


def test_model_as_text_dot_and_self_contained_html(first_run, e2e_settings, small_data_dir, tmp_path):
    args = settings_args(e2e_settings)
    code, text, err = lineage_cli("model", first_run.pushed_version, "--no-metrics", *args)
    assert code == 0, err
    for expected in ("PushedModel", "<- Pusher", "ModelBlessing", "<- Evaluator", "<- Trainer",
                     "<- Transform", "Schema", "Examples", "<- CsvExampleGen", str(small_data_dir / "data.csv")):
        assert expected in text

    code, dot, err = lineage_cli("model", first_run.pushed_version, "--format", "dot", "--no-metrics", *args)
    assert code == 0, err
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}") and " -> " in dot

    page = tmp_path / "model.html"
    code, _, err = lineage_cli("model", first_run.pushed_version, "--format", "html", "-o", page,
                               "--no-metrics", *args)
    assert code == 0, err
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "Trainer" in html
    # opens without a server or network: no scripts or stylesheets from elsewhere
    assert "<script" not in html and "src=" not in html and "<link" not in html
    assert "https://" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def _writable_copy(e2e_settings, first_run, tmp_path):
    """A copy of the e2e store to write into: (path, store, the first run's PushedModel)."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    copy = tmp_path / "metadata.sqlite"
    shutil.copy(e2e_settings.metadata_file, copy)
    config_ = pb.ConnectionConfig()
    config_.sqlite.filename_uri = str(copy)
    writer = metadata_store.MetadataStore(config_)
    pushed = mlmd.pushed_model_for_version(writer, first_run.pushed_version).artifact
    return copy, writer, pushed


def test_model_shows_later_monitoring_runs_downstream(first_run, e2e_settings, tmp_path):
    """A tfxops.Monitor execution that read the PushedModel appears in its lineage."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    copy, writer, pushed = _writable_copy(e2e_settings, first_run, tmp_path)
    monitor_type = writer.put_execution_type(pb.ExecutionType(name="tfxops.Monitor"))
    report_type = writer.put_artifact_type(pb.ArtifactType(name="tfxops.MonitoringReport"))
    report = pb.Artifact(type_id=report_type, uri=str(tmp_path / "report"))
    execution = pb.Execution(type_id=monitor_type, last_known_state=pb.Execution.COMPLETE)
    read = pb.Event(artifact_id=pushed.id, type=pb.Event.INPUT)
    read.path.steps.add().key = "pushed_model"
    wrote = pb.Event(type=pb.Event.OUTPUT)
    wrote.path.steps.add().key = "report"
    writer.put_execution(execution, [(pushed, read), (report, wrote)], [])
    del writer

    settings = config.load({"home": e2e_settings.home, "metadata_path": str(copy)})
    report_json = _model_json(settings, first_run.pushed_version, "--no-metrics")
    monitors = [d for d in report_json["downstream"] if d["type"] == "tfxops.Monitor"]
    assert len(monitors) == 1
    assert monitors[0]["inputs"] == [{"key": "pushed_model", "id": pushed.id, "type": "PushedModel"}]
    assert [o["type"] for o in monitors[0]["outputs"]] == ["tfxops.MonitoringReport"]
    code, text, _ = lineage_cli("model", first_run.pushed_version, "--no-metrics", *settings_args(settings))
    assert code == 0 and "Monitor #" in text and "tfxops.MonitoringReport" in text


def test_a_repush_outside_the_pipeline_traces_to_the_same_data_and_evaluation(first_run, e2e_settings,
                                                                               small_data_dir, tmp_path):
    """Monitoring re-pushes a blessed model as a ``tfxops.Repush`` execution (input
    ``model``, output a PushedModel): its lineage is the model's training run."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    copy, writer, pushed = _writable_copy(e2e_settings, first_run, tmp_path)
    model = mlmd.input_artifacts(writer, mlmd.producer(writer, pushed.id).id)["model"][0]
    repush_type = writer.put_execution_type(pb.ExecutionType(name="tfxops.Repush"))
    new_version = str(int(first_run.pushed_version) + 1000)
    new = pb.Artifact(type_id=pushed.type_id, uri=str(tmp_path / "pushed"))
    new.custom_properties["pushed"].int_value = 1
    new.custom_properties["pushed_version"].string_value = new_version
    read = pb.Event(type=pb.Event.INPUT)
    read.path.steps.add().key = "model"
    wrote = pb.Event(type=pb.Event.OUTPUT)
    wrote.path.steps.add().key = "pushed_model"
    writer.put_execution(pb.Execution(type_id=repush_type, last_known_state=pb.Execution.COMPLETE),
                         [(model, read), (new, wrote)], [])
    del writer

    settings = config.load({"home": e2e_settings.home, "metadata_path": str(copy)})
    report = _model_json(settings, new_version)
    assert report["run_id"] is None and report["pushed_by"]["node_id"] == "Repush"
    assert report["summary"]["data"]["input_base"] == str(small_data_dir)
    evaluation = report["summary"]["evaluation"]
    assert evaluation["blessed"] is True
    auc = {m["metric"]: m["value"] for m in evaluation["metrics"]}["auc"]
    assert auc == pytest.approx(next(m["value"] for m in first_run.metrics if m["metric"] == "auc"))


# ---------------------------------------------------------------- artifact
def test_artifact_subgraph_upstream_downstream_and_hops(first_run, e2e_settings):
    report = _model_json(e2e_settings, first_run.pushed_version, "--no-metrics")
    model_id = next(n["id"] for n in report["tree"]["produced_by"][0]["inputs"]
                    if n["key"] == "model" and n["type"] == "Model")
    args = settings_args(e2e_settings)

    def nodes(*flags):
        code, out, err = lineage_cli("artifact", model_id, "--json", *flags, *args)
        assert code == 0, err
        data = json.loads(out)
        return {e["node_id"] for e in data["executions"]}, {a["type"] for a in data["artifacts"]}

    # one hop: the execution that made it; two: also what that execution read
    up_execs, up_types = nodes("--upstream", "--hops", "1")
    assert up_execs == {"Trainer"} and up_types == {"Model"}
    up_execs, up_types = nodes("--upstream", "--hops", "2")
    assert up_execs == {"Trainer"} and {"Examples", "Schema", "TransformGraph"} <= up_types
    assert "PushedModel" not in up_types
    deep_execs, _ = nodes("--upstream", "--hops", "10")
    assert {"Trainer", "Transform", "CsvExampleGen", "ImportSchemaGen"} <= deep_execs
    assert "Pusher" not in deep_execs
    down_execs, down_types = nodes("--downstream", "--hops", "3")
    assert {"Evaluator", "Pusher"} <= down_execs and "PushedModel" in down_types
    assert "CsvExampleGen" not in down_execs

    for fmt in ("text", "dot", "html"):
        code, out, err = lineage_cli("artifact", model_id, "--format", fmt, *args)
        assert code == 0 and out, err


# -------------------------------------------------------------------- runs
def test_runs_newest_first_with_component_outcomes(first_run, cached_rerun, e2e_settings):
    code, out, err = lineage_cli("runs", "--json", *settings_args(e2e_settings))
    assert code == 0, err
    rows = json.loads(out)
    ids = [r["run_id"] for r in rows]
    assert ids.index(cached_rerun.run_id) < ids.index(first_run.run_id)
    first = rows[ids.index(first_run.run_id)]
    assert first["status"] == "complete" and first["pushed_version"] == first_run.pushed_version
    assert {c["node_id"]: c["state"] for c in first["components"]}["Trainer"] == "executed"
    rerun = rows[ids.index(cached_rerun.run_id)]
    states = {c["node_id"]: c["state"] for c in rerun["components"]}
    assert states["Trainer"] == states["Transform"] == states["Pusher"] == "cached"
    assert rerun["pushed_version"] is None and rerun["cached_push_version"] == first_run.pushed_version

    code, text, _ = lineage_cli("runs", *settings_args(e2e_settings))
    assert code == 0 and first_run.run_id in text and "Trainer cached" in text


# -------------------------------------------------------------------- diff
def test_diff_of_a_cached_rerun_reports_no_change(first_run, cached_rerun, e2e_settings):
    code, out, err = lineage_cli("diff", first_run.run_id, cached_rerun.run_id, "--json",
                                 *settings_args(e2e_settings))
    assert code == 0, err
    diff = json.loads(out)
    assert diff["changed"] is False, diff["changes"]
    assert set(diff["unchanged"]) >= {"data", "code", "configuration", "schema", "metrics"}
    assert {"CsvExampleGen", "Trainer", "Evaluator"} <= set(diff["reused_outputs"])
    code, text, _ = lineage_cli("diff", first_run.run_id, cached_rerun.run_id, *settings_args(e2e_settings))
    assert code == 0 and "No change" in text


def test_diff_of_runs_on_different_data_reports_the_data_fingerprint(first_run, other_data_run,
                                                                      e2e_settings):
    code, out, err = lineage_cli("diff", first_run.run_id, other_data_run["run_id"], "--json",
                                 *settings_args(e2e_settings))
    assert code == 0, err
    diff = json.loads(out)
    assert diff["changed"] is True
    data = {c["key"]: c for c in diff["changes"]["data"]}
    fingerprint = data["CsvExampleGen.examples.input_fingerprint"]
    assert fingerprint["a"] != fingerprint["b"]
    assert data["CsvExampleGen.input_base"]["b"] == str(other_data_run["data_dir"])
    assert "code" in diff["unchanged"] and "schema" in diff["unchanged"]
    # the other run pushes into a push directory of its own (conftest.other_data_run): its only other setting
    assert {c["key"] for c in diff["changes"].get("configuration", [])} == {
        "Pusher.push_destination.filesystem.base_directory", "baseline_model_resolver.serving_model_dir"}
    assert "metrics" in diff["changes"]      # another model on other data
    code, text, _ = lineage_cli("diff", first_run.run_id, other_data_run["run_id"],
                                *settings_args(e2e_settings))
    assert code == 0 and "input_fingerprint" in text


def test_model_says_what_changed_since_the_previous_push(first_run, other_data_run, e2e_settings):
    first = _model_json(e2e_settings, first_run.pushed_version, "--no-metrics")
    assert first["since_previous"]["previous_version"] is None
    code, out, err = lineage_cli("runs", "--json", *settings_args(e2e_settings))
    other = next(r for r in json.loads(out) if r["run_id"] == other_data_run["run_id"])
    if other["pushed_version"] is None:
        pytest.skip("the model trained on the other slice was not blessed, so nothing new was pushed")
    report = _model_json(e2e_settings, other["pushed_version"], "--no-metrics")
    since = report["since_previous"]
    assert since["previous_version"] == first_run.pushed_version
    assert since["previous_run"] == first_run.run_id and since["diff"]["run_b"] == other_data_run["run_id"]
    assert "CsvExampleGen.examples.input_fingerprint" in {c["key"] for c in since["diff"]["changes"]["data"]}


def test_lineage_reads_while_a_pipeline_writes(other_data_run):
    reader = other_data_run["reader"]
    assert reader.errors == []
    assert reader.reads > 0


# --------------------------------------------------------------- bad input
def test_unknown_ids_list_what_exists(first_run, e2e_settings):
    args = settings_args(e2e_settings)
    code, _, err = lineage_cli("model", "12345", *args)
    assert code == 2 and "no pushed model with version '12345'" in err and first_run.pushed_version in err
    code, _, err = lineage_cli("diff", "no-such-run", first_run.run_id, *args)
    assert code == 2 and "no run 'no-such-run'" in err and first_run.run_id in err
    code, _, err = lineage_cli("artifact", "999999", *args)
    assert code == 2 and "no artifact with id 999999" in err and "PushedModel" in err
    code, _, err = lineage_cli("artifact", "1", "--hops", "0", *args)
    assert code == 2


def test_missing_or_foreign_store_is_an_error_and_nothing_is_created(tmp_path):
    missing = tmp_path / "nowhere"
    code, _, err = lineage_cli("runs", "--home", missing)
    assert code == 2 and "no ML Metadata store" in err
    assert not missing.exists()

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (text)")
    before = _sha(foreign)
    code, _, err = lineage_cli("model", "--home", tmp_path, "--set", f"metadata_path={foreign}")
    assert code == 2 and "not an ML Metadata store" in err
    assert _sha(foreign) == before

    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    code, _, err = lineage_cli("runs", "--set", f"metadata_path={text_file}")
    assert code == 2 and "not an ML Metadata store" in err


def test_reading_never_writes_to_the_store(first_run, cached_rerun, e2e_settings, tmp_path):
    before = _sha(e2e_settings.metadata_file)
    args = settings_args(e2e_settings)
    for argv in (["runs"], ["model", "--no-metrics"], ["artifact", "1"],
                 ["diff", first_run.run_id, cached_rerun.run_id, "--no-metrics"]):
        code, _, err = lineage_cli(*argv, *args)
        assert code == 0, (argv, err)
    assert _sha(e2e_settings.metadata_file) == before


def test_mysql_connection_config_reads_the_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("SOME_PASSWORD_VAR", "s3cret")
    settings = config.load({"metadata_backend": "mysql", "mysql_host": "db", "mysql_port": "3307",
                            "mysql_database": "mlmd", "mysql_user": "u",
                            "mysql_password_env": "SOME_PASSWORD_VAR"})
    cfg = mlmd.connection_config(settings)
    assert (cfg.mysql.host, cfg.mysql.port, cfg.mysql.database, cfg.mysql.user, cfg.mysql.password) == \
        ("db", 3307, "mlmd", "u", "s3cret")
    assert "s3cret" not in mlmd.describe_store(settings)
    with pytest.raises(config.ConfigError):
        mlmd.connection_config(config.load({"metadata_backend": "postgres"}))


# ------------------------------------------------------------------- MySQL
def test_pipeline_and_lineage_on_mysql(mysql_run, mysql_server, small_data_dir):
    summary, writer, reader = mysql_run
    assert summary.pushed
    # read back with an account that may only SELECT: lineage needs nothing more
    report = _model_json(reader)
    assert report["version"] == summary.pushed_version
    assert report["store"].startswith("mysql://mlmd_reader@")
    assert report["summary"]["data"]["input_base"] == str(small_data_dir)
    assert report["summary"]["evaluation"]["blessed"] is True
    auc = {m["metric"]: m["value"] for m in report["summary"]["evaluation"]["metrics"]}["auc"]
    assert auc == pytest.approx(next(m["value"] for m in summary.metrics if m["metric"] == "auc"))
    code, out, err = lineage_cli("runs", "--json", *settings_args(reader))
    assert code == 0, err
    assert [r["run_id"] for r in json.loads(out)] == [summary.run_id]


def test_mysql_missing_database_is_an_error_and_not_created(mysql_run, mysql_server):
    _, writer, _ = mysql_run
    absent = config.load(dict(writer.as_dict(), mysql_database="no_such_mlmd"))
    code, _, err = lineage_cli("runs", *settings_args(absent))
    assert code == 1 and "cannot open ML Metadata store at 'mysql://mlmd_writer@" in err
    assert "writer-secret" not in err
    assert "no_such_mlmd" not in mysql_server.sql("SHOW DATABASES")
    assert MYSQL_DATABASE in mysql_server.sql("SHOW DATABASES")
