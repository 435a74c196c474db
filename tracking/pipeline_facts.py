"""A ``tfxops run`` as an MLflow run: read from its summary (``pipeline.runner.RunSummary``,
taken as it is: this package does not import the pipeline) and its record in MLMD.

Parameters: the training and evaluation settings the run applied (steps and
hyperparameters from the Trainer that made the model, thresholds from the
Evaluator's eval_config, the fairness gate and the trusted holdout), the code and
data fingerprints. Metrics: TFMA's overall metrics (candidate, ``baseline/``,
``change/``) and per slice (``slice/<feature>:<value>/<metric>``), the blessings.
Tags (``tfxops.``): the MLMD ids of the run's context, executions and artifacts,
the outcome (status, pushed version, reasons)."""
import dataclasses
import time
from typing import Dict, Optional

from core import evaluation, mlmd
from core.config import Settings
from tracking.model_facts import ModelFacts, model_facts
from tracking.run_record import RunRecord

INFRA_BLESSING = "InfraBlessing"     # TFX's standard artifact type (the infra validation's verdict)
NO_RUN = "-"                         # RunSummary.run_id of a run that recorded nothing in MLMD
SLICE_METRICS = ("example_count", "auc", "accuracy", "false_positive_rate", "false_negative_rate",
                 "positive_rate")    # of core.evaluation.SliceMetrics


@dataclasses.dataclass(frozen=True)
class PushedVersion:
    """What this run pushed, for the registry."""
    version: int
    path: str
    mlmd_ids: Dict[str, int]         # pushed_model_id, model_id, pusher_execution_id, run_context_id
    model: Optional[ModelFacts]


@dataclasses.dataclass(frozen=True)
class PipelineRunFacts:
    record: RunRecord
    pushed: Optional[PushedVersion]


def pipeline_run_facts(settings: Settings, summary) -> PipelineRunFacts:
    """The MLflow record of one run (and what it pushed)."""
    recorded = summary.run_id != NO_RUN
    now_ms = int(time.time() * 1000)
    record = RunRecord(key=f"run:{summary.run_id}" if recorded else f"log:{summary.log_path}",
                       store=mlmd.describe_store(settings), name=f"run {summary.run_id}",
                       status="FINISHED" if summary.ok else "FAILED",
                       start_ms=now_ms - int(summary.wall_seconds * 1000), end_ms=now_ms)
    _outcome(record, settings, summary)
    _evaluation_results(record, summary)
    if not recorded:
        _settings_params(record, settings)
        return PipelineRunFacts(record, None)
    store = mlmd.open_store(settings)
    run = mlmd.find_run(store, settings.pipeline_name, summary.run_id)
    record.start_ms = run.create_time_since_epoch
    record.end_ms = record.start_ms + int(summary.wall_seconds * 1000)
    executions = {n.node_id: n for n in mlmd.run_executions(store, run, settings.pipeline_name)}
    _mlmd_ids(record, run, executions.values())
    _infra_blessing(record, store, executions.values())
    trainer = executions.get("Trainer")
    model = trainer.outputs.get("model", [None])[0] if trainer else None
    facts = model_facts(store, model.id) if model is not None else None
    if facts is None:
        _settings_params(record, settings)
    else:
        model_params(record, facts)
    evaluator = executions.get("Evaluator")
    if evaluator is not None and evaluator.outputs.get("evaluation"):
        _slices(record, evaluator)
    return PipelineRunFacts(record, _pushed(summary, executions.get("Pusher"), run, facts))


def _outcome(record: RunRecord, settings: Settings, summary) -> None:
    record.tag("pipeline", settings.pipeline_name)
    record.tag("model_name", settings.model_name)
    record.tag("status", "succeeded" if summary.ok else "failed")
    record.tag("failed_node", summary.failed_node)
    record.tag("error", summary.error)
    record.tag("pushed_version", summary.pushed_version)
    record.tag("pushed_path", summary.pushed_path)
    record.tag("not_pushed_reason", summary.not_pushed_reason)
    record.tag("cached_push_version", summary.cached_push_version)
    record.tag("serving_version", summary.serving_version)
    record.tag("log", summary.log_path)
    record.tag("metadata", summary.metadata_path)
    record.tag("pipeline_root", summary.pipeline_root)
    record.param("beam_runner", settings.beam_runner)
    record.metric("pushed", summary.pushed)
    record.metric("wall_seconds", summary.wall_seconds)
    record.tags["mlflow.note.content"] = (
        f"tfxops run {summary.run_id}: {'succeeded' if summary.ok else 'FAILED at ' + str(summary.failed_node)}; "
        f"blessed: {_yes_no(summary.blessed)}; pushed: "
        + (f"version {summary.pushed_version}" if summary.pushed else summary.not_pushed_reason or "nothing"))


def _evaluation_results(record: RunRecord, summary) -> None:
    """Overall metrics and thresholds, the blessing, the fairness gate, the trusted holdout."""
    for metric in summary.metrics:
        name = metric["metric"]
        record.metric(name, metric["value"])
        record.metric(f"baseline/{name}", metric["baseline"])
        record.metric(f"change/{name}", metric["diff"])
        record.param(f"threshold.{name}", metric.get("threshold"))
    if summary.blessed is not None:
        record.metric("blessed", summary.blessed)
        record.tag("blessed", _yes_no(summary.blessed))
        record.tag("blessing_reasons", summary.blessing_reasons or None)
    for key, value in summary.fairness_gate.items():
        record.param(f"fairness.{key}", value)
    if summary.fairness_gate:
        record.metric("fairness/failures", len(summary.fairness_failures))
    holdout = summary.holdout
    for key in ("min_auc", "max_auc_drop", "holdout_dir"):
        record.param(f"holdout.{key}", holdout.get(key))
    for key in ("auc", "baseline_auc", "examples", "passed"):
        record.metric(f"holdout/{key}", holdout.get(key))
    record.tag("holdout_reason", holdout.get("reason"))


def model_params(record: RunRecord, facts: ModelFacts) -> None:
    """The model's training parameters and fingerprints (from its lineage)."""
    record.param("train_steps", facts.train_steps)
    record.param("eval_steps", facts.eval_steps)
    for key, value in sorted(facts.hyperparameters.items()):
        record.param(f"hp.{key}", value)
    record.param("code_fingerprint", facts.code_fingerprint)
    record.param("data_fingerprint", facts.data_fingerprint)
    record.param("data_span", facts.data_span)
    record.param("data_dir", facts.data_dir)


def _settings_params(record: RunRecord, settings: Settings) -> None:
    """A run that trained nothing: the training settings it was started with."""
    record.param("train_steps", settings.train_steps)
    record.param("eval_steps", settings.eval_steps)
    for key, value in sorted(settings.hparams.items()):
        record.param(f"hp.{key}", value)
    record.param("data_dir", settings.data_dir)


def _mlmd_ids(record: RunRecord, run, executions) -> None:
    record.tag("mlmd.run_id", run.name)
    record.tag("mlmd.run_context_id", run.id)
    for node in executions:
        record.tag(f"mlmd.execution.{node.node_id}", node.execution.id)
        for key, artifacts in sorted(node.outputs.items()):
            record.tag(f"mlmd.artifact.{node.node_id}.{key}", ",".join(str(a.id) for a in artifacts))


def _infra_blessing(record: RunRecord, store, executions) -> None:
    """The infra validation's verdict, when the run has one (an ``InfraBlessing`` output)."""
    types = {t.id: t.name for t in store.get_artifact_types()}
    found = [a for node in executions for artifacts in node.outputs.values() for a in artifacts
             if types.get(a.type_id) == INFRA_BLESSING]
    if found:
        blessed = bool(int(mlmd.custom(found[-1], "blessed", 0) or 0))
        record.metric("infra_blessed", blessed)
        record.tag("infra_blessed", _yes_no(blessed))
        record.tag("infra_reason", mlmd.custom(found[-1], "reason"))


def _slices(record: RunRecord, evaluator: mlmd.NodeExecution) -> None:
    """Each single-feature slice the Evaluator computed: ``slice/<feature>:<value>/<metric>``."""
    config = mlmd.properties(evaluator.execution).get("eval_config") or {}
    features = sorted({spec["feature_keys"][0] for spec in config.get("slicing_specs", [])
                       if len(spec.get("feature_keys", [])) == 1})
    record.param("slice_features", features)
    for piece in evaluation.slice_metrics(evaluator.outputs["evaluation"][0].uri, features, 0):
        if not piece.feature:
            continue
        for name in SLICE_METRICS:
            record.metric(f"slice/{piece.feature}:{piece.value}/{name}", getattr(piece, name))


def _pushed(summary, pusher: Optional[mlmd.NodeExecution], run, facts: Optional[ModelFacts]) -> Optional[PushedVersion]:
    if not summary.pushed or pusher is None or not pusher.outputs.get("pushed_model"):
        return None
    ids = {"pushed_model_id": pusher.outputs["pushed_model"][0].id, "pusher_execution_id": pusher.execution.id,
           "run_context_id": run.id}
    if facts is not None:
        ids["model_id"] = facts.model_id
    return PushedVersion(int(summary.pushed_version), str(summary.pushed_path), ids, facts)


def _yes_no(value: Optional[bool]) -> str:
    return "" if value is None else "yes" if value else "no"

