"""What a pipeline run appends to the audit trail (``core.audit``): that it
started; then, from its record in MLMD, a data gate stop, a refused blessing, a
push, and its end, each with the MLMD ids that are its evidence (the nodes'
execution ids and the ids of the artifacts they read and wrote, by event key).

Only what this run did is recorded: the ids come from this run's own
``pipeline_run`` context (none when it failed before its first node: then
``summary.run_id`` is "-"), and a push or a refused blessing only when that
run's Pusher or Evaluator executed rather than being CACHED. A fully cached rerun
appends its start and end only.
"""
from typing import Dict, List, Optional

from core import audit, mlmd
from core.config import Settings


def started(settings: Settings, data_dir: str) -> audit.Written:
    return audit.record(settings, audit.RUN_STARTED,
                        f"tfxops run of pipeline '{settings.pipeline_name}' on the data in {data_dir}")


def outcome(settings: Settings, summary) -> List[audit.Written]:
    """The entries for a finished run (``pipeline.runner.RunSummary``): its gate
    stop, refused blessing or push, then its end."""
    nodes: Dict[str, mlmd.NodeExecution] = {}
    run_context: Optional[int] = None
    if summary.run_id != "-":     # else it stopped before it recorded anything: the entries say so, without ids
        try:
            store = mlmd.open_store(settings)
            run = mlmd.find_run(store, settings.pipeline_name, summary.run_id)
            run_context = run.id
            nodes = {n.node_id: n for n in mlmd.run_executions(store, run, settings.pipeline_name, with_inputs=True)}
        except mlmd.MetadataError:
            pass
    written = []
    if summary.failed_node == "DataGate":
        written.append(audit.record(settings, audit.GATE_STOPPED, f"the data gate stopped the run: {summary.error}",
                                    evidence(nodes.get("DataGate"))))
    if summary.blessed is False and _executed(nodes.get("Evaluator")):
        reasons = "; ".join(summary.blessing_reasons) or "the Evaluator did not bless it"
        written.append(audit.record(settings, audit.BLESSING_REFUSED, f"candidate model not blessed: {reasons}",
                                    evidence(nodes.get("Evaluator"))))
    if summary.pushed and _executed(nodes.get("Pusher")):
        written.append(audit.record(
            settings, audit.PUSHED, f"blessed model pushed to {summary.pushed_path}",
            evidence(nodes.get("Pusher")), model_version=summary.pushed_version))
    ended = f"run {summary.run_id} " + (
        "succeeded" if summary.ok else f"failed at {summary.failed_node}: {summary.error}")
    written.append(audit.record(settings, audit.RUN_ENDED, ended,
                                dict(pipeline_run_context_id=run_context),
                                model_version=summary.pushed_version))
    return written


def _executed(node: Optional[mlmd.NodeExecution]) -> bool:
    """The node ran in this run (its execution is in this run's context, not CACHED)."""
    return node is not None and node.state != "CACHED"


def evidence(node: Optional[mlmd.NodeExecution]) -> Dict[str, int]:
    """A node's execution id and the ids of its input and output artifacts."""
    if node is None:
        return {}
    ids = {"execution_id": node.execution.id}
    for direction, artifacts in (("input", node.inputs), ("output", node.outputs)):
        for key, found in sorted(artifacts.items()):
            for index, artifact in enumerate(found):
                ids[f"{direction}_{key}_id" + (f"_{index}" if index else "")] = artifact.id
    return ids


def failures(written: List[audit.Written]) -> Optional[str]:
    """The audit write failures among ``written``, in words; None if all were written."""
    errors = [w.error for w in written if not w.ok]
    return "; ".join(errors) if errors else None
