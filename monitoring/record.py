"""A monitor run in MLMD: an execution of type ``tfxops.Monitor``.

Inputs: the PushedModel and Model it monitored (event keys ``pushed_model``,
``model``) and the push-time attributions the window was compared with
(``attributions``, ``monitoring.attribution_drift``). Outputs: the window's ExampleStatistics (``statistics``, split
``serving``), ExampleAnomalies (``anomalies``), the report
(``tfxops.MonitorReport``, ``report``). A re-push of a blessed model is its own
execution, ``tfxops.Repush`` (input ``model``: the re-pushed Model; output
``pushed_model``: the new PushedModel; custom properties: the window, the reason,
the monitor execution), shaped like a Pusher's, so ``monitoring.baseline`` and
lineage find the re-pushed version's training data as for any push.
All monitor executions share the context ``<pipeline_name>.monitor`` (type
``tfxops.Monitoring``).
"""
import json
from typing import Dict, List, Optional, Tuple

from ml_metadata.errors import NotFoundError
from ml_metadata.proto import metadata_store_pb2 as pb

EXECUTION_TYPE = "tfxops.Monitor"
REPUSH_TYPE = "tfxops.Repush"
CONTEXT_TYPE = "tfxops.Monitoring"
REPORT_TYPE = "tfxops.MonitorReport"


def _type_id(store, name: str, kind: str) -> int:
    getter = getattr(store, f"get_{kind}_type")
    try:
        return getter(name).id
    except NotFoundError:
        proto = {"artifact": pb.ArtifactType, "execution": pb.ExecutionType, "context": pb.ContextType}[kind]()
        proto.name = name
        return getattr(store, f"put_{kind}_type")(proto)


def _set(message, key: str, value) -> None:
    target = message.custom_properties[key]
    if isinstance(value, bool) or isinstance(value, int):
        target.int_value = int(value)
    elif isinstance(value, float):
        target.double_value = value
    else:
        target.string_value = value if isinstance(value, str) else json.dumps(value)


def _event(kind, key: str) -> pb.Event:
    event = pb.Event(type=kind)
    event.path.steps.add().key = key
    event.path.steps.add().index = 0
    return event


def new_artifact(store, type_name: str, uri: str, properties: Dict) -> pb.Artifact:
    artifact = pb.Artifact(type_id=_type_id(store, type_name, "artifact"), uri=uri, state=pb.Artifact.LIVE)
    for key, value in properties.items():
        _set(artifact, key, value)
    return artifact


def record_run(store, pipeline_name: str, properties: Dict,
               inputs: List[Tuple[str, pb.Artifact]],
               outputs: List[Tuple[str, pb.Artifact]],
               state=pb.Execution.COMPLETE, execution_type: str = EXECUTION_TYPE) -> Dict[str, int]:
    """One execution with its input/output events in one transaction; returns ids."""
    execution = pb.Execution(type_id=_type_id(store, execution_type, "execution"),
                             last_known_state=state)
    for key, value in properties.items():
        if value is not None:
            _set(execution, key, value)
    name = f"{pipeline_name}.monitor"
    context_type = _type_id(store, CONTEXT_TYPE, "context")
    found = store.get_context_by_type_and_name(CONTEXT_TYPE, name)
    context = found if found is not None else pb.Context(type_id=context_type, name=name)
    items = [(f"input_{k}", a, pb.Event.INPUT) for k, a in inputs if a is not None]
    items += [(f"output_{k}", a, pb.Event.OUTPUT) for k, a in outputs if a is not None]
    pairs = [(a, _event(kind, label.split("_", 1)[1])) for label, a, kind in items]
    execution_id, artifact_ids, _ = store.put_execution(
        execution, pairs, [context], reuse_context_if_already_exist=True)
    return {"execution_id": execution_id,
            **{label: artifact_id for (label, _, _), artifact_id in zip(items, artifact_ids)}}


def find_run(store, window: str, model_version: str) -> Optional[pb.Execution]:
    """The (not dry-run) monitor execution already recorded for this window and version."""
    for execution in monitor_executions(store):
        props = execution.custom_properties
        if props["window"].string_value == window and props["model_version"].string_value == model_version \
                and not props["dry_run"].int_value:
            return execution
    return None


def monitor_executions(store) -> List[pb.Execution]:
    try:
        return store.get_executions_by_type(EXECUTION_TYPE)
    except NotFoundError:
        return []
