"""The model card of a pushed version (pipeline/model_card.py), after the shared
real pipeline run: where it is, that it follows the vendored Model Card Toolkit
schema, that it carries the version, the Evaluator's metrics and MLMD ids that
exist, that the HTML page stands alone, and that a re-push carries the card."""
import io
import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest

from core import config, mlmd
from core.pushdir import existing_versions
from lineage.model import model_lineage
from lineage.render import model_text
from monitoring import act, monitor
from monitoring.reuse import ReuseCandidate
from pipeline import model_card, runner
from tests.conftest import E2E_OVERRIDES, REPO

SCHEMA = REPO / "third_party" / "model_card_toolkit" / "model_card.schema.json"


def _card_dir(version_path) -> Path:
    return Path(version_path) / "assets.extra" / "model_card"


@pytest.fixture(scope="module")
def card(first_run):
    assert first_run.pushed, "the shared run pushed no model"
    return json.loads((_card_dir(first_run.pushed_path) / "model_card.json").read_text())


@pytest.fixture(scope="module")
def store(e2e_settings):
    return mlmd.open_store(e2e_settings)


def test_the_card_follows_the_vendored_schema(card):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(card, schema, cls=jsonschema.Draft7Validator)
    assert (SCHEMA.parent / "LICENSE").read_text().count("Apache License") >= 1
    broken = dict(card, model_details=dict(card["model_details"], owners="someone"))
    with pytest.raises(model_card.ModelCardError, match="model_details/owners"):
        model_card.validate(broken)


def test_the_card_names_the_version_and_the_evaluators_metrics(card, first_run, store):
    details = card["model_details"]
    assert details["version"]["name"] == first_run.pushed_version
    assert details["path"] == first_run.pushed_path
    overall = {m["type"]: m["value"] for m in card["quantitative_analysis"]["performance_metrics"]
               if m["slice"] == "overall"}
    links = {r["role"]: r for r in model_card.references(card)}
    [evaluation] = store.get_artifacts_by_id([links["evaluation"]["id"]])
    measured = mlmd.candidate_metrics(evaluation.uri)
    assert overall["auc"] == f"{measured['auc']:.4f}" and overall["example_count"] == str(int(measured["example_count"]))
    assert overall["auc (gate threshold)"].startswith(">= 0.7")
    slices = {m["slice"] for m in card["quantitative_analysis"]["performance_metrics"]}
    assert any(s.startswith("payment_type=Credit Card") for s in slices)
    assert any(s.startswith("trip_start_hour=") for s in slices)
    risks = card["considerations"]["ethical_considerations"]
    assert [r["name"] for r in risks] == [f"Unequal quality or error rates across {f}"
                                         for f in ("payment_type", "pickup_community_area")]
    assert all("Gate: passed" in r["mitigation_strategy"] for r in risks)
    assert [d["name"] for d in card["model_parameters"]["data"]] == ["train split (training)",
                                                                     "eval split (evaluation)"]
    assert re.search(r"model code fingerprint \(sha256\) [0-9a-f]{64}", card["model_parameters"]["model_architecture"])


def test_the_cards_mlmd_ids_exist_and_link_the_push(card, first_run, store):
    links = {r["role"]: r for r in model_card.references(card)}
    assert {"model", "evaluation", "blessing", "examples", "statistics", "attributions", "model_card",
            "pusher"} <= set(links)
    pushed = mlmd.pushed_model_for_version(store, first_run.pushed_version)
    pusher = mlmd.producer(store, pushed.artifact.id)
    assert links["pusher"] == {"kind": "execution", "id": pusher.id, "role": "pusher"}
    inputs = mlmd.input_artifacts(store, pusher.id)
    assert inputs["model"][0].id == links["model"]["id"]
    assert inputs["model_card"][0].id == links["model_card"]["id"]
    types = {t.id: t.name for t in store.get_artifact_types()}
    for role in ("model", "evaluation", "blessing", "examples", "statistics", "attributions", "model_card"):
        [artifact] = store.get_artifacts_by_id([links[role]["id"]])
        assert artifact.id == links[role]["id"], role
    assert types[store.get_artifacts_by_id([links["model_card"]["id"]])[0].type_id] == model_card.ARTIFACT_TYPE
    card_file = str(_card_dir(first_run.pushed_path) / "model_card.json")
    assert mlmd.custom(pushed.artifact, "model_card") == card_file


def test_the_html_page_stands_alone(card, first_run):
    page = (_card_dir(first_run.pushed_path) / "model_card.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and first_run.pushed_version in page
    for outside in ("<script", "src=", "href=", "@import", "url("):
        assert outside not in page, outside
    assert "Evaluation per slice" in page and "payment_type=Credit Card" in page and "<style>" in page


def test_lineage_model_shows_the_card(first_run, e2e_settings):
    report, _ = model_lineage(e2e_settings, first_run.pushed_version, with_metrics=False)
    card_file = str(_card_dir(first_run.pushed_path) / "model_card.json")
    assert report["model_card"] == card_file
    assert f"model card {card_file}" in model_text(report)


def test_a_repush_carries_the_models_card(card, first_run, e2e_settings, store, tmp_path):
    settings = config.load({"home": str(tmp_path), "metadata_path": str(e2e_settings.metadata_file)})
    model_id = model_card.references(card)[0]["id"]
    [model] = store.get_artifacts_by_id([model_id])
    outcome = act.repush(settings, ReuseCandidate(model_id=model.id, model_uri=model.uri,
                                                  model_path=f"{model.uri}/Format-Serving", over=[], errors=0,
                                                  matches=True, score=0.0, why="test"))
    card_file = str(_card_dir(outcome.pushed_destination) / "model_card.json")
    repushed = json.loads(Path(card_file).read_text())
    assert repushed["model_details"]["version"]["name"] == outcome.pushed_version
    assert repushed["quantitative_analysis"] == card["quantitative_analysis"]
    model_card.validate(repushed)
    card_artifact = {r["role"]: r for r in model_card.references(card)}["model_card"]
    assert (outcome.model_card_id, outcome.model_card) == (card_artifact["id"], card_file)

    # the monitor records the re-push: the version's lineage names its card, an input of the re-push
    writer = mlmd.open_store(settings, readonly=False, must_exist=True)
    ids = monitor.record_repush(writer, settings.pipeline_name, outcome, window="test", because="test",
                                replaced_version=first_run.pushed_version, monitor_execution=0)
    report, _ = model_lineage(settings, outcome.pushed_version, with_metrics=False)
    assert report["model_card"] == card_file and f"model card {card_file}" in model_text(report)
    reread = mlmd.open_store(settings)
    assert [a.id for a in mlmd.input_artifacts(reread, ids["execution_id"])["model_card"]] == [card_artifact["id"]]


def test_a_missing_or_broken_card_is_named_with_the_fix(tmp_path):
    path = str(tmp_path / model_card.CARD_JSON)
    with pytest.raises(model_card.ModelCardError) as missing:
        model_card.read(str(tmp_path))
    (tmp_path / model_card.CARD_JSON).write_text('{"model_details": ')
    with pytest.raises(model_card.ModelCardError) as broken:
        model_card.read(str(tmp_path))
    assert str(missing.value).startswith(f"cannot read the model card {path} (No such file or directory)")
    assert str(broken.value).startswith(f"the model card {path} is not valid JSON")
    for raised in (missing, broken):
        assert "Errno" not in str(raised.value) and "rerun the pipeline" in str(raised.value)


def test_a_rerun_that_changes_only_the_card_pushes_no_new_version(first_run, e2e_settings, tmp_path):
    """Other owners make a new ModelCard, so a new Pusher input: the Pusher runs, finds
    the model already the newest version's, and pushes nothing; the summary names that
    version. (A copy of the shared home: the other tests must not see this run.)"""
    settings = config.load(dict(E2E_OVERRIDES, home=str(tmp_path / "home"), data_dir=str(e2e_settings.data_dir),
                                model_card_owners=["someone else <elsewhere>"]))
    shutil.copytree(e2e_settings.home, settings.home)
    summary = runner.run_pipeline(settings, out=io.StringIO())
    assert summary.ok, summary.error
    store = mlmd.open_store(settings)
    run = mlmd.find_run(store, settings.pipeline_name, summary.run_id)
    executions = {n.node_id: n for n in mlmd.run_executions(store, run, settings.pipeline_name)}
    assert executions["Trainer"].state == "CACHED"
    assert executions["ModelCardGenerator"].state == executions["Pusher"].state == "COMPLETE"
    [pushed] = executions["Pusher"].outputs["pushed_model"]
    assert mlmd.custom(pushed, "pushed") == 0
    assert mlmd.custom(pushed, "not_pushed_reason") == f"model already pushed as version {first_run.pushed_version}"
    assert existing_versions(str(settings.model_push_dir)) == [int(first_run.pushed_version)]
    assert summary.pushed is False and summary.cached_push_version == first_run.pushed_version
    assert f"pushed: nothing new (version {first_run.pushed_version} already serving)" in runner.render(summary)
