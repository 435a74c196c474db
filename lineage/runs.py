"""Pipeline runs as MLMD recorded them, and what differs between two runs.

``runs_table``: each run's start, duration, status and per-component outcome
(executed / cached / failed / running / recovered: completed by pipeline.recovery
after its process died) and the version it pushed. A run whose
process is gone before it ended (``kill -9``, a crash, a reboot) is "abandoned",
and so are its executions that MLMD still holds as RUNNING: the runner records
its owner and its end on the pipeline_run context (core/owner.py). Runs
recorded without an owner keep the status their executions give.

``run_facts`` / ``diff_runs``: a run reduced to what decides its model (input
data fingerprint, model code, every component's configuration, schema, metrics,
outcome) and the differences between two such reductions.
"""
import json
import time
from typing import Dict, List, Optional

from core import mlmd
from core.owner import DEAD, RECOVERED, RUN_ENDED, RUN_OWNER, Owner
from core.pushdir import version_order
from lineage import graph as G
from lineage import trace

# MLMD execution state -> what it means for a run
OUTCOME = {"COMPLETE": "executed", "CACHED": "cached", "FAILED": "failed", "RUNNING": "running",
           "NEW": "pending", "CANCELED": "canceled", "UNKNOWN": "unknown"}
SECTIONS = ("data", "code", "configuration", "schema", "metrics", "outcome")


def _status_from_states(states: List[str]) -> str:
    if "failed" in states:
        return "failed"
    if "running" in states or "pending" in states:
        return "running"
    if "canceled" in states:
        return "canceled"
    return "complete"


def run_status(run, states: List[str]) -> str:
    """The status the executions' states give, or "abandoned" for a run whose
    process died before it ended."""
    status = _status_from_states(states)
    return "abandoned" if status != "failed" and _abandoned(run) else status


def _abandoned(run) -> bool:
    if RUN_ENDED in run.custom_properties:
        return False
    owner = Owner.from_dict(mlmd.custom(run, RUN_OWNER))
    return owner is not None and owner.state() == DEAD


def run_summary(store, run, pipeline_name: str) -> Dict:
    nodes = mlmd.run_executions(store, run, pipeline_name)
    components, pushed, reused = [], None, None
    for node in nodes:
        components.append({"node_id": node.node_id, "execution_id": node.execution.id,
                           "state": "recovered" if RECOVERED in node.execution.custom_properties
                           else OUTCOME.get(node.state, node.state.lower()),
                           "seconds": round(node.seconds, 1),
                           "outputs": {k: [a.id for a in v] for k, v in sorted(node.outputs.items())}})
        for artifact in node.outputs.get("pushed_model", []):
            if int(mlmd.custom(artifact, "pushed", 0) or 0):
                # a cached Pusher points at an earlier push: nothing new was pushed
                if node.state == "CACHED":
                    reused = str(mlmd.custom(artifact, "pushed_version"))
                else:
                    pushed = str(mlmd.custom(artifact, "pushed_version"))
    start = min((n.execution.create_time_since_epoch for n in nodes), default=run.create_time_since_epoch)
    end = max((n.execution.last_update_time_since_epoch for n in nodes), default=start)
    states = [c["state"] for c in components]
    status = run_status(run, states)
    if status == "running":            # so far
        end = max(end, int(time.time() * 1000))
    if status == "abandoned":          # what was under way when its process died
        for component in components:
            if component["state"] in ("running", "pending"):
                component["state"] = "abandoned"
        states = [c["state"] for c in components]
    return {"run_id": run.name, "started": mlmd.ms_to_iso(start), "seconds": round((end - start) / 1000.0, 1),
            "status": status, "executed": states.count("executed"),
            "cached": states.count("cached"), "pushed_version": pushed, "cached_push_version": reused,
            "components": components}


def runs_table(store, pipeline_name: str, limit: Optional[int] = None) -> List[Dict]:
    runs = mlmd.pipeline_runs(store, pipeline_name)
    if limit:
        runs = runs[:limit]
    return [run_summary(store, run, pipeline_name) for run in runs]


# --------------------------------------------------------------------- facts
def _flatten(prefix: str, value, out: Dict) -> None:
    """{'a': {'b': [1, {'c': 2}]}} -> {'p.a.b[0]': 1, 'p.a.b[1].c': 2}: a difference
    is then reported at the setting that changed, not as a whole config."""
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(f"{prefix}.{key}", value[key], out)
    elif isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    else:
        out[prefix] = value


def run_facts(store, run, pipeline_name: str, with_metrics: bool = True) -> Dict:
    """One run as the sections ``diff_runs`` compares; every value is JSON-able."""
    nodes = mlmd.run_executions(store, run, pipeline_name, with_inputs=True)
    facts: Dict = {"run_id": run.name, **{s: {} for s in SECTIONS}}
    for node in nodes:
        props = mlmd.properties(node.execution)
        if not props and not node.outputs:     # resolvers: no settings, nothing made
            continue
        _add_settings(facts, node.node_id, props)
        for key, artifacts in node.outputs.items():
            for artifact in artifacts:
                _add_output(facts, f"{node.node_id}.{key}", artifact, with_metrics)
        for key, artifacts in node.inputs.items():
            if key in G.NOT_FOLLOWED_INPUTS:
                facts["outcome"][f"{node.node_id}.{key}.artifact_id"] = [a.id for a in artifacts]
    states = {n.node_id: OUTCOME.get(n.state, n.state.lower()) for n in nodes}
    facts["outcome"]["status"] = run_status(run, list(states.values()))
    facts["states"] = states
    facts["outputs"] = {n.node_id: sorted(a.id for arts in n.outputs.values() for a in arts) for n in nodes}
    return facts


def _add_settings(facts: Dict, node_id: str, props: Dict) -> None:
    """An execution's properties: its model code, the data an ExampleGen read (its
    input_base; the fingerprint/span/version TFX records on the Examples artifact,
    as a cached execution does not repeat them on itself), the rest as configuration."""
    code, rest = trace.split_code(props)
    for key, value in code.items():
        facts["code"][f"{node_id}.{key}"] = value
    for key in ("input_base", "input_fingerprint", "span", "version"):
        if key in rest:
            value = rest.pop(key)
            if key == "input_base":
                facts["data"][f"{node_id}.{key}"] = value
    flat: Dict = {}
    for key, value in rest.items():
        _flatten(f"{node_id}.{key}", value, flat)
    facts["configuration"].update(flat)


def _add_output(facts: Dict, name: str, artifact, with_metrics: bool) -> None:
    """What one output artifact (``name`` = node.key) says about the run."""
    if artifact.type == mlmd.EXAMPLES:
        facts["data"][f"{name}.artifact_id"] = artifact.id
        for prop in ("input_fingerprint", "span", "version"):
            value = mlmd.custom(artifact, prop)
            if value is None and prop in artifact.properties:
                value = mlmd.value_of(artifact.properties[prop])
            if value is not None:
                facts["data"][f"{name}.{prop}"] = value
    elif artifact.type == mlmd.SCHEMA:
        summary = trace.schema_summary(artifact.uri)
        facts["schema"]["artifact_id"] = artifact.id
        if summary:
            facts["schema"]["sha256"] = summary["text_sha256"]
            for feature, text in summary["features"].items():
                facts["schema"][f"feature.{feature}"] = text
    elif artifact.type == mlmd.EVALUATION and with_metrics:
        found = trace.read_metrics(artifact.uri, {})
        for metric in found.get("metrics", []):
            facts["metrics"][metric["metric"]] = metric["value"]
        if "metrics_error" in found:
            facts["metrics"]["error"] = found["metrics_error"]
    elif artifact.type == mlmd.BLESSING:
        facts["outcome"]["blessed"] = bool(mlmd.custom(artifact, "blessed", 0))
    elif artifact.type == mlmd.PUSHED_MODEL:
        pushed = bool(mlmd.custom(artifact, "pushed", 0))
        facts["outcome"]["pushed_version"] = str(mlmd.custom(artifact, "pushed_version")) if pushed else None


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def diff_facts(a: Dict, b: Dict) -> Dict:
    """Section -> list of {key, a, b} that differ; plus which components reused outputs."""
    out: Dict = {"run_a": a["run_id"], "run_b": b["run_id"], "changes": {}, "unchanged": []}
    for section in SECTIONS:
        keys = sorted(set(a[section]) | set(b[section]))
        changes = []
        for key in keys:
            va, vb = a[section].get(key), b[section].get(key)
            if not _same(va, vb):
                change = {"key": key, "a": va, "b": vb}
                if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and section == "metrics":
                    change["delta"] = vb - va
                changes.append(change)
        if changes:
            out["changes"][section] = changes
        else:
            out["unchanged"].append(section)
    # Outcome differences alone (a rerun that pushed nothing new, a different
    # baseline) are reported but do not make the inputs "changed".
    out["changed"] = any(s in out["changes"] for s in SECTIONS if s != "outcome")
    out["reused_outputs"] = sorted(n for n, ids in a["outputs"].items()
                                   if ids and b["outputs"].get(n) == ids)
    out["states"] = {"a": a["states"], "b": b["states"]}
    return out


def diff_runs(store, pipeline_name: str, run_a: str, run_b: str, with_metrics: bool = True) -> Dict:
    first = mlmd.find_run(store, pipeline_name, run_a)
    second = mlmd.find_run(store, pipeline_name, run_b)
    return diff_facts(run_facts(store, first, pipeline_name, with_metrics),
                      run_facts(store, second, pipeline_name, with_metrics))


# ------------------------------------------------------- since the last push
def _push_run(store, artifact_id: int) -> Optional[str]:
    """The run whose execution made this PushedModel (not a cached reuse of it)."""
    for execution in mlmd.producers(store, artifact_id):
        run = mlmd.run_of_execution(store, execution.id)
        if run:
            return run
    return None


def changes_since_previous(store, pipeline_name: str, version: str, run_id: Optional[str],
                           with_metrics: bool = True) -> Dict:
    """What differs between the run that made ``version`` and the run that made the
    pushed version before it: "what changed since the last one?"."""
    if not run_id:
        return {"previous_version": None, "note": "this version was not pushed by a pipeline run"}
    for pushed in mlmd.pushed_models(store):          # highest version first
        if version_order(pushed.version) >= version_order(version):
            continue
        previous_run = _push_run(store, pushed.artifact.id)
        if previous_run and previous_run != run_id:
            diff = diff_facts(run_facts(store, mlmd.find_run(store, pipeline_name, previous_run), pipeline_name,
                                        with_metrics),
                              run_facts(store, mlmd.find_run(store, pipeline_name, run_id), pipeline_name,
                                        with_metrics))
            return {"previous_version": pushed.version, "previous_run": previous_run, "diff": diff}
    return {"previous_version": None, "note": "no earlier pushed version in the store"}
