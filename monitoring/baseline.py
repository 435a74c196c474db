"""What a served model version was trained on, found through MLMD (never configuration).

    PushedModel (custom property pushed_version = the served version)
      <- produced by Pusher (or a monitor re-push)  <- input Model
      <- produced by Trainer  <- inputs Schema, Examples
      Examples -> consumed by StatisticsGen -> ExampleStatistics (Split-train, Split-eval)
      Model -> consumed by Evaluator (as ``model``) -> ModelEvaluation, ModelBlessing
"""
import dataclasses
import os
from typing import Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2

from core import mlmd

INPUT_TYPES = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
OUTPUT_TYPES = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


class NoLineageError(LookupError):
    """A served model version whose training lineage is not in MLMD."""


@dataclasses.dataclass
class Baseline:
    version: Optional[int]
    model: metadata_store_pb2.Artifact
    pushed_model: Optional[metadata_store_pb2.Artifact]
    schema_artifact: metadata_store_pb2.Artifact
    statistics_artifact: metadata_store_pb2.Artifact
    examples_artifact: metadata_store_pb2.Artifact
    evaluation_artifact: Optional[metadata_store_pb2.Artifact]
    blessed: bool

    @property
    def model_path(self) -> str:
        from tfx.utils import path_utils
        return path_utils.serving_model_path(self.model.uri)

    @property
    def schema_file(self) -> str:
        return os.path.join(self.schema_artifact.uri, "schema.pbtxt")

    def statistics_file(self, split: str = "train") -> str:
        return os.path.join(self.statistics_artifact.uri, f"Split-{split}", "FeatureStats.pb")

    def eval_examples_pattern(self) -> str:
        return os.path.join(self.examples_artifact.uri, "Split-eval", "*")

    def load_schema(self):
        import tensorflow_data_validation as tfdv
        return tfdv.load_schema_text(self.schema_file)

    def load_statistics(self, split: str = "train"):
        import tensorflow_data_validation as tfdv
        return tfdv.load_stats_binary(self.statistics_file(split))

    def evaluation_metrics(self) -> Dict[str, float]:
        """The Evaluator's overall-slice metrics of this model (not the baseline's)."""
        if self.evaluation_artifact is None:
            return {}
        import tensorflow_model_analysis as tfma

        out = {}
        for per_slice in tfma.load_metrics(self.evaluation_artifact.uri):
            if per_slice.slice_key.single_slice_keys:
                continue
            for kv in per_slice.metric_keys_and_values:
                key = kv.key
                if key.is_diff or key.model_name == "baseline" or not kv.value.HasField("double_value"):
                    continue
                out[key.name] = kv.value.double_value.value
        return out

    def describe(self) -> Dict:
        return {"version": self.version, "model_id": self.model.id, "model_uri": self.model.uri,
                "pushed_model_id": self.pushed_model.id if self.pushed_model else None,
                "schema": self.schema_file, "statistics": self.statistics_file("train"),
                "evaluation": self.evaluation_artifact.uri if self.evaluation_artifact else None,
                "blessed": self.blessed}


# ------------------------------------------------------------------ graph helpers
def _events(store, artifact_id: int, kinds) -> List[metadata_store_pb2.Event]:
    return [e for e in store.get_events_by_artifact_ids([artifact_id]) if e.type in kinds]


def _key(event) -> str:
    return next((s.key for s in event.path.steps if s.HasField("key")), "")


def producer(store, artifact_id: int) -> Optional[metadata_store_pb2.Execution]:
    events = _events(store, artifact_id, OUTPUT_TYPES)
    if not events:
        return None
    return store.get_executions_by_id([events[-1].execution_id])[0]


def execution_artifacts(store, execution_id: int, kinds) -> Dict[str, List[metadata_store_pb2.Artifact]]:
    events = [e for e in store.get_events_by_execution_ids([execution_id]) if e.type in kinds]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    out: Dict[str, List] = {}
    for event in events:
        out.setdefault(_key(event), []).append(artifacts[event.artifact_id])
    return out


def consumers(store, artifact_id: int, key: Optional[str] = None) -> List[metadata_store_pb2.Execution]:
    events = [e for e in _events(store, artifact_id, INPUT_TYPES) if key is None or _key(e) == key]
    if not events:
        return []
    return store.get_executions_by_id(sorted({e.execution_id for e in events}))


def _type_name(store, execution) -> str:
    return store.get_execution_types_by_id([execution.type_id])[0].name


def _complete(execution) -> bool:
    return execution.last_known_state in (metadata_store_pb2.Execution.COMPLETE,
                                          metadata_store_pb2.Execution.CACHED)


# ------------------------------------------------------------------ lookups
def pushed_model_for_version(store, version: int) -> Optional[metadata_store_pb2.Artifact]:
    found = [a for a in store.get_artifacts_by_type(mlmd.PUSHED_MODEL)
             if str(mlmd.custom(a, "pushed_version", "")) == str(version)
             and int(mlmd.custom(a, "pushed", 0) or 0) == 1]
    return max(found, key=lambda a: a.id) if found else None


def for_model(store, model: metadata_store_pb2.Artifact, version: Optional[int] = None,
              pushed: Optional[metadata_store_pb2.Artifact] = None) -> Baseline:
    what = f"model version {version}" if version is not None else f"Model artifact {model.id}"
    trainer = producer(store, model.id)
    if trainer is None:
        raise NoLineageError(f"{what}: the Model artifact {model.id} ({model.uri}) has no producing "
                             f"Trainer execution in MLMD.")
    inputs = execution_artifacts(store, trainer.id, INPUT_TYPES)
    if not inputs.get("schema") or not inputs.get("examples"):
        raise NoLineageError(f"{what}: its Trainer execution {trainer.id} has no schema/examples inputs.")
    schema, examples = inputs["schema"][0], inputs["examples"][0]
    statistics = None
    for execution in consumers(store, examples.id, "examples"):
        if _type_name(store, execution).endswith("StatisticsGen") and _complete(execution):
            outs = execution_artifacts(store, execution.id, OUTPUT_TYPES).get("statistics")
            if outs:
                statistics = outs[0]
    if statistics is None:
        raise NoLineageError(f"{what}: no StatisticsGen output for its training examples "
                             f"(Examples artifact {examples.id}).")
    evaluation, blessed = None, False
    for execution in consumers(store, model.id, "model"):
        if _type_name(store, execution).endswith("Evaluator") and _complete(execution):
            outs = execution_artifacts(store, execution.id, OUTPUT_TYPES)
            evaluation = (outs.get("evaluation") or [None])[0]
            blessing = (outs.get("blessing") or [None])[0]
            blessed = bool(blessing is not None and int(mlmd.custom(blessing, "blessed", 0) or 0))
    return Baseline(version, model, pushed, schema, statistics, examples, evaluation, blessed)


def for_version(store, version: Optional[int]) -> Baseline:
    """The baseline of a served version; ``NoLineageError`` names the version otherwise."""
    if version is None:
        raise NoLineageError("the logged requests carry no model version; the server must log "
                             "the version that answered (log_metadata.model_spec.version).")
    pushed = pushed_model_for_version(store, version)
    if pushed is None:
        raise NoLineageError(
            f"model version {version} has no lineage in MLMD: no PushedModel artifact with "
            f"pushed_version={version}. Was it pushed by this pipeline (same metadata store)?")
    execution = producer(store, pushed.id)
    models = execution_artifacts(store, execution.id, INPUT_TYPES).get("model") if execution else None
    if not models:
        raise NoLineageError(f"model version {version}: PushedModel {pushed.id} has no producing "
                             f"execution with a Model input in MLMD.")
    return for_model(store, models[0], version, pushed)


def blessed_models(store) -> List[Baseline]:
    """Every model the Evaluator blessed, newest first (those whose lineage is complete)."""
    ids = set()
    for blessing in store.get_artifacts_by_type("ModelBlessing"):
        if int(mlmd.custom(blessing, "blessed", 0) or 0):
            model_id = mlmd.custom(blessing, "current_model_id")
            if model_id is not None:
                ids.add(int(model_id))
    out = []
    for model in sorted(store.get_artifacts_by_id(sorted(ids)), key=lambda a: -a.id):
        try:
            out.append(for_model(store, model))
        except NoLineageError:
            continue
    return out
