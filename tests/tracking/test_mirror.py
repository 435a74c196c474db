"""The MLflow mirror against real local tracking stores (SQLite), read back through
MLflow's own client: the session's first ``tfxops run`` (mirrored by the runner as
it ran), its pushed version in the registry with the champion alias, the alias
moved and moved back, a real monitor window, mirroring twice, and stores that
cannot be used (one warning, the caller goes on)."""
import os
import subprocess
import sys

import pytest

from core import config, mlmd
from core.ports import free_port
from tests.conftest import E2E_OVERRIDES, REPO
from tracking import mirror, registry, store

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _settings(e2e_settings, **overrides):
    """The session's home (its MLMD store and pushed version) with other MLflow settings."""
    return config.load(dict(E2E_OVERRIDES, home=e2e_settings.home, data_dir=str(e2e_settings.data_dir),
                            **overrides))


def _mirrored_runs(client, experiment: str, key_tag: str, value: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client.search_runs([found.experiment_id], f"tags.`{key_tag}` = '{value}'")


def _versions(client, name: str, version) -> list:
    return client.search_model_versions(f"name = '{name}' and tags.`tfxops.version` = '{version}'")


def _trainer_and_example_gen(settings, run_id):
    db = mlmd.open_store(settings)
    run = mlmd.find_run(db, settings.pipeline_name, run_id)
    nodes = {n.node_id: n for n in mlmd.run_executions(db, run, settings.pipeline_name)}
    return nodes["Trainer"], nodes["CsvExampleGen"], nodes["Pusher"], run


def _infra_blessing(settings, run_id):
    """The InfraValidator's InfraBlessing ``blessed`` (issue 17 part 2), None without one."""
    db = mlmd.open_store(settings)
    run = mlmd.find_run(db, settings.pipeline_name, run_id)
    nodes = {n.node_id: n for n in mlmd.run_executions(db, run, settings.pipeline_name)}
    infra = nodes.get("InfraValidator")
    return None if infra is None else float(mlmd.custom(infra.outputs["blessing"][0], "blessed"))


def test_tfxops_run_is_mirrored_with_parameters_metrics_and_mlmd_ids(e2e_settings, first_run):
    client = _client(store.tracking_uri(e2e_settings))
    assert store.tracking_uri(e2e_settings) == f"sqlite:///{os.path.abspath(e2e_settings.home)}/mlflow.db"
    (run,) = _mirrored_runs(client, "tfxops", "tfxops.mlmd.run_id", first_run.run_id)
    trainer, example_gen, pusher, context = _trainer_and_example_gen(e2e_settings, first_run.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    # the training settings the Trainer applied, and both fingerprints as MLMD holds them
    assert params["train_steps"] == E2E_OVERRIDES["train_steps"] and params["eval_steps"] == E2E_OVERRIDES["eval_steps"]
    assert params["hp.batch_size"] == E2E_OVERRIDES["batch_size"]
    assert params["code_fingerprint"] == mlmd.properties(trainer.execution)["custom_config"]["code_fingerprint"]
    assert params["data_fingerprint"] == mlmd.properties(example_gen.execution)["input_fingerprint"]
    assert params["threshold.auc"].startswith(">= ")
    # TFMA's metrics overall (as the run summary has them) and per slice: the hours partition the examples
    overall = {m["metric"]: m["value"] for m in first_run.metrics}
    assert metrics["auc"] == pytest.approx(overall["auc"])
    hours = {k: v for k, v in metrics.items() if k.startswith("slice/trip_start_hour:") and k.endswith("/example_count")}
    assert len(hours) > 10 and sum(hours.values()) == pytest.approx(overall["example_count"])
    assert metrics["blessed"] == 1.0 and tags["tfxops.blessed"] == "yes"
    assert metrics.get("infra_blessed") == _infra_blessing(e2e_settings, first_run.run_id)
    # the MLMD ids of the run
    assert tags["tfxops.mlmd.run_context_id"] == str(context.id)
    assert tags["tfxops.mlmd.execution.Trainer"] == str(trainer.execution.id)
    assert tags["tfxops.mlmd.artifact.Pusher.pushed_model"] == str(pusher.outputs["pushed_model"][0].id)
    assert run.info.status == "FINISHED" and tags["tfxops.status"] == "succeeded"
    assert tags["tfxops.pushed_version"] == first_run.pushed_version


def test_the_pushed_version_is_a_model_version_with_the_champion_alias(e2e_settings, first_run):
    client = _client(store.tracking_uri(e2e_settings))
    (run,) = _mirrored_runs(client, "tfxops", "tfxops.mlmd.run_id", first_run.run_id)
    (version,) = _versions(client, e2e_settings.model_name, first_run.pushed_version)
    _, example_gen, pusher, _ = _trainer_and_example_gen(e2e_settings, first_run.run_id)
    assert version.source == first_run.pushed_path and version.run_id == run.info.run_id
    assert version.tags["tfxops.mlmd.pushed_model_id"] == str(pusher.outputs["pushed_model"][0].id)
    assert version.tags["tfxops.data_fingerprint"] == mlmd.properties(example_gen.execution)["input_fingerprint"]
    assert version.tags["tfxops.code_fingerprint"] == run.data.params["code_fingerprint"]
    champion = client.get_model_version_by_alias(e2e_settings.model_name, registry.CHAMPION)
    assert champion.version == version.version
    assert run.data.tags["tfxops.registered_model_version"] == str(version.version)


def test_mirroring_the_same_run_again_duplicates_nothing(e2e_settings, first_run):
    client = _client(store.tracking_uri(e2e_settings))
    (before,) = _mirrored_runs(client, "tfxops", "tfxops.mlmd.run_id", first_run.run_id)
    assert mirror.log_pipeline_run(e2e_settings, first_run) == before.info.run_id
    assert len(_mirrored_runs(client, "tfxops", "tfxops.mlmd.run_id", first_run.run_id)) == 1
    assert len(_versions(client, e2e_settings.model_name, first_run.pushed_version)) == 1
    assert client.get_run(before.info.run_id).data.metrics == before.data.metrics


def test_move_champion_for_promote_and_rollback(tmp_path, e2e_settings, first_run):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = _settings(e2e_settings, mlflow_tracking_uri=uri, mlflow_registered_model="taxi-registry")
    trainer, _, pusher, _ = _trainer_and_example_gen(e2e_settings, first_run.run_id)
    pushed_model_id = pusher.outputs["pushed_model"][0].id
    pushed = int(first_run.pushed_version)
    registry.register_pushed_version(settings, pushed, {"pushed_model_id": pushed_model_id})
    client = _client(uri)
    champion = client.get_model_version_by_alias("taxi-registry", registry.CHAMPION)
    assert champion.tags["tfxops.version"] == str(pushed) and champion.source == first_run.pushed_path
    assert champion.tags["tfxops.mlmd.pushed_model_id"] == str(pushed_model_id)     # fingerprints through lineage
    assert champion.tags["tfxops.code_fingerprint"] == mlmd.properties(trainer.execution)["custom_config"]["code_fingerprint"]
    later = pushed + 10       # a version the registry has not seen (pushed while the mirror was off)
    registry.move_champion(settings, later, "tfxops promote from version %d" % pushed)
    champion = client.get_model_version_by_alias("taxi-registry", registry.CHAMPION)
    assert champion.tags["tfxops.version"] == str(later)
    assert champion.tags["tfxops.champion_reason"] == f"tfxops promote from version {pushed}"
    assert champion.source == str(settings.model_push_dir / str(later))
    registry.move_champion(settings, pushed, "tfxops rollback")
    registry.move_champion(settings, pushed, "tfxops rollback")     # twice: still one model version each
    champion = client.get_model_version_by_alias("taxi-registry", registry.CHAMPION)
    assert champion.tags["tfxops.version"] == str(pushed) and champion.tags["tfxops.champion_reason"] == "tfxops rollback"
    model = client.get_registered_model("taxi-registry")
    assert model.tags["tfxops.champion_version"] == str(pushed)
    assert [len(_versions(client, "taxi-registry", v)) for v in (pushed, later)] == [1, 1]


@pytest.mark.parametrize("uri, says", [
    ("http://tfxops:s3cret@127.0.0.1:{port}", "no tracking server answers there"),
    ("sqlite:///{tmp}/a-file/mlflow.db", "the database cannot be opened or written"),
    ("file://{tmp}/mlruns", "MLFLOW_ALLOW_FILE_STORE"),
])
def test_an_unusable_store_is_one_warning_and_the_caller_goes_on(tmp_path, e2e_settings, first_run, capsys,
                                                                  uri, says):
    uri = uri.format(port=free_port(), tmp=tmp_path)
    (tmp_path / "a-file").write_text("a file where the database's directory would be")
    settings = _settings(e2e_settings, mlflow_tracking_uri=uri)
    assert mirror.log_pipeline_run(settings, first_run) is None
    registry.move_champion(settings, int(first_run.pushed_version), "tfxops rollback")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines          # one line per call, nothing else (no traceback, no MLflow log)
    shown = uri.replace("s3cret", "***")
    assert all(line.startswith("warning: ") and shown in line and "mlflow_tracking_uri" in line
               and says in line and "mlflow_tracking=false" in line for line in lines), lines
    assert "s3cret" not in "".join(lines)


def test_mlflow_tracking_off_writes_nothing(tmp_path, e2e_settings, first_run, capsys):
    settings = _settings(e2e_settings, mlflow_tracking="false", mlflow_tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert mirror.log_pipeline_run(settings, first_run) is None
    registry.move_champion(settings, int(first_run.pushed_version), "tfxops rollback")
    assert not (tmp_path / "m.db").exists() and capsys.readouterr().err == ""


def test_commands_do_not_import_mlflow_until_they_mirror():
    code = ("import sys, tfxops.cli, pipeline.runner, monitoring.monitor, tracking.mirror, tracking.registry; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sqlalchemy', 'alembic')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
