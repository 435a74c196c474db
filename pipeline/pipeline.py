"""The tfxops TFX pipeline, wired in one function.

CsvExampleGen -> StatisticsGen -> ImportSchemaGen (curated schema) -> ExampleValidator
-> DataGate -> Transform -> Trainer -> Resolver (baseline model) -> Evaluator
-> AtomicPusher.

Every setting comes from ``core.config.Settings``; model code lives in
``modules/``. The same function builds the pipeline for any TFX runner
(LocalDagRunner here; Kubeflow or Dataflow with other ``beam_args`` and metadata).
"""
import hashlib
import importlib.util
import json
from pathlib import Path

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from core import features as F
from pipeline.baseline import BaselineModelStrategy
from pipeline.gate import DataGate
from pipeline.pusher import AtomicPusher
from core import mlmd
from core.config import Settings

# Node ids, used by the runner's progress display and by lineage.
NODE_ORDER = [
    "CsvExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataGate",
    "Transform", "Trainer", "baseline_model_resolver", "Evaluator", "Pusher",
]


def eval_config(settings: Settings) -> tfma.EvalConfig:
    """TFMA: AUC, binary accuracy and example count, overall and per slice.

    Blessing looks at the overall slice only: a value threshold on AUC and
    accuracy, and a change threshold against the baseline (the latest blessed
    model; skipped when there is none yet). Per-slice metrics are reported.
    """
    overall = [tfma.SlicingSpec()]

    def gate(threshold: tfma.MetricThreshold):
        return [tfma.PerSliceMetricThreshold(slicing_specs=overall, threshold=threshold)]

    auc = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": settings.min_auc}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -settings.max_auc_drop}))
    accuracy = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(
            lower_bound={"value": settings.min_binary_accuracy}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name="serving_default",
            label_key=F.TRANSFORMED_LABEL_KEY,
            preprocessing_function_names=["transform_features"],
            # whole batches instead of Beam's batch sizes growing from 1
            inference_batch_size=1024)],
        slicing_specs=overall + [
            tfma.SlicingSpec(feature_keys=[key]) for key in settings.slice_features],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=gate(auc)),
            tfma.MetricConfig(class_name="BinaryAccuracy", per_slice_thresholds=gate(accuracy)),
        ])],
        # Only the metrics above: not the model's compiled Keras metrics too.
        options=tfma.Options(include_default_metrics={"value": False}))


def code_fingerprint(function_paths) -> str:
    """sha256 over every .py file of the packages that hold these functions."""
    digest = hashlib.sha256()
    packages = sorted({path.rsplit(".", 2)[0] for path in function_paths})
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            raise ValueError(f"cannot find the Python package '{package}' named in the settings")
        for path in sorted(Path(spec.origin).parent.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def create_pipeline(settings: Settings, data_dir: str = None) -> tfx.dsl.Pipeline:
    example_gen = tfx.components.CsvExampleGen(input_base=data_dir or settings.data_dir)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=settings.schema_path)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"])
    data_gate = DataGate(anomalies=example_validator.outputs["anomalies"],
                         severities=json.dumps(list(settings.gate_severities)))

    # The code's fingerprint is part of both components' properties, so changing
    # the model code invalidates the cache just as changing the data does.
    code = {"code_fingerprint": code_fingerprint([settings.preprocessing_fn, settings.run_fn])}
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=settings.preprocessing_fn,
        custom_config=code,
        # Trainer applies the transform graph as it reads (see modules/trainer.py):
        # no transformed copy of the data, no pre/post-transform statistics.
        materialize=False,
        disable_statistics=True)
    transform.add_upstream_node(data_gate)

    trainer = tfx.components.Trainer(
        run_fn=settings.run_fn,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=settings.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=settings.eval_steps),
        custom_config=dict(settings.hparams, **code))

    model_resolver = tfx.dsl.Resolver(
        strategy_class=BaselineModelStrategy,
        candidate=trainer.outputs["model"],
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("baseline_model_resolver")

    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config(settings))

    pusher = AtomicPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=str(settings.model_push_dir)))).with_id("Pusher")

    return tfx.dsl.Pipeline(
        pipeline_name=settings.pipeline_name,
        pipeline_root=str(settings.pipeline_root_path),
        components=[example_gen, statistics_gen, schema_gen, example_validator, data_gate,
                    transform, trainer, model_resolver, evaluator, pusher],
        enable_cache=settings.enable_cache,
        metadata_connection_config=mlmd.connection_config(settings),
        beam_pipeline_args=list(settings.beam_args))
