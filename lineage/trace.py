"""Where a pushed model came from: the chain from a PushedModel back to the CSV
files, as a tree with the facts people ask for at each step.

PushedModel -> Pusher -> ModelBlessing (Evaluator's metrics and thresholds) ->
Model -> Trainer (code fingerprint, train args, hyperparameters) -> TransformGraph
-> Transform -> Schema / Examples (+ their statistics and anomalies) -> ExampleGen
input (path, span, fingerprint), and what has consumed the model since
(monitoring runs, later evaluations, ...).

``execution_facts`` / ``artifact_facts`` turn MLMD properties into plain dicts;
``model_report`` assembles the whole answer as JSON-able data that
``lineage.render`` prints.
"""
import glob
import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from core import mlmd, pushdir, storage
from core.config import Settings
from core.owner import ALIVE, RECOVERED, Owner
from lineage import graph as G

SERVING = "serving"
# Order in which an execution's inputs are shown (others follow, by name).
INPUT_ORDER = ["model_blessing", "holdout_blessing", "model_card", "input_domain", "model", "baseline_model",
               "transform_graph", "schema", "examples", "statistics", "anomalies"]
# Properties that name model code, as the components record them.
CODE_KEYS = ("code_fingerprint", "module_file", "module_path", "run_fn", "trainer_fn",
             "preprocessing_fn", "stats_options_updater_fn")


# ------------------------------------------------------------- small facts
def artifact_json(g: G.Graph, aid: int) -> Dict:
    artifact = g.artifacts[aid]
    return {"id": aid, "type": g.type_of(aid), "uri": artifact.uri,
            "created": mlmd.ms_to_iso(artifact.create_time_since_epoch),
            "properties": mlmd.properties(artifact)}


def execution_json(g: G.Graph, eid: int) -> Dict:
    execution = g.executions[eid]
    seconds = max(0.0, (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0)
    return {"id": eid, "type": g.execution_type(eid), "node_id": g.execution_name(eid),
            "run_id": g.run_ids.get(eid), "state": mlmd.STATE.Name(execution.last_known_state),
            "started": mlmd.ms_to_iso(execution.create_time_since_epoch), "seconds": round(seconds, 1),
            "properties": mlmd.properties(execution)}


def current_fingerprint(input_base: str, input_config: Dict) -> Tuple[List[Dict], str]:
    """The files under ``input_base`` matching the splits' patterns now, and the
    fingerprint TFX would compute for them (mtime-based, io_utils.generate_fingerprint)."""
    files, lines = [], []
    for split in (input_config or {}).get("splits", []) or [{"name": "single_split", "pattern": "*"}]:
        matched = sorted(glob.glob(os.path.join(input_base, split.get("pattern", "*"))))
        total = xor = summed = 0
        for path in matched:
            stat = os.stat(path)
            mtime = int(stat.st_mtime_ns / 1e9)
            total, xor, summed = total + stat.st_size, xor ^ mtime, summed + mtime
            files.append({"path": path, "bytes": stat.st_size, "split": split.get("name")})
        lines.append(f"split:{split.get('name')},num_files:{len(matched)},total_bytes:{total},"
                     f"xor_checksum:{xor},sum_checksum:{summed}")
    return files, "\n".join(lines)


def local_path(uri: str) -> Optional[str]:
    """``uri`` if it can be read from here (TFX records paths as given, so a relative
    pipeline_root is relative to the directory the pipeline ran in)."""
    return uri if uri and os.path.exists(uri) else None


def _num_examples(statistics_uri: str) -> Dict[str, int]:
    """Examples per split, from StatisticsGen's FeatureStats.pb files."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    out = {}
    for path in sorted(glob.glob(os.path.join(statistics_uri, "Split-*", "FeatureStats.pb"))):
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        try:
            stats.ParseFromString(Path(path).read_bytes())
        except Exception:  # not the format we expect: leave it out
            continue
        if stats.datasets:
            out[Path(path).parent.name[len("Split-"):]] = int(stats.datasets[0].num_examples)
    return out


def schema_summary(schema_uri: str) -> Optional[Dict]:
    """Features (name -> type) of the schema.pbtxt in a Schema artifact."""
    path = local_path(os.path.join(schema_uri, "schema.pbtxt"))
    if not path:
        return None
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = text_format.Parse(Path(path).read_text(), schema_pb2.Schema())
    features = {}
    for feature in schema.feature:
        text = text_format.MessageToString(feature, as_one_line=True)
        features[feature.name] = text
    return {"path": path, "features": features,
            "text_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def split_code(props: Dict) -> Tuple[Dict, Dict]:
    """(code facts, other settings) of one execution's properties; TFX puts
    custom_config in as a dict, we look inside it for the code fingerprint."""
    code, rest = {}, {}
    for key, value in props.items():
        if key in CODE_KEYS:
            code[key] = value
        elif key == "custom_config" and isinstance(value, dict):
            inner = dict(value)
            for code_key in CODE_KEYS:
                if code_key in inner:
                    code[code_key] = inner.pop(code_key)
            rest[key] = inner
        else:
            rest[key] = value
    return code, rest


def execution_facts(g: G.Graph, eid: int, with_metrics: bool = True) -> Dict:
    """The notable facts of one execution, by what it is (recognized by its
    properties and outputs, not by node id)."""
    props = mlmd.properties(g.executions[eid])
    facts: Dict = {}
    if "input_base" in props or "input_fingerprint" in props:           # ExampleGen
        base = str(props.get("input_base", ""))
        facts.update(input_base=base, span=props.get("span"), version=props.get("version"),
                     input_fingerprint=props.get("input_fingerprint"),
                     patterns={s.get("name"): s.get("pattern") for s in
                               (props.get("input_config") or {}).get("splits", [])})
        if base and os.path.isdir(base):
            files, now = current_fingerprint(base, props.get("input_config") or {})
            facts.update(files=files, unchanged_since=(now == props.get("input_fingerprint")))
    code, rest = split_code(props)
    if code:
        facts["code"] = code
    if "train_args" in props or "eval_args" in props:                   # Trainer
        facts.update(train_args=props.get("train_args"), eval_args=props.get("eval_args"),
                     hyperparameters=rest.get("custom_config") or {})
    if "schema_file" in props:                                          # ImportSchemaGen
        facts["schema_file"] = props["schema_file"]
    if "push_destination" in props:                                     # Pusher
        facts["push_destination"] = props["push_destination"]
    if RECOVERED in props:                                              # completed by pipeline.recovery
        facts["recovered"] = props[RECOVERED]
    if "eval_config" in props:                                          # Evaluator
        facts["thresholds"] = mlmd.eval_config_thresholds(props["eval_config"])
        evaluation = next((e for e in g.outputs(eid) if g.type_of(e.artifact_id) == mlmd.EVALUATION), None)
        if evaluation is not None and with_metrics:
            facts.update(read_metrics(g.artifacts[evaluation.artifact_id].uri, facts["thresholds"]))
        # a baseline whose baseline_version is "" holds no model (pipeline/baseline.py)
        baseline = [e.artifact_id for e in g.inputs(eid) if e.key in G.NOT_FOLLOWED_INPUTS
                    and mlmd.custom(g.artifacts[e.artifact_id], "baseline_version") != ""]
        facts["baseline_model_id"] = baseline[0] if baseline else None
    return facts


def read_metrics(uri: str, thresholds: Dict[str, str]) -> Dict:
    path = local_path(uri)
    if not path:
        return {"metrics_error": f"evaluation files not found at '{uri}' (a relative pipeline_root "
                                 f"is relative to the directory the pipeline ran in)"}
    try:
        metrics, failures = mlmd.evaluation_details(path)
    except Exception as exc:  # unreadable TFMA output: say so, keep the rest
        return {"metrics_error": f"cannot read the evaluation at '{uri}': {exc}"}
    for metric in metrics:
        metric["threshold"] = thresholds.get(metric["metric"], "")
    return {"metrics": metrics, "validation_failures": failures}


def artifact_facts(g: G.Graph, aid: int) -> Dict:
    props = mlmd.properties(g.artifacts[aid])
    kind = g.type_of(aid)
    facts: Dict = {}
    if kind == mlmd.PUSHED_MODEL:
        facts.update(pushed=bool(props.get("pushed")), version=props.get("pushed_version"),
                     destination=props.get("pushed_destination"))
    elif kind == mlmd.BLESSING:
        facts.update(blessed=bool(props.get("blessed")), current_model_id=props.get("current_model_id"),
                     baseline_model_id=props.get("baseline_model_id"))
    elif kind == mlmd.EXAMPLES:
        facts.update(span=props.get("span"), version=props.get("version"),
                     splits=props.get("split_names"))
    elif kind == mlmd.STATISTICS:
        path = local_path(g.artifacts[aid].uri)
        if path:
            facts["num_examples"] = _num_examples(path)
    elif kind == mlmd.ANOMALIES:
        # TFX 1.16 records per split whether ExampleValidator found no anomalies
        facts["no_anomalies"] = props.get("blessed")
    elif kind == mlmd.SCHEMA:
        summary = schema_summary(g.artifacts[aid].uri)
        if summary:
            facts.update(features=len(summary["features"]), schema_sha256=summary["text_sha256"])
    return facts


# --------------------------------------------------------------------- tree
def _is_evaluation(g: G.Graph, eid: int) -> bool:
    return (any(g.type_of(e.artifact_id) in (mlmd.BLESSING, mlmd.EVALUATION) for e in g.outputs(eid))
            or any(e.key in G.NOT_FOLLOWED_INPUTS for e in g.inputs(eid)))


def _input_order(edge: G.Edge):
    return (INPUT_ORDER.index(edge.key) if edge.key in INPUT_ORDER else len(INPUT_ORDER), edge.key,
            edge.artifact_id)


def _runs_a_model_on(g: G.Graph, eid: int, aid: int) -> bool:
    """Examples read beside a Model (evaluation, attribution, warm-up requests), not made into one."""
    return g.type_of(aid) == mlmd.EXAMPLES and any(g.type_of(e.artifact_id) == mlmd.MODEL for e in g.inputs(eid))


def _expanded_under(g: G.Graph, root: int) -> Dict[int, int]:
    """artifact id -> the consuming execution under which the tree expands it: not an
    evaluation when another consumer exists, nor one that runs a model on its examples
    (the Pusher's and the InfraValidator's warm-up requests), then the one nearest the root."""
    depth, frontier, d = {root: 0}, [root], 0
    exec_depth: Dict[int, int] = {}
    while frontier:
        d += 1
        nxt = []
        for aid in frontier:
            for edge in g.producers(aid):
                if edge.execution_id in exec_depth:
                    continue
                exec_depth[edge.execution_id] = d
                for inp in g.inputs(edge.execution_id):
                    if inp.artifact_id not in depth:
                        depth[inp.artifact_id] = d + 1
                        nxt.append(inp.artifact_id)
        frontier = nxt
    expanded_under = {}
    for aid in depth:
        consumers = [e.execution_id for e in g.consumers(aid) if e.execution_id in exec_depth]
        if consumers:
            expanded_under[aid] = min(consumers, key=lambda x: (_is_evaluation(g, x), _runs_a_model_on(g, x, aid),
                                                                exec_depth[x], x))
    return expanded_under


def build_tree(g: G.Graph, root: int, extras: Dict[int, Dict], with_metrics: bool = True) -> Dict:
    expanded_under = _expanded_under(g, root)
    expanded_executions: set = set()

    def artifact_node(aid: int, key: Optional[str], parent: Optional[int]) -> Dict:
        node = {"kind": "artifact", "key": key, **artifact_json(g, aid), "facts": artifact_facts(g, aid)}
        node.update(extras.get(aid, {}))
        if g.reused_by.get(aid):
            node["reused_by_runs"] = sorted({g.run_ids.get(e) for e in g.reused_by[aid]} - {None})
        if parent is not None and expanded_under.get(aid) != parent:
            node["shown_elsewhere"] = True
            return node
        if aid in g.truncated:
            node["not_followed"] = True
            return node
        producers = [e.execution_id for e in g.producers(aid)]
        node["produced_by"] = [execution_node(eid) for eid in sorted(set(producers))]
        return node

    def execution_node(eid: int) -> Dict:
        node = {"kind": "execution", **execution_json(g, eid)}
        if eid in expanded_executions:
            node["shown_elsewhere"] = True
            return node
        expanded_executions.add(eid)
        node["facts"] = execution_facts(g, eid, with_metrics)
        node["inputs"] = [artifact_node(e.artifact_id, e.key, eid)
                          for e in sorted(g.inputs(eid), key=_input_order)]
        return node

    return artifact_node(root, None, None)


def walk(tree: Dict):
    """Every node of a tree, depth first."""
    yield tree
    for child in tree.get("produced_by", []) + tree.get("inputs", []):
        yield from walk(child)


# ----------------------------------------------------------------- the model
def resolve_pushed(store, settings: Settings, version: Optional[str]) -> Tuple[mlmd.PushedModel, Optional[str]]:
    """The PushedModel for ``version`` (None or 'serving': the one served now, the
    newest version in the push directory), and the version served now."""
    pushed = mlmd.pushed_models(store)
    newest = pushdir.newest_version(str(settings.model_push_dir))
    serving = str(newest) if newest is not None else None
    known = ", ".join(p.version for p in pushed[:20]) or "none"
    if version in (None, SERVING):
        if serving is None:
            raise mlmd.MetadataError(
                f"no model is being served from '{settings.model_push_dir}' (no numeric version "
                f"directory). Pass a version; pushed versions in the store: {known}")
        version = serving
    matches = [p for p in pushed if p.version == str(version)]
    if not matches:
        hint = f"; serving now: {serving}" if serving else ""
        raise mlmd.MetadataError(_why_not_in_metadata(settings, str(version)) or (
            f"no pushed model with version '{version}' in the store. "
            f"Pushed versions (newest first): {known}{hint}"))
    # Several pipelines may share a store: prefer the push into this push directory.
    here = [p for p in matches if p.is_in(settings.model_push_dir)]
    return (here or matches)[0], serving


def _why_not_in_metadata(settings: Settings, version: str) -> Optional[str]:
    """What to say about a version that is in the push directory but not in MLMD,
    from its push marker (core/pushdir.py); None if there is no such directory."""
    path = storage.join(settings.model_push_dir, version)
    if not pushdir.is_version_name(version) or not storage.isdir(path):
        return None
    marker = pushdir.read_marker(path)
    if marker is None:
        return (f"version {version} in '{settings.model_push_dir}' has no record in ML Metadata and no "
                f"push marker: it was not pushed by tfxops, so its lineage is unknown.")
    owner = Owner.from_dict(marker.get("owner"))
    if owner is not None and owner.state() == ALIVE:
        return (f"version {version} is being pushed by {owner.describe()}; its record in ML Metadata "
                f"follows when that push finishes. Try again in a moment.")
    made_by = (f"; run {marker['pipeline_run_id']}, {marker.get('node_id')} execution "
               f"{marker.get('execution_id')}" if marker.get("pipeline_run_id") else "")
    return (f"version {version} in '{settings.model_push_dir}' has no record in ML Metadata: the process "
            f"that pushed it ({owner.describe() if owner else 'unknown'}{made_by}) died before recording it. "
            f"The next `tfxops run` records it as its Pusher's output (or moves it aside to "
            f".orphaned-{version} when no execution matches); so does pipeline.recovery.recover(settings).")


def model_report(store, settings: Settings, version: Optional[str] = None,
                 with_metrics: bool = True) -> Tuple[Dict, G.Graph]:
    """Everything about one pushed version, and the graph it was read from."""
    pushed, serving = resolve_pushed(store, settings, version)
    g = G.upstream(store, pushed.artifact.id)
    pusher = next((e.execution_id for e in g.producers(pushed.artifact.id)), None)
    run_id = g.run_ids.get(pusher) if pusher else None
    extras, checks = _checks_in_the_same_run(store, g, run_id, with_metrics)
    tree = build_tree(g, pushed.artifact.id, extras, with_metrics)
    later = _used_since(store, g, checks, pushed.artifact.id)
    report = {
        "version": pushed.version, "serving_now": pushed.version == serving, "serving_version": serving,
        "push_dir": str(settings.model_push_dir), "store": mlmd.describe_store(settings),
        "run_id": run_id,
        "model_card": mlmd.custom(pushed.artifact, "model_card"),    # pipeline.model_card, in the version
        "input_domain": mlmd.custom(pushed.artifact, "input_domain"),    # pipeline.domain, in the version
        "pushed_by": {"execution_id": pusher, "node_id": g.execution_name(pusher)} if pusher else None,
        "summary": _summarize(tree), "tree": tree,
        "downstream": [_downstream_json(later, eid) for eid in later.topological_executions()],
    }
    full = G.Graph().merge(g).merge(checks).merge(later)
    full.focus = {pushed.artifact.id}
    return report, full


def _checks_in_the_same_run(store, g: G.Graph, run_id: Optional[str],
                            with_metrics: bool) -> Tuple[Dict[int, Dict], G.Graph]:
    """What else the run that made the training data and the model did with them
    (statistics, anomalies, the gate; the model's evaluation, when the model reached
    this push some other way than through that run's Pusher, e.g. a re-push by
    monitoring): per artifact id, its ``checks`` for the tree, and their graph."""
    extras: Dict[int, Dict] = {}
    checks = G.Graph()
    reused = {e for ids in g.reused_by.values() for e in ids}
    for aid in [a for a in g.artifacts if g.type_of(a) in (mlmd.EXAMPLES, mlmd.MODEL) and a not in g.truncated]:
        made_in = next((g.run_ids.get(e.execution_id) for e in g.producers(aid)), None) or run_id
        data = g.type_of(aid) == mlmd.EXAMPLES
        found = G.same_run_checks(store, g, aid, made_in, rounds=3 if data else 1, exclude=reused,
                                  output_types={mlmd.STATISTICS, mlmd.ANOMALIES} if data else None)
        if found.executions:
            checks.merge(found)
            extras[aid] = {"checks": [_check_json(found, eid, with_metrics)
                                      for eid in found.topological_executions()]}
    return extras, checks


def _check_json(found: G.Graph, eid: int, with_metrics: bool) -> Dict:
    """One checking execution with its outputs (an Evaluator's facts: its metrics)."""
    is_evaluator = "eval_config" in mlmd.properties(found.executions[eid])
    return {**execution_json(found, eid),
            "facts": execution_facts(found, eid, with_metrics) if is_evaluator else {},
            "outputs": [{"key": e.key, **artifact_json(found, e.artifact_id),
                         "facts": artifact_facts(found, e.artifact_id)} for e in found.outputs(eid)]}


def _used_since(store, g: G.Graph, checks: G.Graph, pushed_id: int) -> G.Graph:
    """Executions that read the pushed model or its Model since (monitoring, later
    evaluations), other than those already in the trace."""
    model_ids = [a for a in g.artifacts if g.type_of(a) == mlmd.MODEL and a not in g.truncated]
    return G.consumers_of(store, [pushed_id] + model_ids,
                          exclude=set(g.executions) | set(checks.executions)
                          | {e for ids in g.reused_by.values() for e in ids})


def _downstream_json(later: G.Graph, eid: int) -> Dict:
    entry = execution_json(later, eid)
    entry["inputs"] = [{"key": e.key, "id": e.artifact_id, "type": later.type_of(e.artifact_id)}
                       for e in later.inputs(eid)]
    entry["outputs"] = [{"key": e.key, **artifact_json(later, e.artifact_id)} for e in later.outputs(eid)]
    return entry


# ------------------------------------------------------------------ summary
DATA_KEYS = ("input_base", "patterns", "span", "version", "input_fingerprint", "files", "unchanged_since")
TRAINING_KEYS = ("train_args", "eval_args", "hyperparameters")
EVALUATION_KEYS = ("metrics", "validation_failures", "thresholds", "baseline_model_id", "metrics_error")


def _summarize(tree: Dict) -> Dict:
    """The answers in one place: data, code, training, evaluation, schema."""
    out: Dict = {"data": None, "code": {}, "training": None, "evaluation": None, "schema": None}
    for node in walk(tree):
        if node["kind"] == "execution":
            _summarize_execution(node, out)
        else:
            _summarize_artifact(node, out)
    if out["evaluation"] is None:      # evaluated in its own run, pushed another way
        out["evaluation"] = _evaluation_among_checks(tree)
    # the blessing is above its evaluator in the tree
    if out["evaluation"] is not None and "blessed" not in out["evaluation"]:
        blessing = next((n for n in walk(tree) if n["kind"] == "artifact" and n["type"] == mlmd.BLESSING), None)
        out["evaluation"]["blessed"] = blessing["facts"].get("blessed") if blessing else None
    if out["data"] is not None:
        _add_num_examples(tree, out["data"])
    return out


def _summarize_execution(node: Dict, out: Dict) -> None:
    facts = node.get("facts") or {}
    if "input_base" in facts and out["data"] is None:
        out["data"] = {k: facts.get(k) for k in DATA_KEYS}
        out["data"]["execution_id"] = node["id"]
    if facts.get("code"):
        out["code"][node["node_id"]] = facts["code"]
    if "train_args" in facts and out["training"] is None:
        out["training"] = {k: facts.get(k) for k in TRAINING_KEYS}
        out["training"]["model_execution_id"] = node["id"]
    if "thresholds" in facts and out["evaluation"] is None:
        out["evaluation"] = {k: facts.get(k) for k in EVALUATION_KEYS if k in facts}


def _summarize_artifact(node: Dict, out: Dict) -> None:
    if node["type"] == mlmd.EXAMPLES and "checks" in node and out["data"] is not None:
        out["data"].setdefault("examples_id", node["id"])
    elif node["type"] == mlmd.BLESSING and out["evaluation"] is not None:
        out["evaluation"].setdefault("blessed", node["facts"].get("blessed"))
    elif node["type"] == mlmd.SCHEMA and out["schema"] is None and node.get("facts"):
        out["schema"] = {"id": node["id"], **node["facts"]}


def _evaluation_among_checks(tree: Dict) -> Optional[Dict]:
    """The first evaluation listed among a Model's checks in the tree, with its blessing."""
    for node in walk(tree):
        if node["kind"] != "artifact" or node["type"] != mlmd.MODEL:
            continue
        for check in node.get("checks", []):
            facts = check.get("facts") or {}
            if "thresholds" in facts:
                evaluation = {k: facts.get(k) for k in EVALUATION_KEYS if k in facts}
                blessing = next((o for o in check["outputs"] if o["type"] == mlmd.BLESSING), None)
                evaluation["blessed"] = blessing["facts"].get("blessed") if blessing else None
                evaluation["execution_id"] = check["id"]
                return evaluation
    return None


def _add_num_examples(tree: Dict, data: Dict) -> None:
    """Rows per split, from the statistics among the first checked Examples' checks."""
    examples = next((n for n in walk(tree) if n["kind"] == "artifact" and n["type"] == mlmd.EXAMPLES
                     and "checks" in n), None)
    for check in (examples or {}).get("checks", []):
        for output in check["outputs"]:
            if output["type"] == mlmd.STATISTICS:
                data["num_examples"] = output["facts"].get("num_examples")
    if "num_examples" not in data:     # the statistics are in the tree itself (the model card read them)
        statistics = next((n for n in walk(tree) if n["kind"] == "artifact" and n["type"] == mlmd.STATISTICS
                           and (n.get("facts") or {}).get("num_examples")), None)
        if statistics is not None:
            data["num_examples"] = statistics["facts"]["num_examples"]
