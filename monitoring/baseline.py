"""What a served model version was trained on, found through MLMD (never configuration).

    PushedModel (custom property pushed_version = the served version)
      <- produced by Pusher (or a monitor re-push)  <- input Model
      <- produced by Trainer  <- inputs Schema, Examples
      Examples -> consumed by StatisticsGen -> ExampleStatistics (Split-train, Split-eval)
      Model -> consumed by Evaluator (as ``model``) -> ModelEvaluation, ModelBlessing
"""
import dataclasses
import os
from typing import Dict, List, Optional, Tuple

from ml_metadata.proto import metadata_store_pb2

from core import mlmd
from core.holdout import BLESSING_MARK


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
        return mlmd.candidate_metrics(self.evaluation_artifact.uri)

    def describe(self) -> Dict:
        return {"version": self.version, "model_id": self.model.id, "model_uri": self.model.uri,
                "pushed_model_id": self.pushed_model.id if self.pushed_model else None,
                "schema": self.schema_file, "statistics": self.statistics_file("train"),
                "evaluation": self.evaluation_artifact.uri if self.evaluation_artifact else None,
                "blessed": self.blessed}


# ------------------------------------------------------------------ lookups
def _completed_by(store, artifact_id: int, key: str, type_suffix: str) -> List[metadata_store_pb2.Execution]:
    """Completed executions of a component type (``...StatisticsGen``) that read the
    artifact under ``key``."""
    return [e for e in mlmd.consumers(store, artifact_id, key)
            if mlmd.execution_type_name(store, e).endswith(type_suffix) and mlmd.is_complete(e)]


def _training_statistics(store, examples, what: str) -> metadata_store_pb2.Artifact:
    statistics = None
    for execution in _completed_by(store, examples.id, "examples", "StatisticsGen"):
        statistics = (mlmd.output_artifacts(store, execution.id).get("statistics") or [statistics])[0]
    if statistics is None:
        raise NoLineageError(f"{what}: no StatisticsGen output for its training examples "
                             f"(Examples artifact {examples.id}).")
    return statistics


def _evaluation(store, model) -> Tuple[Optional[metadata_store_pb2.Artifact], bool]:
    """(the ModelEvaluation, whether the model was blessed) from its Evaluator (not the
    trusted holdout's, whose blessing carries ``core.holdout.BLESSING_MARK``)."""
    evaluation, blessed = None, False
    for execution in _completed_by(store, model.id, "model", "Evaluator"):
        outputs = mlmd.output_artifacts(store, execution.id)
        blessing = (outputs.get("blessing") or [None])[0]
        if blessing is not None and mlmd.custom(blessing, BLESSING_MARK) is not None:
            continue
        evaluation = (outputs.get("evaluation") or [None])[0]
        blessed = bool(blessing is not None and int(mlmd.custom(blessing, "blessed", 0) or 0))
    return evaluation, blessed


def for_model(store, model: metadata_store_pb2.Artifact, version: Optional[int] = None,
              pushed: Optional[metadata_store_pb2.Artifact] = None) -> Baseline:
    """The baseline of a Model artifact: its Trainer's schema and examples, their
    statistics, its evaluation; ``NoLineageError`` if MLMD lacks any of them."""
    what = f"model version {version}" if version is not None else f"Model artifact {model.id}"
    trainer = mlmd.producer(store, model.id)
    if trainer is None:
        raise NoLineageError(f"{what}: the Model artifact {model.id} ({model.uri}) has no producing "
                             f"Trainer execution in MLMD.")
    inputs = mlmd.input_artifacts(store, trainer.id)
    if not inputs.get("schema") or not inputs.get("examples"):
        raise NoLineageError(f"{what}: its Trainer execution {trainer.id} has no schema/examples inputs.")
    schema, examples = inputs["schema"][0], inputs["examples"][0]
    statistics = _training_statistics(store, examples, what)
    evaluation, blessed = _evaluation(store, model)
    return Baseline(version, model, pushed, schema, statistics, examples, evaluation, blessed)


def for_version(store, version: Optional[int]) -> Baseline:
    """The baseline of a served version; ``NoLineageError`` names the version otherwise."""
    if version is None:
        raise NoLineageError("the logged requests carry no model version; the server must log "
                             "the version that answered (log_metadata.model_spec.version).")
    pushed = mlmd.pushed_model_for_version(store, version)
    if pushed is None:
        raise NoLineageError(
            f"model version {version} has no lineage in MLMD: no PushedModel artifact with "
            f"pushed_version={version}. Was it pushed by this pipeline (same metadata store)?")
    execution = mlmd.producer(store, pushed.artifact.id)
    models = mlmd.input_artifacts(store, execution.id).get("model") if execution else None
    if not models:
        raise NoLineageError(f"model version {version}: PushedModel {pushed.artifact.id} has no producing "
                             f"execution with a Model input in MLMD.")
    return for_model(store, models[0], version, pushed.artifact)


def blessed_models(store) -> List[Baseline]:
    """Every model the Evaluator blessed, newest first (those whose lineage is complete)."""
    out = []
    for model in mlmd.blessed_model_artifacts(store):
        try:
            out.append(for_model(store, model))
        except NoLineageError:
            continue
    return out
