"""The model card of a pushed version (pipeline/model_card.py), after the shared
real pipeline run: where it is, that it follows the vendored Model Card Toolkit
schema, that it carries the version, the Evaluator's metrics and MLMD ids that
exist, that the HTML page stands alone, and that a re-push carries the card."""
import json
import re
from pathlib import Path

import jsonschema
import pytest

from core import config, mlmd
from lineage.model import model_lineage
from lineage.render import model_text
from monitoring import act
from monitoring.reuse import ReuseCandidate
from pipeline import model_card
from tests.conftest import REPO

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
    repushed = json.loads((_card_dir(outcome.pushed_destination) / "model_card.json").read_text())
    assert repushed["model_details"]["version"]["name"] == outcome.pushed_version
    assert repushed["quantitative_analysis"] == card["quantitative_analysis"]
    model_card.validate(repushed)
