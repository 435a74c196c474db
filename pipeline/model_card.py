"""A model card with every pushed version: JSON in the fields of Model Card
Toolkit's schema (``third_party/model_card_toolkit``, validated with
``jsonschema``) and a self-contained HTML page (inline CSS, no script, no link
out), built from the pipeline's own artifacts and the TFMA results.

``ModelCardGenerator`` (a pipeline component) reads the Trainer's model, the
Evaluator's evaluation and blessing, the examples, their statistics and the
model's push-time attributions (``pipeline.attribution``), and writes one
``ModelCard`` artifact: ``<uri>/model_card.json``, every field but the version.
The Pusher (``pipeline.pusher``) reads it, adds the version it publishes, the
push's path and its own MLMD ids, and writes ``model_card.json`` and
``model_card.html`` into ``<version>/assets.extra/model_card/`` while the
version is still staged, so the card appears with the version, in the same
atomic publish. TF Serving and ``tfxops serve`` load the SavedModel only
(``assets.extra`` is where TF Serving looks for warm-up requests, nothing else);
copies of the version (``tfxops sync-models``) carry the card. The PushedModel's
custom property ``model_card`` names the file; the ModelCard artifact is an
input of the Pusher's execution in MLMD.

Where the MCT schema has no field of its own, the card uses the nearest one:
the gate's thresholds and the attributions are ``performance_metrics`` of their
own ``type``; the MLMD ids are ``model_details.references`` of the form
``mlmd://artifact/<id>#<role>`` (also ``execution``, and ``context`` for the run).

The card's inputs are artifacts and settings only (no clock): a rerun on
unchanged data, code and settings reuses it from the cache, and the Pusher,
whose inputs are then unchanged too, writes nothing new.
"""
import dataclasses
import datetime
import html
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tfx import v1 as tfx
from tfx.types import artifact_utils

from core import config, evaluation, mlmd, storage
from core import features as F
from core.storage import Location
from pipeline.attribution import FeatureAttributions

ARTIFACT_TYPE = "tfxops.ModelCard"             # KFP v2 wants a custom type name "<namespace>.<Name>"
CARD_JSON, CARD_HTML = "model_card.json", "model_card.html"
CARD_DIR = "assets.extra/model_card"          # inside a pushed version
SCHEMA_VERSION = "0.0.2"
SCHEMA_PATH = config.PROJECT_ROOT / "third_party" / "model_card_toolkit" / "model_card.schema.json"
THRESHOLD_SUFFIX = " (gate threshold)"        # performance_metrics that are the gate's bounds
ATTRIBUTION_TYPE = "attribution share"        # performance_metrics that are attributions
MLMD_SCHEME = "mlmd://"


class ModelCardError(RuntimeError):
    """A card that does not follow the schema, or cannot be read; the message says where."""


class ModelCard(tfx.dsl.Artifact):
    """A model card without its version: ``<uri>/model_card.json``."""
    TYPE_NAME = ARTIFACT_TYPE


# ------------------------------------------------------------------ settings
def card_config(settings: config.Settings) -> Dict:
    """What the card takes from the settings (``pipeline.pipeline`` adds the model
    code's fingerprint and passes it to ``ModelCardGenerator`` as ``card_settings``)."""
    from pipeline.fairness import FairnessGate

    gate = dataclasses.asdict(FairnessGate.from_settings(settings))
    return {"model_name": settings.model_name, "owners": list(settings.model_card_owners),
            "overview": settings.model_card_overview, "users": list(settings.model_card_users),
            "use_cases": list(settings.model_card_use_cases),
            "limitations": list(settings.model_card_limitations),
            "hyperparameters": settings.hparams, "train_steps": settings.train_steps,
            "eval_steps": settings.eval_steps,
            "slice_features": list(settings.slice_features),
            # the gate's settings: its features and threshold, then the rest ({min_examples_per_class, ...})
            "sensitive_features": gate.pop("features"), "decision_threshold": gate.pop("decision_threshold"),
            "fairness": gate}


# ------------------------------------------------------------------ schema
def validate(card: Dict) -> None:
    """``ModelCardError`` naming the first field that breaks the vendored schema."""
    import jsonschema

    schema = json.loads(Path(SCHEMA_PATH).read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(card), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top level)"
        raise ModelCardError(f"the model card does not follow Model Card Toolkit's schema at {where}: "
                             f"{errors[0].message}")


# ------------------------------------------------------------------ building
def _owner(text: str) -> Dict:
    name, _, contact = text.partition("<")
    return {"name": name.strip(), **({"contact": contact.rstrip(">").strip()} if contact else {})}


def reference(kind: str, mlmd_id: Optional[int], role: str) -> Optional[Dict]:
    return None if not mlmd_id else {"reference": f"{MLMD_SCHEME}{kind}/{int(mlmd_id)}#{role}"}


def references(card: Dict) -> List[Dict]:
    """The card's MLMD links: ``kind``, ``id``, ``role``."""
    out = []
    for item in card.get("model_details", {}).get("references", []):
        text = item.get("reference", "")
        if text.startswith(MLMD_SCHEME):
            kind, _, rest = text[len(MLMD_SCHEME):].partition("/")
            number, _, role = rest.partition("#")
            out.append({"kind": kind, "id": int(number), "role": role})
    return out


def build(cfg: Dict, *, model, evaluation_artifact, blessing, examples, statistics,
          attributions: Optional[FeatureAttributions]) -> Dict:
    """The card, every field but the version, from the artifacts' files and ids."""
    eval_uri = evaluation_artifact.uri
    links = [reference("artifact", a.id, role) for a, role in (
        (model, "model"), (evaluation_artifact, "evaluation"), (blessing, "blessing"),
        (examples, "examples"), (statistics, "statistics"), (attributions, "attributions"))
        if a is not None]
    baseline_id = blessing.get_int_custom_property("baseline_model_id") \
        if blessing.has_custom_property("baseline_model_id") else None
    links.append(reference("artifact", baseline_id, "baseline_model"))
    card = {
        "schema_version": SCHEMA_VERSION,
        "model_details": {
            "name": cfg["model_name"], "overview": cfg["overview"],
            "documentation": _documentation(cfg, blessing),
            "owners": [_owner(o) for o in cfg["owners"]],
            "references": [link for link in links if link]},
        "model_parameters": _parameters(cfg, examples, statistics),
        "quantitative_analysis": {"performance_metrics": (
            _metrics(eval_uri, cfg) + _attribution_metrics(attributions))},
        "considerations": _considerations(cfg, eval_uri)}
    validate(card)
    return card


def _documentation(cfg: Dict, blessing) -> str:
    baseline = blessing.get_string_custom_property("baseline_model") \
        if blessing.has_custom_property("baseline_model") else ""
    compared = (f"It was compared with the served model at {baseline} (the baseline) and blessed "
                f"only within the change thresholds below." if baseline else
                "No model was served when it was evaluated: it was judged by the value thresholds alone.")
    return (f"A Keras DNN on Transform's features ({', '.join(F.MODEL_FEATURES)}), trained by the tfxops "
            f"pipeline and pushed only after the data gate, the Evaluator's thresholds and the fairness "
            f"gate passed. {compared} A prediction is positive at a score above "
            f"{cfg['decision_threshold']:g}.")


def _parameters(cfg: Dict, examples, statistics) -> Dict:
    hp = cfg["hyperparameters"]
    return {
        "model_architecture": (
            f"DNN, hidden units {hp['hidden_units']}, sigmoid output; {cfg['train_steps']} training steps "
            f"({cfg['eval_steps']} evaluation steps), batch size {hp['batch_size']}, learning rate "
            f"{hp['learning_rate']:g}, seed {hp['seed']}; model code fingerprint (sha256) "
            f"{cfg['code_fingerprint']}"),
        "data": [_dataset(examples, statistics, split, cfg["sensitive_features"]) for split in
                 artifact_utils.decode_split_names(examples.split_names)],
        "input_format": (f"serialized tf.Example (signature {F.DEFAULT_SIGNATURE}) or one tensor per raw "
                         f"feature (signature {F.RAW_SIGNATURE})"),
        "input_format_map": [{"key": name, "value": kind} for name, kind in F.RAW_FEATURE_TYPES.items()],
        "output_format": f"'{F.PREDICTION_KEY}': the probability that the trip's tip is more than "
                         f"{F.TIP_FRACTION:.0%} of its fare ({F.TRANSFORMED_LABEL_KEY})"}


def _dataset(examples, statistics, split: str, sensitive: Sequence[str]) -> Dict:
    """One split: where it came from, its span and fingerprint, and a statistics summary."""
    summary = statistics_summary(artifact_utils.get_split_uri([statistics], split))
    fingerprint = examples.get_string_custom_property("input_fingerprint") \
        if examples.has_custom_property("input_fingerprint") else "unknown"
    purpose = "training" if split == "train" else "evaluation" if split == "eval" else split
    return {"name": f"{split} split ({purpose})",
            "sensitive": {"sensitive_data": [f"{name} (a sensitive feature: see the fairness results)"
                                             for name in sensitive]},
            "description": (f"{summary['rows']} rows of CsvExampleGen's examples (MLMD artifact {examples.id}, "
                            f"span {examples.span}, version {examples.version}); input fingerprint: "
                            f"{fingerprint}. Statistics (artifact {statistics.id}): {summary['text']}")}


def statistics_summary(split_uri: str) -> Dict:
    """Rows, features and the features with missing values, from StatisticsGen's file."""
    import tensorflow_data_validation as tfdv

    stats = tfdv.load_stats_binary(str(storage.join(split_uri, "FeatureStats.pb"))).datasets[0]
    missing = []
    for feature in stats.features:
        common = feature.num_stats.common_stats if feature.HasField("num_stats") else \
            feature.string_stats.common_stats
        if common.num_missing:
            missing.append(f"{feature.path.step[0]} {common.num_missing / max(stats.num_examples, 1):.1%}")
    text = (f"{stats.num_examples} rows, {len(stats.features)} columns; missing values: "
            + (", ".join(missing) if missing else "none"))
    return {"rows": int(stats.num_examples), "text": text}


# ------------------------------------------------------------------ metrics
def _metric_entry(kind: str, value, slice_name: str) -> Dict:
    if kind == evaluation.EXAMPLE_COUNT:
        value = int(value)
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return {"type": kind, "value": text, "slice": slice_name}


def _metrics(eval_uri: str, cfg: Dict) -> List[Dict]:
    """Overall (candidate and baseline), the gate's thresholds, then each slice."""
    out = []
    for metric in mlmd.overall_metrics(eval_uri):
        if metric["value"] is not None:
            out.append(_metric_entry(metric["metric"], metric["value"], "overall"))
        if metric["baseline"] is not None:
            out.append(_metric_entry(f"{metric['metric']} (baseline model)", metric["baseline"], "overall"))
    for name, text in evaluation_thresholds(eval_uri).items():
        out.append(_metric_entry(name + THRESHOLD_SUFFIX, text, "overall"))
    fair = cfg["fairness"]
    for feature in cfg["sensitive_features"]:
        gated = f"each gated slice of {feature}"
        out.append(_metric_entry(evaluation.AUC + THRESHOLD_SUFFIX, f">= {fair['min_slice_auc']:g}", gated))
        for metric, bound in ((evaluation.FALSE_POSITIVE_RATE, fair["max_fpr_gap"]),
                              (evaluation.FALSE_NEGATIVE_RATE, fair["max_fnr_gap"])):
            out.append(_metric_entry(f"{metric} gap{THRESHOLD_SUFFIX}", f"<= {bound:g}", gated))
    features = list(dict.fromkeys(cfg["sensitive_features"] + cfg["slice_features"]))
    for found in evaluation.slice_metrics(eval_uri, features, fair["min_examples_per_class"]):
        if not found.feature:
            continue
        name = f"{found.feature}={found.value}"
        if found.feature in cfg["sensitive_features"] and not found.gated:
            name += " (not gated: too few examples of a label)"
        out.append(_metric_entry(evaluation.EXAMPLE_COUNT, found.example_count, name))
        for metric, value in _slice_values(found).items():
            if value is not None:
                out.append(_metric_entry(metric, value, name))
    return out


def _slice_values(found: evaluation.SliceMetrics) -> Dict[str, Optional[float]]:
    return {evaluation.AUC: found.auc, evaluation.ACCURACY: found.accuracy,
            evaluation.FALSE_POSITIVE_RATE: found.false_positive_rate,
            evaluation.FALSE_NEGATIVE_RATE: found.false_negative_rate,
            evaluation.POSITIVE_RATE: found.positive_rate}


def evaluation_thresholds(eval_uri: str) -> Dict[str, str]:
    """Metric -> the thresholds the Evaluator applied, from the eval_config TFMA
    wrote beside its results."""
    from google.protobuf import json_format
    from tensorflow_model_analysis.writers import eval_config_writer

    eval_config = eval_config_writer.load_eval_run(eval_uri)[0]
    if eval_config is None:
        return {}
    return mlmd.eval_config_thresholds(json_format.MessageToDict(eval_config, preserving_proto_field_name=True))


def _attribution_metrics(attributions: Optional[FeatureAttributions]) -> List[Dict]:
    """Each raw feature's share of the push-time attributions, largest first."""
    from core import attribution

    if attributions is None:
        return []
    found = attribution.load(attributions.uri)
    shares = found.shares()
    kind = f"{ATTRIBUTION_TYPE} ({found.method}, {found.rows} evaluation rows)"
    return [_metric_entry(kind, shares[name], f"feature {name}") for name in found.ranking()]


# ------------------------------------------------------------------ considerations
def _considerations(cfg: Dict, eval_uri: str) -> Dict:
    fair = cfg["fairness"]
    slices = evaluation.slice_metrics(eval_uri, cfg["sensitive_features"], fair["min_examples_per_class"])
    failures = evaluation.fairness_failures(eval_uri)
    limitations = list(cfg["limitations"])
    for feature in cfg["sensitive_features"]:
        small = [s for s in slices if s.feature == feature and not s.gated]
        if small:
            limitations.append(f"{len(small)} slice(s) of {feature} hold fewer than "
                               f"{fair['min_examples_per_class']} evaluation examples of a label: their "
                               f"figures are reported, not gated")
    return {
        "users": [{"description": text} for text in cfg["users"]],
        "use_cases": [{"description": text} for text in cfg["use_cases"]],
        "limitations": [{"description": text} for text in limitations],
        "tradeoffs": [{"description": (
            f"Decision threshold {cfg['decision_threshold']:g}: a higher threshold predicts fewer big tippers "
            f"(fewer false positives, more false negatives); the fairness figures are measured at it.")}],
        "ethical_considerations": [
            _fairness_risk(feature, [s for s in slices if s.feature == feature and s.gated],
                           [f for f in failures if f.feature == feature], fair)
            for feature in cfg["sensitive_features"]]}


def _fairness_risk(feature: str, gated: List[evaluation.SliceMetrics], failures, fair: Dict) -> Dict:
    """One sensitive feature: what the gate checks, what was measured, the outcome."""
    measured = []
    for metric, label in ((evaluation.AUC, "AUC"), (evaluation.FALSE_POSITIVE_RATE, "FPR"),
                          (evaluation.FALSE_NEGATIVE_RATE, "FNR")):
        values = [v for v in (_slice_values(s)[metric] for s in gated) if v is not None]
        if values:
            measured.append(f"{label} {min(values):.3f}-{max(values):.3f} (gap {max(values) - min(values):.3f})")
    outcome = ("failed: " + "; ".join(f"{f.metric} {f.value:.3f} vs bound {f.bound:g} ({', '.join(f.slices)})"
                                      for f in failures)) if failures else "passed"
    return {"name": f"Unequal quality or error rates across {feature}",
            "mitigation_strategy": (
                f"The fairness gate blesses a model only if every gated slice of {feature} (at least "
                f"{fair['min_examples_per_class']} evaluation examples of each label) has AUC >= "
                f"{fair['min_slice_auc']:g}, and the gaps between its slices' false positive and false "
                f"negative rates are at most {fair['max_fpr_gap']:g} and {fair['max_fnr_gap']:g}. Measured "
                f"over {len(gated)} gated slices: {', '.join(measured) or 'no gated slice'}. Gate: {outcome}.")}


# ------------------------------------------------------------------ the version
def with_version(card: Dict, version: str, pushed_path: str, links: Dict[str, Optional[int]],
                 replaces: Optional[str] = None) -> Dict:
    """The card of a pushed version: its name, date, path and the push's MLMD ids
    (``links``: ``<kind>:<role>`` -> id, e.g. ``artifact:pushed_model``, ``execution:pusher``)."""
    details = dict(card["model_details"])
    details["version"] = {
        "name": str(version), "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "diff": f"replaces version {replaces}" if replaces else "the first version pushed here"}
    details["path"] = str(pushed_path)
    extra = [reference(*key.split(":", 1)[:1], mlmd_id, key.split(":", 1)[1]) for key, mlmd_id in links.items()]
    details["references"] = list(details.get("references", [])) + [r for r in extra if r]
    out = dict(card, model_details=details)
    validate(out)
    return out


def stager(card: Dict, base_directory: Location, links: Dict[str, Optional[int]]):
    """A ``core.pushdir.publish_atomically`` stager: the card of the version being
    published (``with_version``) into ``<staged version>/assets.extra/model_card/``."""
    from core.pushdir import newest_version

    replaces = newest_version(base_directory)

    def stage(staging: Location, version: int) -> None:
        versioned = with_version(card, str(version), str(storage.join(base_directory, str(version))), links,
                                 replaces=None if replaces is None else str(replaces))
        write(storage.join(staging, CARD_DIR), versioned)
    return stage


def artifact_for_model(store, model_id: int):
    """The newest ModelCard artifact written from the Model artifact ``model_id``; None if none."""
    return mlmd.newest_output_for_model(store, model_id, ARTIFACT_TYPE)


def read(uri: Location) -> Dict:
    """The card saved under ``uri`` (a ModelCard artifact or a version's card directory)."""
    path = storage.join(uri, CARD_JSON)
    try:
        return json.loads(storage.read_text(path))
    except OSError as exc:
        raise ModelCardError(f"cannot read the model card {path} ({exc.strerror or 'unreadable'}); "
                             "rerun the pipeline (its ModelCardGenerator writes it)") from None
    except ValueError:
        raise ModelCardError(f"the model card {path} is not valid JSON; "
                             "rerun the pipeline (its ModelCardGenerator writes it)") from None


def write(directory: Location, card: Dict) -> str:
    """``model_card.json`` and ``model_card.html`` into ``directory``; the JSON's path."""
    storage.makedirs(directory)
    storage.write_text(storage.join(directory, CARD_HTML), render_html(card))
    path = storage.join(directory, CARD_JSON)
    storage.write_text(path, json.dumps(card, indent=1, sort_keys=True))
    return str(path)


# ------------------------------------------------------------------ HTML
_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;"
          "text-align:left;vertical-align:top}th{background:#f2f2f2}h2{border-bottom:1px solid #ddd}"
          ".num{text-align:right;font-variant-numeric:tabular-nums}")
_SLICE_COLUMNS = [evaluation.EXAMPLE_COUNT, evaluation.AUC, evaluation.ACCURACY, evaluation.FALSE_POSITIVE_RATE,
                  evaluation.FALSE_NEGATIVE_RATE, evaluation.POSITIVE_RATE]


def _e(value) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _items(entries: Sequence[Dict], key: str = "description") -> str:
    return "<ul>" + "".join(f"<li>{_e(e.get(key, ''))}</li>" for e in entries) + "</ul>"


def render_html(card: Dict) -> str:
    """The card as one self-contained HTML page (inline style; no script, image or link to fetch)."""
    details, considerations = card["model_details"], card.get("considerations", {})
    version = details.get("version", {})
    title = f"Model card: {details['name']}" + (f", version {version['name']}" if version.get("name") else "")
    owners = ", ".join(o["name"] + (f" ({o['contact']})" if o.get("contact") else "") for o in details["owners"])
    parts = [f"<h1>{_e(title)}</h1><p>{_e(details.get('overview', ''))}</p>",
             _table(["", ""], [("version", version.get("name", "(not pushed)")), ("date", version.get("date", "")),
                               ("changes", version.get("diff", "")), ("path", details.get("path", "")),
                               ("owners", owners)]),
             f"<p>{_e(details.get('documentation', ''))}</p>",
             "<h2>Intended use</h2><h3>Users</h3>" + _items(considerations.get("users", []))
             + "<h3>Use cases</h3>" + _items(considerations.get("use_cases", [])),
             "<h2>Limitations</h2>" + _items(considerations.get("limitations", []))
             + "<h3>Trade-offs</h3>" + _items(considerations.get("tradeoffs", [])),
             "<h2>Fairness</h2>" + "".join(f"<h3>{_e(r['name'])}</h3><p>{_e(r['mitigation_strategy'])}</p>"
                                           for r in considerations.get("ethical_considerations", [])),
             _metrics_html(card["quantitative_analysis"]["performance_metrics"]),
             _data_html(card["model_parameters"]),
             "<h2>Links (MLMD ids)</h2>" + _table(["kind", "id", "role"],
                                                  [(r["kind"], r["id"], r["role"]) for r in references(card)])]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def _metrics_html(metrics: List[Dict]) -> str:
    overall = [m for m in metrics if m["slice"] == "overall"]
    names = list(dict.fromkeys(m["type"] for m in overall if not m["type"].endswith(")")))

    def value(kind: str) -> str:
        return next((m["value"] for m in overall if m["type"] == kind), "")

    rows = [(n, value(n), value(f"{n} (baseline model)"), value(n + THRESHOLD_SUFFIX)) for n in names]
    gate = [(m["type"][:-len(THRESHOLD_SUFFIX)], m["slice"], m["value"]) for m in metrics
            if m["type"].endswith(THRESHOLD_SUFFIX) and m["slice"] != "overall"]
    slices: Dict[str, Dict[str, str]] = {}
    for m in metrics:
        if m["slice"] != "overall" and m["type"] in _SLICE_COLUMNS:
            slices.setdefault(m["slice"], {})[m["type"]] = m["value"]
    attributions = [(m["slice"].replace("feature ", "", 1), m["value"], m["type"]) for m in metrics
                    if m["type"].startswith(ATTRIBUTION_TYPE)]
    return ("<h2>Evaluation, overall</h2>" + _table(["metric", "this model", "baseline", "gate threshold"], rows)
            + "<h3>Fairness gate thresholds</h3>" + _table(["metric", "where", "bound"], gate)
            + "<h2>Evaluation per slice</h2>"
            + _table(["slice"] + _SLICE_COLUMNS, [[name] + [row.get(c, "") for c in _SLICE_COLUMNS]
                                                  for name, row in slices.items()])
            + "<h2>Feature attributions at push time</h2>"
            + _table(["feature", "share", "method"], attributions))


def _data_html(parameters: Dict) -> str:
    data = _table(["dataset", "description", "sensitive features"],
                  [(d["name"], d["description"], "; ".join(d.get("sensitive", {}).get("sensitive_data", [])))
                   for d in parameters.get("data", [])])
    inputs = _table(["raw feature", "type"], [(kv["key"], kv["value"]) for kv in parameters.get("input_format_map", [])])
    return (f"<h2>Training and evaluation data</h2>{data}<h2>Model</h2><p>{_e(parameters['model_architecture'])}</p>"
            f"<p>Input: {_e(parameters['input_format'])}. Output: {_e(parameters['output_format'])}.</p>{inputs}")


# ------------------------------------------------------------------ the component
@tfx.dsl.components.component
def ModelCardGenerator(
        model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
        evaluation: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
        blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
        examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
        statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
        attributions: tfx.dsl.components.InputArtifact[FeatureAttributions],
        model_card: tfx.dsl.components.OutputArtifact[ModelCard],
        card_settings: tfx.dsl.components.Parameter[str]):
    """The card of the candidate model (``build``), every field but the version."""
    card = build(json.loads(card_settings), model=model, evaluation_artifact=evaluation, blessing=blessing,
                 examples=examples, statistics=statistics, attributions=attributions)
    storage.makedirs(model_card.uri)
    storage.write_text(storage.join(model_card.uri, CARD_JSON), json.dumps(card, indent=1, sort_keys=True))
