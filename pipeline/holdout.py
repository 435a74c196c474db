"""The trusted holdout gate: a candidate is pushed only if, on curated data that no
served traffic reaches, it loses at most ``holdout_max_auc_drop`` of AUC against the
served model (with no served model: its AUC is at least ``min_auc``).

Why. A retrain (``monitoring.act``) reads the original CSVs and the spans of
labelled requests from one directory through the pipeline's CsvExampleGen, so the
Evaluator's eval split holds served traffic, and whoever controls that traffic and
its feedback labels controls part of what the candidate is judged on: labels
flipped for a group teach the candidate the flip and make it look right on the
flipped eval rows too. The holdout is judged on data that cannot hold a span.

Where the holdout comes from. ``TrustedHoldoutExampleGen``, a second CsvExampleGen
over ``trusted_holdout_dir`` (default ``data_dir``: the curated CSVs, never the
retrain directory; ``pipeline_arguments`` refuses a holdout inside a directory that
holds served traffic: request logs, feedback, the monitor's spans). Its output
config is TFX's default, as the main ExampleGen's: a hash split (train 2 : eval 1)
on the serialized example, so a row lands in the same split in both. The gate reads
its eval split only: when the training data holds the holdout's rows (the default,
and every retrain with ``retrain_include_original``), those rows are in the main
eval split too and were never trained on. A span's row (a copy of a curated row
with another label included) is another example with another hash; it can sit in
the main eval split, never in this one. The component's input does not change
between runs, so TFX caches it after the first run.

The judgement. ``HoldoutEvaluator`` is TFX's Evaluator (with ``pipeline.baseline``'s
rule for an empty baseline) over that eval split, the candidate against the
``BaselineModelResolver``'s served model: TFMA computes the example count and AUC
on the overall slice, with thresholds of the same bounds; then the executor writes
the verdict (``HoldoutGate.verdict``) into the blessing: ``blessed`` and custom
properties with the AUCs, the example count and, when refused, the reason. The
AtomicPusher (``pipeline.pusher``) does not push without a blessed holdout
blessing of the same model, and puts the reason in its PushedModel's
``not_pushed_reason``.
"""
import dataclasses
import json
from typing import Dict, List, Optional

import tensorflow as tf
import tensorflow_model_analysis as tfma
from tfx import types
from tfx import v1 as tfx
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from core import mlmd, storage
from core.config import ConfigError, Settings
from core.holdout import BLESSING_MARK
from pipeline.baseline import BaselineAwareEvaluator, BaselineAwareEvaluatorExecutor

EXAMPLE_GEN_ID = "TrustedHoldoutExampleGen"
EVALUATOR_ID = "HoldoutEvaluator"
HOLDOUT_BLESSING_KEY = "holdout_blessing"      # the AtomicPusher's optional input
HOLDOUT_GATE_KEY = "holdout_gate"              # the HoldoutEvaluator's execution property (JSON)
HOLDOUT_SPLIT = "eval"
# custom properties of the holdout's blessing
AUC_KEY, BASELINE_AUC_KEY = "holdout_auc", "holdout_baseline_auc"
EXAMPLES_KEY, REASON_KEY = "holdout_examples", "holdout_reason"


@dataclasses.dataclass(frozen=True)
class HoldoutVerdict:
    passed: bool
    auc: Optional[float]
    baseline_auc: Optional[float]     # the served model's (None: no served model)
    examples: int
    reason: str = ""                  # why it was refused ("" when passed)


@dataclasses.dataclass(frozen=True)
class HoldoutGate:
    max_auc_drop: float
    min_auc: float
    min_examples: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HoldoutGate":
        return cls(**json.loads(text))

    def verdict(self, auc: Optional[float], baseline_auc: Optional[float], examples: int) -> HoldoutVerdict:
        """Refused when the holdout is too small, the candidate's AUC is missing, is more
        than ``max_auc_drop`` below the served model's, or (no served model) below ``min_auc``."""
        def refused(why: str) -> HoldoutVerdict:
            return HoldoutVerdict(False, auc, baseline_auc, examples, f"trusted holdout: {why}")

        if examples < self.min_examples:
            return refused(f"{examples} examples in its eval split, fewer than holdout_min_examples "
                           f"{self.min_examples}")
        if auc is None:
            return refused("no AUC was computed for the candidate")
        if baseline_auc is not None and baseline_auc - auc > self.max_auc_drop:
            return refused(f"AUC {auc:.4f} vs served {baseline_auc:.4f}, drop {baseline_auc - auc:.4f} "
                           f"> holdout_max_auc_drop {self.max_auc_drop:g}")
        if baseline_auc is None and auc < self.min_auc:
            return refused(f"AUC {auc:.4f} < min_auc {self.min_auc:g} (no served model to compare with)")
        return HoldoutVerdict(True, auc, baseline_auc, examples)

    def eval_config(self, model_spec: tfma.ModelSpec) -> tfma.EvalConfig:
        """TFMA on the overall slice: the example count and AUC, with thresholds of the
        same bounds (TFMA skips the change threshold without a baseline; ``min_auc``
        then applies, in ``verdict``)."""
        overall = [tfma.SlicingSpec()]
        auc = tfma.MetricThreshold(change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -self.max_auc_drop}))
        count = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
            lower_bound={"value": self.min_examples}))
        return tfma.EvalConfig(
            model_specs=[model_spec], slicing_specs=overall,
            metrics_specs=[tfma.MetricsSpec(metrics=[
                tfma.MetricConfig(class_name="ExampleCount", per_slice_thresholds=[
                    tfma.PerSliceMetricThreshold(slicing_specs=overall, threshold=count)]),
                tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[
                    tfma.PerSliceMetricThreshold(slicing_specs=overall, threshold=auc)])])],
            options=tfma.Options(include_default_metrics={"value": False}))


def holdout_gate(settings: Settings) -> HoldoutGate:
    """The gate's bounds."""
    return HoldoutGate(max_auc_drop=settings.holdout_max_auc_drop, min_auc=settings.min_auc,
                       min_examples=settings.holdout_min_examples)


def trusted_holdout_dir(settings: Settings) -> str:
    """``trusted_holdout_dir``, else ``data_dir``; a ``ConfigError`` when it is, or lies in,
    a directory of served traffic: request logs, feedback, the monitor's (spans, retrain data)."""
    holdout_dir = settings.trusted_holdout_dir or str(settings.data_dir)
    for name, served in (("request_log_dir", settings.request_logs_path), ("feedback_dir", settings.feedback_path),
                         ("monitor_dir", settings.monitor_path)):
        if _within(holdout_dir, str(served)):
            raise ConfigError(
                f"the trusted holdout {holdout_dir} is inside {name} {served}, where served traffic is "
                f"written: set trusted_holdout_dir (or data_dir) to curated data elsewhere")
    return holdout_dir


def _within(path: str, directory: str) -> bool:
    path, directory = storage.canonical(path).rstrip("/"), storage.canonical(directory).rstrip("/")
    return path == directory or path.startswith(directory + "/")




# ------------------------------------------------------------------ the evaluator
def _overall_auc(evaluation_uri: str):
    """(candidate AUC, served model's AUC, example count) on the overall slice."""
    metrics = {m["metric"]: m for m in mlmd.overall_metrics(evaluation_uri)}
    auc, count = metrics.get("auc", {}), metrics.get("example_count", {})
    return auc.get("value"), auc.get("baseline"), int(count.get("value") or 0)


def _write_verdict(blessing: types.Artifact, verdict: HoldoutVerdict) -> None:
    """The verdict as the blessing's file, ``blessed`` property and the holdout's properties."""
    for name in (evaluator_constants.BLESSED_FILE_NAME, evaluator_constants.NOT_BLESSED_FILE_NAME):
        if tf.io.gfile.exists(f"{blessing.uri}/{name}"):
            tf.io.gfile.remove(f"{blessing.uri}/{name}")
    name = evaluator_constants.BLESSED_FILE_NAME if verdict.passed else evaluator_constants.NOT_BLESSED_FILE_NAME
    with tf.io.gfile.GFile(f"{blessing.uri}/{name}", "w") as handle:
        handle.write("")
    blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY, int(verdict.passed))
    blessing.set_int_custom_property(BLESSING_MARK, 1)
    blessing.set_int_custom_property(EXAMPLES_KEY, verdict.examples)
    blessing.set_string_custom_property(REASON_KEY, verdict.reason)
    for key, value in ((AUC_KEY, verdict.auc), (BASELINE_AUC_KEY, verdict.baseline_auc)):
        if value is not None:
            blessing.set_float_custom_property(key, value)


class HoldoutEvaluatorExecutor(BaselineAwareEvaluatorExecutor):
    """TFX's Evaluator over the holdout's eval split, then the gate's verdict."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        gate = HoldoutGate.from_json(exec_properties[HOLDOUT_GATE_KEY])
        evaluation_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.EVALUATION_KEY])
        verdict = gate.verdict(*_overall_auc(evaluation_uri))
        failures = mlmd.validation_failures(evaluation_uri)     # TFMA's, of the same bounds
        if verdict.passed and failures:
            verdict = dataclasses.replace(verdict, passed=False, reason="trusted holdout: " + "; ".join(failures))
        _write_verdict(artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY]),
                       verdict)


class HoldoutEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {**standard_component_specs.EvaluatorSpec.PARAMETERS,
                  HOLDOUT_GATE_KEY: ExecutionParameter(type=str)}


class HoldoutEvaluator(BaselineAwareEvaluator):
    """The holdout's Evaluator: the candidate against the served model on the eval
    split of ``examples`` (``TrustedHoldoutExampleGen``'s), judged by ``gate``."""

    SPEC_CLASS = HoldoutEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(HoldoutEvaluatorExecutor)

    def __init__(self, *, examples, model, baseline_model, model_spec: tfma.ModelSpec, gate: HoldoutGate):
        spec = HoldoutEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, eval_config=gate.eval_config(model_spec),
            example_splits=json_utils.dumps([HOLDOUT_SPLIT]),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing), holdout_gate=gate.to_json())
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)


def holdout_components(holdout_dir: str, gate: HoldoutGate, model, baseline_model, model_spec: tfma.ModelSpec):
    """``TrustedHoldoutExampleGen`` (a CsvExampleGen over the curated CSVs in ``holdout_dir``,
    TFX's default hash split as the main one's) and the ``HoldoutEvaluator`` of the candidate ``model``."""
    examples = tfx.components.CsvExampleGen(input_base=holdout_dir).with_id(EXAMPLE_GEN_ID)
    evaluator = HoldoutEvaluator(examples=examples.outputs["examples"], model=model, baseline_model=baseline_model,
                                 model_spec=model_spec, gate=gate).with_id(EVALUATOR_ID)
    return examples, evaluator


# ------------------------------------------------------------ readers of the verdict
def pusher_refusal(input_dict: Dict[str, List[types.Artifact]]) -> Optional[str]:
    """Why the Pusher must not push (None: it may): only when the holdout's blessing is
    wired (its key in ``input_dict``); missing, not blessed, or of another model."""
    if HOLDOUT_BLESSING_KEY not in input_dict:
        return None
    blessing = (input_dict[HOLDOUT_BLESSING_KEY] or [None])[0]
    if blessing is None:
        return "trusted holdout: no holdout blessing for this model"
    model = (input_dict.get(standard_component_specs.MODEL_KEY) or [None])[0]
    # by uri: Kubeflow's launcher rewrites the blessing's current_model_id into a name
    judged = blessing.get_string_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY)
    if model is not None and judged != model.uri:
        return f"trusted holdout: the holdout blessing judged the model at {judged}, not this model ({model.uri})"
    if blessing.get_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY) != 1:
        return blessing.get_string_custom_property(REASON_KEY) or "trusted holdout: not blessed"
    return None


def recorded_result(executions: Dict[str, mlmd.NodeExecution]) -> Dict:
    """The HoldoutEvaluator's verdict and settings, and the holdout's directory, as one
    run's executions (by node id) recorded them in MLMD; {} without a HoldoutEvaluator."""
    evaluator, example_gen = executions.get(EVALUATOR_ID), executions.get(EXAMPLE_GEN_ID)
    blessings = evaluator.outputs.get("blessing") if evaluator else None
    gate = mlmd.properties(evaluator.execution).get(HOLDOUT_GATE_KEY) if evaluator else None   # decoded JSON
    if not blessings or not gate:
        return {}
    blessing = blessings[0]
    holdout_dir = mlmd.properties(example_gen.execution).get("input_base") if example_gen else None
    return dict(gate, holdout_dir=holdout_dir, passed=bool(int(mlmd.custom(blessing, "blessed", 0) or 0)),
                auc=mlmd.custom(blessing, AUC_KEY), baseline_auc=mlmd.custom(blessing, BASELINE_AUC_KEY),
                examples=mlmd.custom(blessing, EXAMPLES_KEY), reason=mlmd.custom(blessing, REASON_KEY) or "")
