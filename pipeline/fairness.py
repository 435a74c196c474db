"""The fairness gate: a model is blessed only if, on every gated slice of each
sensitive feature, its AUC is at least a floor and the gaps between slices in false
positive and false negative rate stay within bounds.

Sensitive features (``Settings.sensitive_features``). The taxi data holds no
attribute of the rider; the default slices are the closest it has to groups of
people treated differently: ``payment_type`` (how the rider pays: cash or card
riders, a proxy for banking access and income) and ``pickup_community_area`` (the
Chicago neighbourhood the trip starts in, a proxy for the rider's neighbourhood and
so, in a segregated city, for income and race). For your own data, set
``sensitive_features`` to the columns that name or stand for protected groups
(age band, sex, postcode or region, language...), as raw CSV columns of integer or
string type; each becomes a TFMA slicing spec, and the gate judges each of its
slices that has enough examples. Set ``decision_threshold`` to the score at which
your application acts, ``fairness_min_examples_per_class`` so that a gated slice's
rates are not noise at your data's size, and the floor and gaps to what your use
case accepts.

What is measured (TFMA's metrics, ``eval_config``): per slice of each sensitive
feature, the example count, AUC, accuracy, false positive rate (``FallOut``), false
negative rate (``MissRate``) and positive-prediction rate (``PredictedPositiveRate``)
at ``decision_threshold`` (a score above it is a positive prediction, as TFMA's
confusion matrices count), and the share of positive labels (``MeanLabel``).
TFMA 0.47.1 does not ship a ``FairnessIndicators`` metric (it is in the separate
``fairness-indicators`` package, whose metric is these same rates computed from
TFMA's binary confusion matrices).

Which slices are gated: those with at least ``fairness_min_examples_per_class``
examples of each label (AUC needs both, FPR's denominator is the negatives, FNR's
the positives). Smaller slices are reported, not gated. A sensitive feature with no
gated slice fails the gate: there is nothing to judge it by (lower the minimum or
evaluate on more data). In the taxi data, the tips
of cash trips are not recorded, so the Cash slice has almost no positive labels: it
is reported and not gated.

Why the gate is not TFMA thresholds. TFMA's per-slice thresholds apply to every
slice a spec matches: to gate only the slices big enough, the spec would have to
name their values, which are known only once the evaluation data is counted.
``Options.min_slice_size`` does not help: it drops a small slice's metrics (so they
are not reported) and TFMA's validator then fails every threshold on that slice as
"Metric not found". And a cross-slice threshold (TFMA's way to bound a gap) always
fails validation in TFMA 0.47.1: the validation result lists its cross slice as
missing even when the threshold was checked and passed. So the Evaluator's executor
(``FairnessGatedEvaluatorExecutor``) applies the gate to TFMA's per-slice metrics
after TFMA has validated its own thresholds, records each failure in the same TFMA
validation result, and writes the blessing as not blessed: the Pusher does not push
the model, and the ModelBlessing in MLMD says ``blessed`` = 0. The gate's settings
are the Evaluator's ``fairness_gate`` execution property (JSON, recorded in MLMD).
"""
import dataclasses
import json
from typing import List, Optional, Sequence

import tensorflow_model_analysis as tfma
import tensorflow as tf
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

from core import evaluation as E
from core.config import Settings
from pipeline.baseline import BaselineAwareEvaluator, BaselineAwareEvaluatorExecutor

FAIRNESS_GATE_KEY = E.FAIRNESS_GATE_KEY     # the Evaluator's execution property


@dataclasses.dataclass(frozen=True)
class FairnessGate:
    features: List[str]
    decision_threshold: float
    min_examples_per_class: int
    min_slice_auc: float
    max_fpr_gap: float
    max_fnr_gap: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FairnessGate":
        return cls(**json.loads(text))

    @classmethod
    def from_settings(cls, settings: Settings) -> "FairnessGate":
        return cls(features=list(settings.sensitive_features), decision_threshold=settings.decision_threshold,
                   min_examples_per_class=settings.fairness_min_examples_per_class,
                   min_slice_auc=settings.fairness_min_slice_auc, max_fpr_gap=settings.fairness_max_fpr_gap,
                   max_fnr_gap=settings.fairness_max_fnr_gap)

    @classmethod
    def of_evaluator(cls, execution) -> Optional["FairnessGate"]:
        """The gate an Evaluator execution (MLMD) applied (None: an Evaluator without the gate)."""
        recorded = E.recorded_gate(execution)
        return cls(**recorded) if recorded else None

    def failures(self, slices: Sequence[E.SliceMetrics]) -> List[E.FairnessFailure]:
        """Each gated slice whose AUC is below the floor; per feature and rate, the
        gap between its highest and lowest gated slice when above the bound; a
        feature with no gated slice (nothing to judge) fails."""
        found = []
        for feature in self.features:
            gated = [s for s in slices if s.feature == feature and s.gated]
            if not gated:
                most = max((min(s.positives, s.negatives) for s in slices if s.feature == feature), default=0)
                found.append(E.FairnessFailure(feature, (), E.CLASS_EXAMPLES, most, self.min_examples_per_class))
                continue
            found += [E.FairnessFailure(feature, (s.value,), E.AUC, s.auc, self.min_slice_auc)
                      for s in gated if s.auc is not None and s.auc < self.min_slice_auc]
            for metric, bound in ((E.FALSE_POSITIVE_RATE, self.max_fpr_gap),
                                  (E.FALSE_NEGATIVE_RATE, self.max_fnr_gap)):
                measured = sorted((getattr(s, metric), s.value) for s in gated
                                  if getattr(s, metric) is not None)
                if len(measured) > 1 and measured[-1][0] - measured[0][0] > bound:
                    (low, low_value), (high, high_value) = measured[0], measured[-1]
                    found.append(E.FairnessFailure(feature, (high_value, low_value), metric, high - low, bound))
        return found


def rate_metrics(decision_threshold: float) -> List[tfma.MetricConfig]:
    """TFMA's metrics for the rates at the decision threshold, named as
    ``core.evaluation`` reads them (accuracy is the Evaluator's ``BinaryAccuracy``)."""
    def at_threshold(class_name: str, name: str) -> tfma.MetricConfig:
        return tfma.MetricConfig(class_name=class_name, config=json.dumps(
            {"thresholds": [decision_threshold], "name": name}))

    return [at_threshold("FallOut", E.FALSE_POSITIVE_RATE),
            at_threshold("MissRate", E.FALSE_NEGATIVE_RATE),
            at_threshold("PredictedPositiveRate", E.POSITIVE_RATE),
            tfma.MetricConfig(class_name="MeanLabel")]


def _refuse(blessing: types.Artifact) -> None:
    """Rewrite the Evaluator's blessing as not blessed (file and property)."""
    blessed = f"{blessing.uri}/{evaluator_constants.BLESSED_FILE_NAME}"
    if tf.io.gfile.exists(blessed):
        tf.io.gfile.remove(blessed)
    with tf.io.gfile.GFile(f"{blessing.uri}/{evaluator_constants.NOT_BLESSED_FILE_NAME}", "w") as handle:
        handle.write("")
    blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                     evaluator_constants.NOT_BLESSED_VALUE)


class FairnessGatedEvaluatorExecutor(BaselineAwareEvaluatorExecutor):
    """TFX's Evaluator (with ``pipeline.baseline``'s empty baseline rule), then the
    fairness gate over TFMA's per-slice metrics."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        gate = FairnessGate.from_json(exec_properties[FAIRNESS_GATE_KEY])
        evaluation_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.EVALUATION_KEY])
        slices = E.slice_metrics(evaluation_uri, gate.features, gate.min_examples_per_class)
        failures = gate.failures(slices)
        E.record_fairness_failures(evaluation_uri, failures)
        if failures:
            _refuse(artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY]))


class FairnessGatedEvaluatorSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {**standard_component_specs.EvaluatorSpec.PARAMETERS,
                  FAIRNESS_GATE_KEY: ExecutionParameter(type=str)}


class FairnessGatedEvaluator(BaselineAwareEvaluator):
    """The pipeline's Evaluator: ``BaselineAwareEvaluator`` plus the fairness gate
    (``gate``, recorded as the ``fairness_gate`` execution property)."""

    SPEC_CLASS = FairnessGatedEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(FairnessGatedEvaluatorExecutor)

    def __init__(self, *, examples, model, baseline_model, eval_config: tfma.EvalConfig, gate: FairnessGate):
        # tfx's Evaluator.__init__ builds its own spec class; this one adds the gate.
        spec = FairnessGatedEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, eval_config=eval_config,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            fairness_gate=gate.to_json())
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
