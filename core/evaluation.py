"""The Evaluator's results per slice, typed: the metrics of each slice of the
sensitive features (``SliceMetrics``) and the fairness gate's failures
(``FairnessFailure``), read from a TFMA evaluation (a ModelEvaluation artifact's uri).

The metric names are those the Evaluator's ``eval_config`` gives its metrics
(``pipeline.pipeline.eval_config``, ``pipeline.fairness``): one source for the
pipeline that computes them and for the readers here (run summary, model card,
monitor). Rates are measured at the decision threshold (``Settings.decision_threshold``).

The fairness gate (``pipeline.fairness``) records its failures in the evaluation's
TFMA validation result, beside TFMA's own: a floor as a failure on the slice, a gap
as a failure on the cross slice (highest, lowest) whose value is the gap. Every
reader of the validation result (``core.mlmd.validation_failures``, lineage) sees them.
"""
import dataclasses
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

from core import features as F

# Metric names in the evaluation (TFMA's defaults for the first three and the last).
EXAMPLE_COUNT = "example_count"
AUC = "auc"
ACCURACY = "binary_accuracy"
FALSE_POSITIVE_RATE = "false_positive_rate"
FALSE_NEGATIVE_RATE = "false_negative_rate"
POSITIVE_RATE = "positive_rate"        # share of examples predicted positive
LABEL_RATE = "mean_label"              # share of examples whose label is positive
CLASS_EXAMPLES = "min_examples_per_class"   # a feature's largest slice count of its rarer label (no slice gated)

VALIDATIONS_FILE = "validations.tfrecord"   # TFMA's validation result in an evaluation
GATE_MESSAGE = "fairness gate"              # ValidationFailure.message of the gate's failures
FAIRNESS_GATE_KEY = "fairness_gate"         # the Evaluator's execution property: the gate's settings (JSON)


@dataclasses.dataclass(frozen=True)
class SliceMetrics:
    feature: str                  # the sensitive feature; "" for the overall slice
    value: str                    # the slice's value ("" for overall)
    example_count: int
    positives: int                # examples whose label is positive
    auc: Optional[float]
    accuracy: Optional[float]
    false_positive_rate: Optional[float]
    false_negative_rate: Optional[float]
    positive_rate: Optional[float]
    gated: bool                   # judged by the fairness gate (never the overall slice)

    @property
    def name(self) -> str:
        return f"{self.feature}={self.value}" if self.feature else "overall"

    @property
    def negatives(self) -> int:
        return self.example_count - self.positives

    def as_dict(self) -> Dict:
        return dict(dataclasses.asdict(self), negatives=self.negatives)


@dataclasses.dataclass(frozen=True)
class FairnessFailure:
    feature: str
    slices: Tuple[str, ...]       # the slice's value (a floor), (highest, lowest) (a gap), () (no slice gated)
    metric: str
    value: float                  # the slice's metric, or the gap
    bound: float                  # the floor (value must be >=) or the largest gap allowed (<=)

    @property
    def is_gap(self) -> bool:
        return len(self.slices) == 2

    def describe(self) -> str:
        if not self.slices:
            return (f"{self.feature}: no slice with >= {self.bound:g} examples of each label to judge "
                    f"(the most any slice has: {self.value:g})")
        if self.is_gap:
            high, low = self.slices
            return (f"{self.feature}: {self.metric} gap = {self.value:.4f} between {self.feature}={high} "
                    f"and {self.feature}={low}, needs <= {self.bound:g}")
        return f"{self.feature}={self.slices[0]}: {self.metric} = {self.value:.4f}, needs >= {self.bound:g}"

    def as_dict(self) -> Dict:
        return dict(dataclasses.asdict(self), slices=list(self.slices), text=self.describe())


# ----------------------------------------------------------------------- reading
def _key_value(single_key) -> str:
    kind = single_key.WhichOneof("kind")
    value = getattr(single_key, kind)
    return value.decode() if isinstance(value, bytes) else f"{value:g}" if kind == "float_value" else str(value)


def _candidate_values(per_slice) -> Dict[str, float]:
    """Metric name -> the evaluated model's value (not the baseline's, not diffs)."""
    values = {}
    for kv in per_slice.metric_keys_and_values:
        if kv.key.is_diff or kv.key.model_name == "baseline" or not kv.value.HasField("double_value"):
            continue
        values[kv.key.name] = kv.value.double_value.value
    return values


def _slice(feature: str, value: str, metrics: Dict[str, float], min_examples: int) -> SliceMetrics:
    """A slice's metrics; None where undefined: AUC without both labels, FPR without
    negatives, FNR without positives (TFMA reports 0 or NaN there)."""
    count = int(round(metrics.get(EXAMPLE_COUNT, 0)))
    positives = int(round(metrics.get(LABEL_RATE, 0.0) * count))
    negatives = count - positives

    def measured(name: str, defined: bool = True) -> Optional[float]:
        value = metrics.get(name)
        return value if defined and value is not None and not math.isnan(value) else None

    return SliceMetrics(
        feature=feature, value=value, example_count=count, positives=positives,
        auc=measured(AUC, positives > 0 and negatives > 0), accuracy=measured(ACCURACY),
        false_positive_rate=measured(FALSE_POSITIVE_RATE, negatives > 0),
        false_negative_rate=measured(FALSE_NEGATIVE_RATE, positives > 0),
        positive_rate=measured(POSITIVE_RATE),
        gated=bool(feature) and min(positives, negatives) >= min_examples)


def slice_metrics(evaluation_uri: str, features: Sequence[str], min_examples: int) -> List[SliceMetrics]:
    """The overall slice, then each slice of each of ``features`` (largest first per
    feature, features in the order given). A slice is gated when it holds at least
    ``min_examples`` examples of each label."""
    import tensorflow_model_analysis as tfma

    found: Dict[Tuple[str, str], SliceMetrics] = {}
    for per_slice in tfma.load_metrics(evaluation_uri):
        keys = per_slice.slice_key.single_slice_keys
        if per_slice.HasField("cross_slice_key") or len(keys) > 1:
            continue
        feature, value = (keys[0].column, _key_value(keys[0])) if keys else ("", "")
        if feature and feature not in features:
            continue
        found[(feature, value)] = _slice(feature, value, _candidate_values(per_slice), min_examples)
    order = {feature: rank for rank, feature in enumerate([""] + list(features))}
    return sorted(found.values(), key=lambda s: (order[s.feature], -s.example_count, s.value))


def recorded_gate(execution) -> Optional[Dict]:
    """The fairness gate's settings an Evaluator execution (MLMD) recorded: its
    ``fairness_gate`` property (features, decision_threshold, min_examples_per_class,
    ...); None for an Evaluator without the gate."""
    import json

    from core import mlmd

    recorded = mlmd.properties(execution).get(FAIRNESS_GATE_KEY)
    if not recorded:
        return None
    return json.loads(recorded) if isinstance(recorded, str) else dict(recorded)


def fairness_failures(evaluation_uri: str) -> List[FairnessFailure]:
    """The fairness gate's failures recorded in the evaluation's validation result."""
    import tensorflow_model_analysis as tfma

    failures = []
    for per_slice in tfma.load_validation_result(evaluation_uri).metric_validations_per_slice:
        for failure in per_slice.failures:
            if failure.message != GATE_MESSAGE:
                continue
            bounds = failure.metric_threshold.value_threshold
            if per_slice.HasField("cross_slice_key"):
                high = per_slice.cross_slice_key.baseline_slice_key.single_slice_keys[0]
                low = per_slice.cross_slice_key.comparison_slice_key.single_slice_keys[0]
                slices, bound = (_key_value(high), _key_value(low)), bounds.upper_bound.value
                feature = high.column
            else:
                key = per_slice.slice_key.single_slice_keys[0]
                slices = (_key_value(key),) if key.WhichOneof("kind") else ()
                bound, feature = bounds.lower_bound.value, key.column
            failures.append(FairnessFailure(feature, slices, failure.metric_key.name,
                                            failure.metric_value.double_value.value, bound))
    return failures


# ----------------------------------------------------------------------- writing
def _single_key(feature: str, value: str):
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2

    key = metrics_for_slice_pb2.SingleSliceKey(column=feature)
    if F.RAW_FEATURE_TYPES.get(feature) == "int":
        key.int64_value = int(value)
    elif F.RAW_FEATURE_TYPES.get(feature) == "float":
        key.float_value = float(value)
    else:
        key.bytes_value = value.encode()
    return metrics_for_slice_pb2.SliceKey(single_slice_keys=[key])


def _validation_for(failure: FairnessFailure):
    from tensorflow_model_analysis.proto import validation_result_pb2 as V

    entry = V.MetricsValidationForSlice()
    if failure.is_gap:
        entry.cross_slice_key.baseline_slice_key.CopyFrom(_single_key(failure.feature, failure.slices[0]))
        entry.cross_slice_key.comparison_slice_key.CopyFrom(_single_key(failure.feature, failure.slices[1]))
    elif failure.slices:
        entry.slice_key.CopyFrom(_single_key(failure.feature, failure.slices[0]))
    else:       # no slice gated: the feature's key without a value
        entry.slice_key.single_slice_keys.add(column=failure.feature)
    item = entry.failures.add(message=GATE_MESSAGE)
    item.metric_key.name = failure.metric
    item.metric_value.double_value.value = failure.value
    bound = item.metric_threshold.value_threshold
    (bound.upper_bound if failure.is_gap else bound.lower_bound).value = failure.bound
    return entry


def record_fairness_failures(evaluation_uri: str, failures: Sequence[FairnessFailure]) -> None:
    """Add ``failures`` to the evaluation's TFMA validation result (then not ok)."""
    import tensorflow as tf
    import tensorflow_model_analysis as tfma

    if not failures:
        return
    result = tfma.load_validation_result(evaluation_uri)
    result.validation_ok = False
    result.metric_validations_per_slice.extend(_validation_for(f) for f in failures)
    path = os.path.join(evaluation_uri, VALIDATIONS_FILE)
    with tf.io.TFRecordWriter(path + ".tmp") as writer:
        writer.write(result.SerializeToString())
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
