"""The tfxops TFX pipeline, wired in one function.

CsvExampleGen -> StatisticsGen -> ImportSchemaGen (curated schema) -> ExampleValidator
-> DataGate -> Transform -> Trainer -> BaselineModelResolver (the served model to
compare with) -> Evaluator (with the fairness gate, ``pipeline.fairness``) -> AtomicPusher,
which also waits for FeatureAttributor (the candidate's per-feature attributions, ``pipeline.attribution``)
and writes the version's model card (ModelCardGenerator, ``pipeline.model_card``) and its
input domain (InputDomainGen, ``pipeline.domain``) into it. It pushes only what the trusted
holdout also blesses (TrustedHoldoutExampleGen -> HoldoutEvaluator, ``pipeline.holdout``) and,
with ``infra_validation``, what the InfraValidator (``pipeline.infra_validation``) loaded in
``tfxops serve`` and queried with the warm-up requests the Pusher then writes into the version
(``pipeline.warmup``).

``create_pipeline`` takes explicit arguments, as TFX's templates do, so the same
function builds the pipeline for any TFX orchestrator: LocalDagRunner
(``pipeline.runner`` maps the settings to them) and, compiled by TFX's
KubeflowV2DagRunner, Vertex AI and Kubeflow Pipelines (``pipeline.compile``). Model code lives in ``modules/``.
"""
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Dict, List, Sequence

import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from core import features as F
from pipeline.attribution import FeatureAttributor
from pipeline.domain import InputDomainGen
from pipeline.baseline import BaselineModelResolver
from pipeline.fairness import FairnessGate, FairnessGatedEvaluator, rate_metrics
from pipeline.gate import DataGate
from pipeline.holdout import HoldoutGate, holdout_components
from pipeline.infra_validation import COMPONENT_ID as INFRA_VALIDATOR_ID, InfraValidator
from pipeline.model_card import ModelCardGenerator
from pipeline.pusher import AtomicPusher

# Node ids, used by the runner's progress display and by lineage.
NODE_ORDER = [
    "CsvExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataGate",
    "Transform", "Trainer", "baseline_model_resolver", "Evaluator", "FeatureAttributor",
    "ModelCardGenerator", "InputDomainGen", "TrustedHoldoutExampleGen", "HoldoutEvaluator", INFRA_VALIDATOR_ID,
    "Pusher",
]


def eval_config(min_auc: float, min_binary_accuracy: float, max_auc_drop: float,
                slice_features: Sequence[str], fairness: FairnessGate) -> tfma.EvalConfig:
    """TFMA: example count, AUC, binary accuracy and (``pipeline.fairness``) false
    positive, false negative, positive-prediction and positive-label rates at the
    decision threshold, overall, per slice of ``slice_features`` and per slice of
    each sensitive feature.

    TFMA's thresholds look at the overall slice only: a value threshold on AUC and
    accuracy, and a change threshold against the baseline (the served model:
    the newest version in the push directory not pushed from the candidate,
    ``pipeline.baseline``; skipped when there is none). The fairness gate judges
    the sensitive features' slices (``pipeline.fairness``, in the Evaluator).
    """
    overall = [tfma.SlicingSpec()]

    def on_overall_slice(threshold: tfma.MetricThreshold):
        return [tfma.PerSliceMetricThreshold(slicing_specs=overall, threshold=threshold)]

    auc = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_auc}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_auc_drop}))
    accuracy = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_binary_accuracy}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=F.DEFAULT_SIGNATURE,
            label_key=F.TRANSFORMED_LABEL_KEY,
            preprocessing_function_names=[F.TRANSFORM_SIGNATURE],
            # whole batches instead of Beam's batch sizes growing from 1
            inference_batch_size=1024)],
        slicing_specs=overall + [tfma.SlicingSpec(feature_keys=[key])
                                 for key in dict.fromkeys([*slice_features, *fairness.features])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=on_overall_slice(auc)),
            tfma.MetricConfig(class_name="BinaryAccuracy",
                              config=json.dumps({"threshold": fairness.decision_threshold}),
                              per_slice_thresholds=on_overall_slice(accuracy)),
            *rate_metrics(fairness.decision_threshold),
        ])],
        # Only the metrics above: not the model's compiled Keras metrics too.
        options=tfma.Options(include_default_metrics={"value": False}))


def code_fingerprint(function_paths: Sequence[str], shared_modules: Sequence[str] = ()) -> str:
    """sha256 over every .py file of the packages that hold these functions, and over
    the files of ``shared_modules`` (modules those packages import from elsewhere)."""
    digest = hashlib.sha256()
    packages = sorted({path.rsplit(".", 2)[0] for path in function_paths})
    for package in packages:
        for path in sorted(_module_file(package).parent.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for module in shared_modules:
        path = _module_file(module)
        digest.update(module.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _module_file(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise ValueError(f"cannot find the Python package '{name}' named in the settings")
    return Path(spec.origin)


def create_pipeline(*, pipeline_name: str, pipeline_root: str, data_root: str, schema_path: str,
                    preprocessing_fn: str, run_fn: str, train_steps: int, eval_steps: int,
                    hyperparameters: Dict, gate_severities: List[str], min_auc: float,
                    min_binary_accuracy: float, max_auc_drop: float, slice_features: List[str],
                    fairness: FairnessGate, trusted_holdout_dir: str, holdout: HoldoutGate, serving_model_dir: str, attribution: Dict[str, int],
                    model_card: Dict, out_of_domain_range_margin: float, model_integrity_key_env: str,
                    warmup_examples: int, infra_validation: bool, infra_validation_timeout_seconds: float,
                    warmup_redacted_features: str,
                    metadata_connection_config: metadata_store_pb2.ConnectionConfig,
                    beam_pipeline_args: List[str], enable_cache: bool) -> tfx.dsl.Pipeline:
    """The pipeline over the CSVs in ``data_root``; blessed models are pushed to
    ``serving_model_dir``/<version>. ``preprocessing_fn`` and ``run_fn`` are
    importable paths of the model code; ``attribution`` holds ``FeatureAttributor``'s
    parameters (rows, background_rows, samples, seed); ``model_card`` the model card's
    settings (``pipeline.model_card.card_config``); ``out_of_domain_range_margin`` widens
    the numeric ranges of the input domain pushed with the model (``pipeline.domain``);
    ``holdout`` the gate of the trusted holdout in ``trusted_holdout_dir`` (``pipeline.holdout``);
    ``warmup_examples`` and ``infra_validation[_timeout_seconds]`` (``pipeline.infra_validation``)."""
    example_gen = tfx.components.CsvExampleGen(input_base=data_root)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"])
    data_gate = DataGate(anomalies=example_validator.outputs["anomalies"],
                         severities=json.dumps(list(gate_severities)))
    transform, trainer = _transform_and_trainer(
        example_gen, schema_gen, preprocessing_fn, run_fn,
        tfx.proto.TrainArgs(num_steps=train_steps), tfx.proto.EvalArgs(num_steps=eval_steps),
        hyperparameters)
    transform.add_upstream_node(data_gate)

    model_resolver, evaluator, holdout_examples, holdout_evaluator = _evaluators(
        example_gen, trainer, serving_model_dir,
        eval_config(min_auc, min_binary_accuracy, max_auc_drop, slice_features, fairness), fairness,
        trusted_holdout_dir, holdout)
    attributor = FeatureAttributor(
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        code_fingerprint=code_fingerprint([], shared_modules=["core.attribution", "pipeline.attribution"]),
        **attribution).with_id("FeatureAttributor")
    card = _model_card_generator(trainer, evaluator, example_gen, statistics_gen, attributor,
                                 dict(model_card, code_fingerprint=code_fingerprint(
                                     [preprocessing_fn, run_fn], shared_modules=[F.__name__])))
    input_domain = _input_domain_gen(statistics_gen, schema_gen, out_of_domain_range_margin)
    infra = _infra_validator(trainer, example_gen, evaluator, serving_model_dir, warmup_examples,
                             infra_validation_timeout_seconds, warmup_redacted_features) if infra_validation else None
    pusher = _pusher(trainer, evaluator, example_gen, card, input_domain, holdout_evaluator, infra,
                     serving_model_dir, model_integrity_key_env, warmup_examples, warmup_redacted_features)
    pusher.add_upstream_node(attributor)   # a model is pushed with its attributions or not at all

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, data_gate,
                    transform, trainer, model_resolver, evaluator, attributor, card, input_domain,
                    holdout_examples, holdout_evaluator, *([infra] if infra else []), pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args)


def _pusher(trainer, evaluator, example_gen, card, input_domain, holdout_evaluator, infra,
            serving_model_dir: str, integrity_key_env: str, warmup_examples: int, warmup_redacted_features: str):
    """The AtomicPusher of the candidate, with everything it writes into the version or
    waits for (``infra``: the InfraValidator, None when infra validation is off)."""
    return AtomicPusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        model_card=card.outputs["model_card"], input_domain=input_domain.outputs["input_domain"],
        holdout_blessing=holdout_evaluator.outputs["blessing"], infra_blessing=infra and infra.outputs["blessing"],
        examples=example_gen.outputs["examples"], warmup_examples=warmup_examples,
        warmup_redacted_features=warmup_redacted_features, integrity_key_env=integrity_key_env,
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=serving_model_dir))).with_id("Pusher")


def _infra_validator(trainer, example_gen, evaluator, serving_model_dir: str, warmup_examples: int,
                     timeout_seconds: float, redacted_features: str):
    """The InfraValidator of the candidate (``pipeline.infra_validation``); the fingerprint of
    its code and of the serving runtime's loader is among its parameters, so a change renews it."""
    from core.integrity import model_of

    return InfraValidator(
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        model_blessing=evaluator.outputs["blessing"], model_name=model_of(serving_model_dir),
        warmup_examples=warmup_examples, timeout_seconds=timeout_seconds, redacted_features=redacted_features,
        code_fingerprint=code_fingerprint([], shared_modules=[
            "core.warmup", "pipeline.warmup", "pipeline.infra_validation", "serving.warmup", "serving.models"]),
    ).with_id(INFRA_VALIDATOR_ID)


def _input_domain_gen(statistics_gen, schema_gen, margin: float):
    """InputDomainGen over the training statistics and the curated schema; the
    fingerprint of its code is among its parameters, so a change to that code renews it."""
    return InputDomainGen(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"], margin=margin,
        code_fingerprint=code_fingerprint([], shared_modules=["core.domain", "pipeline.domain"]),
    ).with_id("InputDomainGen")


def _evaluators(example_gen, trainer, serving_model_dir: str, evaluation: tfma.EvalConfig,
                fairness: FairnessGate, holdout_dir: str, holdout: HoldoutGate):
    """The served model to compare with (BaselineModelResolver), the Evaluator (with the
    fairness gate) and the trusted holdout's ExampleGen and Evaluator (``pipeline.holdout``)."""
    model_resolver = BaselineModelResolver(
        candidate=trainer.outputs["model"], serving_model_dir=serving_model_dir,
    ).with_id("baseline_model_resolver")
    evaluator = FairnessGatedEvaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["baseline"], eval_config=evaluation, gate=fairness,
    ).with_id("Evaluator")
    holdout_examples, holdout_evaluator = holdout_components(
        holdout_dir, holdout, trainer.outputs["model"], model_resolver.outputs["baseline"], evaluation.model_specs[0])
    return model_resolver, evaluator, holdout_examples, holdout_evaluator


def _model_card_generator(trainer, evaluator, example_gen, statistics_gen, attributor, card_settings: Dict):
    """ModelCardGenerator over the candidate's artifacts; the fingerprint of the card's
    own code is among its settings, so a change to that code renews the card."""
    card_code = code_fingerprint([], shared_modules=["pipeline.model_card", "core.evaluation"])
    return ModelCardGenerator(
        model=trainer.outputs["model"], evaluation=evaluator.outputs["evaluation"],
        blessing=evaluator.outputs["blessing"], examples=example_gen.outputs["examples"],
        statistics=statistics_gen.outputs["statistics"], attributions=attributor.outputs["attributions"],
        card_settings=json.dumps(dict(card_settings, card_code_fingerprint=card_code), sort_keys=True),
    ).with_id("ModelCardGenerator")


def _transform_and_trainer(example_gen, schema_gen, preprocessing_fn: str, run_fn: str,
                           train_args, eval_args, hyperparameters: Dict):
    """Transform (no transformed copy of the data) and the Trainer that applies its graph."""
    # The code's fingerprint is part of both components' properties, so changing
    # the model code (or the feature definitions it imports) invalidates the cache
    # just as changing the data does.
    code = {"code_fingerprint": code_fingerprint([preprocessing_fn, run_fn],
                                                 shared_modules=[F.__name__])}
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=preprocessing_fn,
        custom_config=code,
        # Trainer applies the transform graph as it reads (see modules/trainer.py):
        # no transformed copy of the data, no pre/post-transform statistics.
        materialize=False,
        disable_statistics=True)
    trainer = tfx.components.Trainer(
        run_fn=run_fn,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=train_args,
        eval_args=eval_args,
        custom_config=dict(hyperparameters, **code))
    return transform, trainer
