"""The ML Metadata access layer: opening the store TFX writes (with retries while a
writer holds it), and reading runs, executions, artifacts, their events (who made
and who read what), pushed and blessed models and the Evaluator's TFMA results.

The pipeline (runner summary, recovery, baseline resolver), lineage and monitoring
read MLMD through these functions. Reads never create a store: a missing SQLite
file, or a MySQL database that does not exist, is an error.

Backends (``Settings.metadata_backend``):

* ``sqlite`` (default): the file ``Settings.metadata_file``.
* ``mysql``: ``mysql_host``, ``mysql_port``, ``mysql_database``, ``mysql_user``;
  the password is read from the environment variable named by
  ``mysql_password_env`` (default ``TFXOPS_MYSQL_PASSWORD``), never from settings.
  MLMD's client (MariaDB Connector/C) authenticates with mysql_native_password.
"""
import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from core import storage
from core.config import ConfigError, Settings
from core.pushdir import version_order

STATE = metadata_store_pb2.Execution.State
EVENT = metadata_store_pb2.Event
BACKENDS = ("sqlite", "mysql")
# Event types that mean "this execution read / wrote this artifact".
INPUT_EVENTS = (EVENT.INPUT, EVENT.DECLARED_INPUT)
OUTPUT_EVENTS = (EVENT.OUTPUT, EVENT.DECLARED_OUTPUT)
# The context types TFX writes.
RUN_CONTEXT, NODE_CONTEXT = "pipeline_run", "node"
# TFX standard artifact type names (tfx.types.standard_artifacts; kept literal so
# reading MLMD does not import TFX).
PUSHED_MODEL, MODEL, BLESSING, EVALUATION = "PushedModel", "Model", "ModelBlessing", "ModelEvaluation"
EXAMPLES, SCHEMA, STATISTICS, ANOMALIES = "Examples", "Schema", "ExampleStatistics", "ExampleAnomalies"

T = TypeVar("T")


class MetadataError(RuntimeError):
    """The store is missing, unreadable, or lacks what was asked for."""


class StoreUnavailable(MetadataError):
    """The store exists (or may) but cannot be reached or read: a server that is
    down, wrong credentials, a corrupt file."""


# ------------------------------------------------------------------- connection
def _backend(settings: Settings) -> str:
    backend = (settings.metadata_backend or "sqlite").strip().lower()
    if backend not in BACKENDS:
        raise ConfigError(f"setting 'metadata_backend' must be one of {', '.join(BACKENDS)}, "
                          f"got {settings.metadata_backend!r}")
    return backend


def connection_config(settings: Settings) -> metadata_store_pb2.ConnectionConfig:
    """The ConnectionConfig for the configured backend (read-write; the pipeline's)."""
    config = metadata_store_pb2.ConnectionConfig()
    if _backend(settings) == "mysql":
        config.mysql.host = settings.mysql_host
        config.mysql.port = int(settings.mysql_port)
        config.mysql.database = settings.mysql_database
        config.mysql.user = settings.mysql_user
        config.mysql.password = os.environ.get(settings.mysql_password_env, "")
        return config
    config.sqlite.filename_uri = str(settings.metadata_file)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


def describe_store(settings: Settings) -> str:
    """Where the store is, for messages (never includes a password)."""
    if _backend(settings) == "mysql":
        return (f"mysql://{settings.mysql_user}@{settings.mysql_host}:{settings.mysql_port}/"
                f"{settings.mysql_database}")
    return str(settings.metadata_file)


def _looks_like_sqlite(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def _sqlite_has_mlmd_tables(path: Path) -> bool:
    """Whether an SQLite file holds MLMD's tables (checked read-only, without MLMD,
    which would try to create them)."""
    import sqlite3

    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.OperationalError:   # locked by a writer for longer than the timeout:
        return True                    # MLMD (with retries) will tell
    except sqlite3.DatabaseError:      # "file is not a database"
        return False
    finally:
        connection.close()
    return {"Type", "Artifact", "Execution", "Context", "Event"} <= names


def open_store(settings: Settings, readonly: bool = True, must_exist: bool = False) -> metadata_store.MetadataStore:
    """A MetadataStore. ``readonly`` (the default) never creates or changes anything:
    SQLite is opened in READONLY mode and must exist; MySQL skips database creation
    (use a MySQL account with only SELECT for a hard guarantee). ``must_exist``: a
    writable store that is never created (the monitor records into the pipeline's)."""
    config = connection_config(settings)
    where = describe_store(settings)
    if readonly or must_exist:
        if config.HasField("mysql"):
            config.mysql.skip_db_creation = True
        else:
            path = Path(config.sqlite.filename_uri)
            if not path.is_file():
                raise MetadataError(
                    f"no ML Metadata store at '{path}'. Run `tfxops run` first, or point "
                    f"--set metadata_path=... (TFXOPS_METADATA_PATH) at an existing store.")
            if not _looks_like_sqlite(path):
                raise MetadataError(f"'{path}' is not an ML Metadata store (not an SQLite database).")
            if not _sqlite_has_mlmd_tables(path):
                raise MetadataError(f"'{path}' is an SQLite database but not an ML Metadata store "
                                    f"(no MLMD tables).")
            if readonly:
                config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    try:
        store = metadata_store.MetadataStore(config)
    except Exception as exc:  # MLMD raises its own status errors
        hint = ""
        if config.HasField("mysql"):
            hint = (f" (is a MySQL server running at {settings.mysql_host}:{settings.mysql_port}, does "
                    f"database '{settings.mysql_database}' exist, and are mysql_user and the password "
                    f"in ${settings.mysql_password_env} right? MLMD's client needs mysql_native_password)")
        raise StoreUnavailable(f"cannot open ML Metadata store at '{where}': {_first_line(exc)}{hint}") from exc
    if readonly or must_exist:
        _check_is_mlmd(store, where)
    return store


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _check_is_mlmd(store, where: str) -> None:
    try:
        store.get_context_types()
    except Exception as exc:
        raise StoreUnavailable(f"'{where}' is not a readable ML Metadata store: {_first_line(exc)}") from exc


def with_retry(read: Callable[[], T], attempts: int = 8, pause: float = 0.25) -> T:
    """Run ``read``, retrying while another process holds the store's write lock
    (SQLite answers 'database is locked' while a pipeline commits)."""
    for attempt in range(attempts):
        try:
            return read()
        except Exception as exc:
            text = str(exc).lower()
            busy = "locked" in text or "busy" in text or "deadlock" in text
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(pause * (attempt + 1))
    raise AssertionError("unreachable")


# ------------------------------------------------------------------- properties
def value_of(value: metadata_store_pb2.Value):
    """A Python value from an MLMD Value (int, float, str, bool, dict/list for structs)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "struct_value":
        from google.protobuf import json_format
        data = json_format.MessageToDict(value.struct_value)
        # TFX stores JSON-able values in a struct under "__value__" as JSON text
        if set(data) == {"__value__"} and isinstance(data["__value__"], str):
            try:
                return json.loads(data["__value__"])
            except ValueError:
                return data["__value__"]
        return data
    if kind == "proto_value":
        return str(value.proto_value)
    return getattr(value, kind)


def custom(artifact, key: str, default=None):
    """A custom property of an artifact, execution or context (or ``default``)."""
    if key not in artifact.custom_properties:
        return default
    value = value_of(artifact.custom_properties[key])
    return default if value is None else value


def properties(node) -> Dict[str, object]:
    """All properties and custom properties of an artifact/execution/context as Python
    values; TFX's JSON-encoded string values are decoded."""
    out = {}
    for source in (node.properties, node.custom_properties):
        for key, raw in source.items():
            value = value_of(raw)
            if isinstance(value, str) and (value[:1] in ("{", "[") or value in ("null", "true", "false")):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            out[key] = value
    return out


def ms_to_iso(ms: int) -> str:
    import datetime
    if not ms:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000.0, tz=datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------- runs
@dataclasses.dataclass
class NodeExecution:
    node_id: str
    execution: metadata_store_pb2.Execution
    outputs: Dict[str, List[metadata_store_pb2.Artifact]]
    inputs: Dict[str, List[metadata_store_pb2.Artifact]] = dataclasses.field(default_factory=dict)

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
    for context in store.get_contexts_by_type(RUN_CONTEXT):
        parents = store.get_parent_contexts_by_context(context.id)
        if any(p.name == pipeline_name for p in parents) or not parents:
            runs.append(context)
    return sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)


def contexts_of_execution(store, execution_id: int) -> List[metadata_store_pb2.Context]:
    """The contexts of an execution; none (not an error) for executions recorded
    outside a pipeline, e.g. by monitoring."""
    from ml_metadata import errors

    try:
        return store.get_contexts_by_execution(execution_id)
    except errors.NotFoundError:
        return []


def node_and_run(store, execution_id: int, pipeline_name: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """The pipeline node id an execution ran for ('Trainer', '?' if none) and the id
    of its pipeline run (None outside a pipeline), from its contexts."""
    contexts = contexts_of_execution(store, execution_id)
    node = next((c.name[len(pipeline_name) + 1:] for c in contexts
                 if pipeline_name and c.name.startswith(pipeline_name + ".")), None)
    node = node or next((c.name.split(".", 1)[1] for c in contexts
                         if c.type == NODE_CONTEXT and "." in c.name), "?")
    run = next((c.name for c in contexts if c.type == RUN_CONTEXT), None)
    return node, run


def event_key(event: metadata_store_pb2.Event) -> str:
    return next((s.key for s in event.path.steps if s.HasField("key")), "")


def _artifacts_by_event(store, execution_id: int, types) -> Dict[str, List[metadata_store_pb2.Artifact]]:
    events = [e for e in store.get_events_by_execution_ids([execution_id]) if e.type in types]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    grouped: Dict[str, List[metadata_store_pb2.Artifact]] = {}
    for event in events:
        grouped.setdefault(event_key(event), []).append(artifacts[event.artifact_id])
    return grouped


def output_artifacts(store, execution_id: int) -> Dict[str, List[metadata_store_pb2.Artifact]]:
    return _artifacts_by_event(store, execution_id, OUTPUT_EVENTS)


def input_artifacts(store, execution_id: int) -> Dict[str, List[metadata_store_pb2.Artifact]]:
    return _artifacts_by_event(store, execution_id, INPUT_EVENTS)


def run_executions(store, run: metadata_store_pb2.Context, pipeline_name: str,
                   with_inputs: bool = False) -> List[NodeExecution]:
    """Executions of one pipeline run, oldest first, with their output artifacts
    (and input artifacts when ``with_inputs``)."""
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: (e.create_time_since_epoch, e.id))
    return [NodeExecution(node_and_run(store, e.id, pipeline_name)[0], e, output_artifacts(store, e.id),
                          input_artifacts(store, e.id) if with_inputs else {})
            for e in executions]


def find_run(store, pipeline_name: str, run_id: Optional[str] = None) -> metadata_store_pb2.Context:
    """A run by id (exact, or an unambiguous prefix); the newest when ``run_id`` is None."""
    runs = pipeline_runs(store, pipeline_name)
    if not runs:
        raise MetadataError(f"the store has no runs of pipeline '{pipeline_name}'.")
    if run_id is None:
        return runs[0]
    for run in runs:
        if run.name == run_id:
            return run
    matches = [r for r in runs if r.name.startswith(run_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise MetadataError(f"run id '{run_id}' is ambiguous; it starts "
                            + ", ".join(r.name for r in matches[:20]))
    raise MetadataError(f"no run '{run_id}' of pipeline '{pipeline_name}'. Runs (newest first): "
                        + ", ".join(r.name for r in runs[:20]) + (" ..." if len(runs) > 20 else ""))


def run_of_execution(store, execution_id: int) -> Optional[str]:
    """The id of the pipeline run an execution belongs to (None outside a pipeline)."""
    return node_and_run(store, execution_id)[1]


# ------------------------------------------------------- who made, who read
def artifact(store, artifact_id: int) -> Optional[metadata_store_pb2.Artifact]:
    """The artifact with this id, or None."""
    found = store.get_artifacts_by_id([int(artifact_id)])
    return found[0] if found else None


def execution(store, execution_id: int) -> Optional[metadata_store_pb2.Execution]:
    """The execution with this id, or None."""
    found = store.get_executions_by_id([int(execution_id)])
    return found[0] if found else None


def is_complete(execution: metadata_store_pb2.Execution) -> bool:
    """Ran to the end, or reused a cached result."""
    return execution.last_known_state in (STATE.COMPLETE, STATE.CACHED)


def execution_type_name(store, execution: metadata_store_pb2.Execution) -> str:
    return execution.type or store.get_execution_types_by_id([execution.type_id])[0].name


def producers(store, artifact_id: int) -> List[metadata_store_pb2.Execution]:
    """The executions that made an artifact, oldest first: those that ran, not the
    cached executions that reused it (they record it as their output too), unless
    only cached ones are recorded."""
    events = [e for e in store.get_events_by_artifact_ids([artifact_id]) if e.type in OUTPUT_EVENTS]
    if not events:
        return []
    executions = sorted(store.get_executions_by_id(sorted({e.execution_id for e in events})),
                        key=lambda e: e.id)
    return [e for e in executions if e.last_known_state != STATE.CACHED] or executions


def producer(store, artifact_id: int) -> Optional[metadata_store_pb2.Execution]:
    """The execution that made an artifact (see ``producers``); None if none did."""
    return next(iter(producers(store, artifact_id)), None)


def consumers(store, artifact_id: int, key: Optional[str] = None) -> List[metadata_store_pb2.Execution]:
    """The executions that read an artifact (under input ``key``, when given), by id."""
    events = [e for e in store.get_events_by_artifact_ids([artifact_id])
              if e.type in INPUT_EVENTS and (key is None or event_key(e) == key)]
    if not events:
        return []
    return store.get_executions_by_id(sorted({e.execution_id for e in events}))


def newest_output_for_model(store, model_id: int, type_name: str) -> Optional[metadata_store_pb2.Artifact]:
    """The newest artifact of type ``type_name`` that an execution which read the Model
    artifact ``model_id`` (input ``model``) wrote, completed or cached; None if none."""
    from ml_metadata import errors

    try:
        type_id = store.get_artifact_type(type_name).id
    except errors.NotFoundError:
        return None
    found = [artifact
             for execution in consumers(store, int(model_id), "model") if is_complete(execution)
             for artifacts in output_artifacts(store, execution.id).values()
             for artifact in artifacts if artifact.type_id == type_id]
    return max(found, key=lambda artifact: artifact.id, default=None)


# ------------------------------------------------- blessed and pushed models
def blessed_model_artifacts(store) -> List[metadata_store_pb2.Artifact]:
    """Every Model an Evaluator blessed (a ModelBlessing with ``blessed`` = 1 names
    it as ``current_model_id``) and the trusted holdout did not refuse (its blessing
    carries ``core.holdout.BLESSING_MARK``), newest first."""
    from core.holdout import BLESSING_MARK

    ids, refused = set(), set()
    for blessing in store.get_artifacts_by_type(BLESSING):
        model_id, blessed = custom(blessing, "current_model_id"), int(custom(blessing, "blessed", 0) or 0)
        if model_id is None:
            continue
        if custom(blessing, BLESSING_MARK) is None:        # an Evaluator's own blessing
            if blessed:
                ids.add(int(model_id))
        elif not blessed:                                   # refused on the trusted holdout
            refused.add(int(model_id))
    ids -= refused
    return sorted(store.get_artifacts_by_id(sorted(ids)), key=lambda a: -a.id)



@dataclasses.dataclass
class PushedModel:
    """A PushedModel artifact that was pushed (TFX's ``pushed`` = 1): the version it
    became and the directory it went to."""
    version: str
    artifact: metadata_store_pb2.Artifact
    destination: str

    def is_in(self, push_directory) -> bool:
        """Whether it was pushed into ``push_directory`` (as a version directory of it)."""
        return bool(self.destination) and (storage.canonical(os.path.dirname(self.destination))
                                           == storage.canonical(push_directory))


def pushed_models(store) -> List[PushedModel]:
    """Every PushedModel that was actually pushed, highest version first (the newest
    artifact first within a version)."""
    out = []
    for artifact in store.get_artifacts_by_type(PUSHED_MODEL):
        version = custom(artifact, "pushed_version")
        if int(custom(artifact, "pushed", 0) or 0) and version:
            out.append(PushedModel(str(version), artifact, str(custom(artifact, "pushed_destination", ""))))
    return sorted(out, key=lambda p: (version_order(p.version), p.artifact.id), reverse=True)


def pushed_model_for_version(store, version) -> Optional[PushedModel]:
    """The newest PushedModel that became ``version``; None if no push made it."""
    return next((p for p in pushed_models(store) if p.version == str(version)), None)


# --------------------------------------------------------------- promotions
PROMOTION = "tfxops.Promotion"     # tfxops promote / rollback (serving.promote)


def record_promotion(store, properties: Dict[str, str], pushed_model: Optional[metadata_store_pb2.Artifact]) -> int:
    """A promotion or rollback as a complete ``tfxops.Promotion`` execution: ``properties``
    (from_version, to_version, action, actor, ...) as string custom properties, the
    promoted version's PushedModel as input ``pushed_model`` (None: none recorded).
    Returns the execution's id."""
    from ml_metadata.errors import NotFoundError

    try:
        type_id = store.get_execution_type(PROMOTION).id
    except NotFoundError:
        type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name=PROMOTION))
    execution = metadata_store_pb2.Execution(type_id=type_id, last_known_state=STATE.COMPLETE)
    for key, value in properties.items():
        execution.custom_properties[key].string_value = "" if value is None else str(value)
    pairs = []
    if pushed_model is not None:
        event = metadata_store_pb2.Event(type=EVENT.INPUT)
        event.path.steps.add().key = "pushed_model"
        event.path.steps.add().index = 0
        pairs.append((pushed_model, event))
    execution_id, _, _ = store.put_execution(execution, pairs, [])
    return execution_id


def promotions(store) -> List[Dict[str, object]]:
    """The recorded promotions and rollbacks, newest first: their properties, ``id``
    and ``time`` (ISO)."""
    from ml_metadata.errors import NotFoundError

    try:
        executions = store.get_executions_by_type(PROMOTION)
    except NotFoundError:
        return []
    ordered = sorted(executions, key=lambda e: (e.create_time_since_epoch, e.id), reverse=True)
    return [{**properties(e), "id": e.id, "time": ms_to_iso(e.create_time_since_epoch)} for e in ordered]


# --------------------------------------------------------------- TFMA results
def _slice_name(slice_key) -> str:
    parts = [f"{k.column}={k.bytes_value.decode() if k.HasField('bytes_value') else k.int64_value if k.HasField('int64_value') else k.float_value}"
             for k in slice_key.single_slice_keys]
    return ", ".join(parts) or "overall"


def _threshold_text(threshold) -> str:
    parts = []
    if threshold.HasField("value_threshold"):
        bound = threshold.value_threshold
        if bound.HasField("lower_bound"):
            parts.append(f">= {bound.lower_bound.value:g}")
        if bound.HasField("upper_bound"):
            parts.append(f"<= {bound.upper_bound.value:g}")
    if threshold.HasField("change_threshold"):
        change = threshold.change_threshold
        if change.HasField("absolute"):
            parts.append(f"change vs baseline >= {change.absolute.value:g}")
    return " and ".join(parts) or "its threshold"


def overall_metrics(evaluation_uri: str) -> List[Dict]:
    """Overall-slice metrics of a TFMA evaluation: ``metric``, the candidate's
    ``value``, the ``baseline`` model's and their ``diff`` (None where absent)."""
    import tensorflow_model_analysis as tfma

    metrics: Dict[str, Dict] = {}
    for per_slice in tfma.load_metrics(evaluation_uri):
        if per_slice.slice_key.single_slice_keys:
            continue
        for kv in per_slice.metric_keys_and_values:
            key = kv.key
            if not kv.value.HasField("double_value"):
                continue
            entry = metrics.setdefault(key.name, {"metric": key.name, "value": None, "baseline": None,
                                                  "diff": None})
            value = kv.value.double_value.value
            if key.is_diff:
                entry["diff"] = value
            elif key.model_name == "baseline":
                entry["baseline"] = value
            else:
                entry["value"] = value
    return list(metrics.values())


def candidate_metrics(evaluation_uri: str) -> Dict[str, float]:
    """Metric name -> the evaluated (candidate) model's overall value."""
    return {m["metric"]: m["value"] for m in overall_metrics(evaluation_uri) if m["value"] is not None}


def validation_failures(evaluation_uri: str) -> List[str]:
    """The failed validations of a TFMA evaluation, as readable reasons."""
    import tensorflow_model_analysis as tfma

    reasons = []
    validation = tfma.load_validation_result(evaluation_uri)
    for per_slice in validation.metric_validations_per_slice:
        where, cross = _slice_name(per_slice.slice_key), per_slice.HasField("cross_slice_key")
        if cross:   # e.g. the fairness gate's gaps (core.evaluation)
            pair = per_slice.cross_slice_key
            where = f"{_slice_name(pair.baseline_slice_key)} vs {_slice_name(pair.comparison_slice_key)}"
        for failure in per_slice.failures:
            reasons.append(
                f"{where}: {failure.metric_key.name}"
                f"{' change' if failure.metric_key.is_diff else ''}{' difference' if cross else ''} = "
                f"{failure.metric_value.double_value.value:.4f}, needs "
                f"{_threshold_text(failure.metric_threshold)}")
    return reasons


def evaluation_details(evaluation_uri: str) -> Tuple[List[Dict], List[str]]:
    """``overall_metrics`` and ``validation_failures`` of a TFMA evaluation."""
    return overall_metrics(evaluation_uri), validation_failures(evaluation_uri)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def eval_config_thresholds(eval_config: Dict) -> Dict[str, str]:
    """Metric name -> readable thresholds, from an Evaluator's ``eval_config``
    execution property (TFMA EvalConfig as JSON): what the blessing was judged by."""
    out: Dict[str, List[str]] = {}
    for spec in (eval_config or {}).get("metrics_specs", []):
        pairs = []
        for metric in spec.get("metrics", []):
            name = metric.get("config", {}).get("name") if isinstance(metric.get("config"), dict) else None
            name = name or _snake(metric.get("class_name", ""))
            for per_slice in metric.get("per_slice_thresholds", []):
                pairs.append((name, per_slice.get("threshold", {})))
            if "threshold" in metric:
                pairs.append((name, metric["threshold"]))
        for name, threshold in spec.get("thresholds", {}).items():
            pairs.append((name, threshold))
        for name, threshold in pairs:
            texts = out.setdefault(name, [])
            value = threshold.get("value_threshold") or threshold.get("valueThreshold") or {}
            for key, op in (("lower_bound", ">="), ("lowerBound", ">="), ("upper_bound", "<="), ("upperBound", "<=")):
                if key in value:
                    bound = value[key]
                    texts.append(f"{op} {bound.get('value', bound) if isinstance(bound, dict) else bound:g}")
            change = threshold.get("change_threshold") or threshold.get("changeThreshold") or {}
            for key in ("absolute", "relative"):
                if key in change:
                    bound = change[key]
                    bound = bound.get("value", bound) if isinstance(bound, dict) else bound
                    texts.append(f"{key} change vs baseline >= {bound:g}"
                                 if "LOWER" not in str(change.get("direction", ""))
                                 else f"{key} change vs baseline <= {bound:g}")
    return {name: " and ".join(texts) for name, texts in out.items() if texts}
