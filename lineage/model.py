"""The lineage of one pushed model, as ``tfxops lineage model`` and the demo show it:
where it came from (``trace``) and what changed since the previous version (``runs``)."""
from typing import Dict, Optional, Tuple

from core import mlmd
from core.config import Settings
from lineage import graph as G
from lineage import runs, trace


def model_lineage(settings: Settings, version: Optional[str] = None,
                  with_metrics: bool = True) -> Tuple[Dict, G.Graph]:
    """The report on one pushed version (``serving`` = the one served) and its graph."""
    store = mlmd.open_store(settings, readonly=True)
    report, graph = mlmd.with_retry(lambda: trace.model_report(store, settings, version, with_metrics))
    training = report["summary"].get("training") or {}
    run_id = report["run_id"] or mlmd.run_of_execution(store, training.get("model_execution_id") or 0)
    report["since_previous"] = mlmd.with_retry(lambda: runs.changes_since_previous(
        store, settings.pipeline_name, report["version"], run_id, with_metrics=with_metrics))
    return report, graph
