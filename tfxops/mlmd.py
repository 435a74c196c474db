"""Reading the ML Metadata store TFX writes: connections, runs, executions, outputs.

The pipeline runner's summary, lineage and monitoring read MLMD through these
helpers. Reads never create a store: a missing SQLite file is an error.
"""
import dataclasses
from pathlib import Path
from typing import Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from tfxops.config import Settings

STATE = metadata_store_pb2.Execution.State


class MetadataError(RuntimeError):
    """The store is missing, unreadable, or lacks what was asked for."""


def connection_config(settings: Settings) -> metadata_store_pb2.ConnectionConfig:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(settings.metadata_file)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


def open_store(settings: Settings, readonly: bool = True) -> metadata_store.MetadataStore:
    config = connection_config(settings)
    if readonly:
        path = Path(config.sqlite.filename_uri)
        if not path.is_file():
            raise MetadataError(
                f"no ML Metadata store at '{path}'. Run `tfxops run` first, or point "
                f"--set metadata_path=... (TFXOPS_METADATA_PATH) at an existing store.")
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    try:
        return metadata_store.MetadataStore(config)
    except Exception as exc:  # MLMD raises its own status errors
        raise MetadataError(f"cannot open ML Metadata store at '{config.sqlite.filename_uri}': {exc}") from exc


@dataclasses.dataclass
class NodeExecution:
    node_id: str
    execution: metadata_store_pb2.Execution
    outputs: Dict[str, List[metadata_store_pb2.Artifact]]

    @property
    def state(self) -> str:
        return STATE.Name(self.execution.last_known_state)

    @property
    def seconds(self) -> float:
        e = self.execution
        return max(0.0, (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000.0)


def pipeline_runs(store, pipeline_name: str) -> List[metadata_store_pb2.Context]:
    """pipeline_run contexts of ``pipeline_name``, newest first."""
    runs = []
    for context in store.get_contexts_by_type("pipeline_run"):
        parents = store.get_parent_contexts_by_context(context.id)
        if any(p.name == pipeline_name for p in parents) or not parents:
            runs.append(context)
    return sorted(runs, key=lambda c: c.create_time_since_epoch, reverse=True)


def _node_id(store, execution_id: int, pipeline_name: str) -> str:
    for context in store.get_contexts_by_execution(execution_id):
        if context.name.startswith(pipeline_name + "."):
            return context.name[len(pipeline_name) + 1:]
    return "?"


def output_artifacts(store, execution_id: int) -> Dict[str, List[metadata_store_pb2.Artifact]]:
    events = [e for e in store.get_events_by_execution_ids([execution_id])
              if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    outputs: Dict[str, List[metadata_store_pb2.Artifact]] = {}
    for event in events:
        key = next((s.key for s in event.path.steps if s.HasField("key")), "")
        outputs.setdefault(key, []).append(artifacts[event.artifact_id])
    return outputs


def run_executions(store, run: metadata_store_pb2.Context, pipeline_name: str) -> List[NodeExecution]:
    """Executions of one pipeline run, oldest first, with their output artifacts."""
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: (e.create_time_since_epoch, e.id))
    return [NodeExecution(_node_id(store, e.id, pipeline_name), e, output_artifacts(store, e.id))
            for e in executions]


def find_run(store, pipeline_name: str, run_id: Optional[str] = None) -> metadata_store_pb2.Context:
    runs = pipeline_runs(store, pipeline_name)
    if not runs:
        raise MetadataError(f"the store has no runs of pipeline '{pipeline_name}'.")
    if run_id is None:
        return runs[0]
    for run in runs:
        if run.name == run_id:
            return run
    raise MetadataError(f"no run '{run_id}' of pipeline '{pipeline_name}'. Runs: "
                        + ", ".join(r.name for r in runs[:20]))


def custom(artifact: metadata_store_pb2.Artifact, key: str, default=None):
    if key not in artifact.custom_properties:
        return default
    value = artifact.custom_properties[key]
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else default
