"""The checks of a window, all computed by TFDV against the training baseline.

* statistics: TFDV's own in-memory generators fed batch by batch (memory bounded
  by the sketches, not by the rows), the same generators StatisticsGen runs;
* schema anomalies: ``validate_statistics`` in the schema's SERVING environment;
* skew per feature vs the training split, drift vs the previous window, with the
  schema's comparator thresholds: L-infinity for categorical features (TFDV's
  own computation, from its top-k/rank histograms) and Jensen-Shannon divergence
  for numeric ones. The JS divergence is computed here over bins at the
  *training quantiles*, with each side's mass read from its own quantile
  histogram: TFDV's version uses the 10 equal-width buckets of the standard
  histogram, which on a heavy-tailed feature puts nearly all the mass in one
  bucket and finds two samples of the same data far apart. Every
  serving feature gets a distance; those the schema does not watch have
  threshold ``None`` and never alarm;
* prediction drift: the served outputs vs the model's outputs on its evaluation
  split (computed once per model with the SavedModel, cached);
* quality: labels that came back (feedback) joined by request id -> AUC and
  accuracy on the window vs the Evaluator's figures for that model.
"""
import copy
import dataclasses
import glob
import math
from typing import Dict, List, Optional

import numpy as np

from core import features as F

UNWATCHED = 1e9          # a comparator threshold that never fires: distance only
PREDICTION = "prediction"
SERVING_ENV = "SERVING"


# ------------------------------------------------------------------ statistics
class StatsAccumulator:
    """``tfdv.generate_statistics_in_memory`` over many record batches."""

    def __init__(self, options=None):
        import tensorflow_data_validation as tfdv
        from tensorflow_data_validation.statistics import stats_impl

        self._impl = stats_impl
        self.options = options or tfdv.StatsOptions()
        self.generators = stats_impl.get_generators(self.options, in_memory=True)
        self.accumulators = [g.create_accumulator() for g in self.generators]
        self.rows = 0

    def add(self, record_batch) -> None:
        self.accumulators = [g.add_input(a, record_batch)
                             for g, a in zip(self.generators, self.accumulators)]
        self.rows += record_batch.num_rows

    def result(self):
        return self._impl.extract_statistics_output(self.accumulators, self.generators)


def columns_batch(columns: Dict[str, np.ndarray]):
    """In-memory columns (one float per row; NaN = missing) as an Arrow RecordBatch."""
    import pyarrow as pa

    arrays, names = [], []
    for name, values in columns.items():
        values = np.asarray(values, dtype=np.float32)
        offsets = np.concatenate([[0], np.cumsum(~np.isnan(values))]).astype(np.int64)
        arrays.append(pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values[~np.isnan(values)])))
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names)


def statistics_of(columns: Dict[str, np.ndarray]):
    """Statistics of in-memory columns (one value per row; NaN = missing)."""
    acc = StatsAccumulator()
    acc.add(columns_batch(columns))
    return acc.result()


def feature_stats(stats, name: str):
    dataset = stats.datasets[0]
    for feature in dataset.features:
        if feature.path.step and ".".join(feature.path.step) == name or feature.name == name:
            return feature
    return None


def num_examples(stats) -> int:
    return int(stats.datasets[0].num_examples) if stats.datasets else 0


# ------------------------------------------------------------------ comparators
def serving_features(schema) -> List:
    return [f for f in schema.feature if SERVING_ENV not in f.not_in_environment]


def with_all_comparators(schema, kind: str):
    """A copy of ``schema`` with an L-infinity ``kind`` ('skew' or 'drift') comparator
    on every categorical serving feature (the schema's thresholds kept) and no
    comparator on numeric ones (their JS divergence is computed here)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    out = copy.deepcopy(schema)
    field = f"{kind}_comparator"
    for feature in out.feature:
        comparator = getattr(feature, field)
        if SERVING_ENV in feature.not_in_environment or feature.type != schema_pb2.BYTES:
            feature.ClearField(field)
        elif not comparator.HasField("infinity_norm"):
            comparator.infinity_norm.threshold = UNWATCHED
    return out


def quantile_cdf(feature):
    """x -> fraction of values <= x, from the feature's QUANTILES histogram."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    if feature is None or feature.WhichOneof("stats") != "num_stats":
        return None
    hist = next((h for h in feature.num_stats.histograms
                 if h.type == statistics_pb2.Histogram.QUANTILES), None)
    if hist is None or not hist.buckets:
        return None
    lows = np.array([b.low_value for b in hist.buckets])
    highs = np.array([b.high_value for b in hist.buckets])
    mass = np.array([b.sample_count for b in hist.buckets], dtype=np.float64)
    total = mass.sum()
    if total <= 0:
        return None
    mass = mass / total

    def cdf(x: float) -> float:
        width = highs - lows
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(width > 0, np.clip((x - lows) / np.where(width > 0, width, 1), 0, 1),
                            (x >= lows).astype(np.float64))
        return float((mass * part).sum())
    return cdf, lows, highs


def js_divergence(control_feature, treatment_feature) -> Optional[float]:
    """Jensen-Shannon divergence (log base 2, in [0, 1]) of two numeric features'
    value distributions, over bins at the control's quantiles."""
    a, b = quantile_cdf(control_feature), quantile_cdf(treatment_feature)
    if a is None or b is None:
        return None
    edges = np.unique(np.concatenate([a[1], a[2][-1:]]))
    points = list(edges)
    p = np.diff([0.0] + [a[0](x) for x in points] + [1.0])
    q = np.diff([0.0] + [b[0](x) for x in points] + [1.0])
    p, q = np.clip(p, 0, None), np.clip(q, 0, None)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x, y):
        nz = x > 0
        return float((x[nz] * np.log2(x[nz] / y[nz])).sum())
    return max(0.0, min(1.0, (kl(p, m) + kl(q, m)) / 2))


def watched_threshold(schema, name: str, kind: str) -> Optional[float]:
    for feature in schema.feature:
        if feature.name == name:
            comparator = getattr(feature, f"{kind}_comparator")
            if comparator.HasField("infinity_norm"):
                return comparator.infinity_norm.threshold
            if comparator.HasField("jensen_shannon_divergence"):
                return comparator.jensen_shannon_divergence.threshold
    return None


def _measurements(anomalies, kind: str) -> Dict[str, Dict]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    names = anomalies_pb2.DriftSkewInfo.Measurement.Type
    out = {}
    for info in anomalies.drift_skew_info:
        measurements = info.skew_measurements if kind == "skew" else info.drift_measurements
        for m in measurements:
            out[".".join(info.path.step)] = {"distance": m.value, "measure": names.Name(m.type)}
    return out


# ------------------------------------------------------------------ results
@dataclasses.dataclass
class FeatureResult:
    name: str
    type: str
    training_present: bool
    serving_present: bool
    skew: Optional[float] = None
    skew_measure: str = ""
    skew_threshold: Optional[float] = None
    drift: Optional[float] = None
    drift_threshold: Optional[float] = None
    anomalies: List[Dict] = dataclasses.field(default_factory=list)

    @property
    def over_skew(self) -> bool:
        return self.skew is not None and self.skew_threshold is not None and self.skew > self.skew_threshold

    @property
    def over_drift(self) -> bool:
        return (self.drift is not None and self.drift_threshold is not None
                and self.drift > self.drift_threshold)

    @property
    def error_anomalies(self) -> int:
        return sum(1 for a in self.anomalies if a["severity"] == "ERROR")

    @property
    def flagged(self) -> bool:
        return bool(self.anomalies) or self.over_skew

    def as_dict(self) -> Dict:
        d = dataclasses.asdict(self)
        d.update(over_skew=self.over_skew, over_drift=self.over_drift, flagged=self.flagged)
        return d


def _anomaly_list(anomalies) -> Dict[str, List[Dict]]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    severity = anomalies_pb2.AnomalyInfo.Severity
    kind = anomalies_pb2.AnomalyInfo.Type
    comparator_types = {kind.COMPARATOR_L_INFTY_HIGH, kind.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
                        kind.COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH}
    out: Dict[str, List[Dict]] = {}
    for key, info in anomalies.anomaly_info.items():
        reasons = [r for r in info.reason if r.type not in comparator_types]
        if not reasons:
            continue
        name = ".".join(info.path.step) or key
        out[name] = [{"severity": severity.Name(info.severity), "type": kind.Name(r.type),
                      "short": r.short_description, "description": r.description} for r in reasons]
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        out["<dataset>"] = [{"severity": severity.Name(info.severity), "type": kind.Name(r.type),
                             "short": r.short_description, "description": r.description}
                            for r in info.reason]
    return out


def validate(serving_stats, training_stats, schema, previous_stats=None) -> Dict:
    """Anomalies (SERVING environment), skew vs training, drift vs the previous window."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    anomalies = tfdv.validate_statistics(serving_stats, schema, environment=SERVING_ENV)
    skew_anomalies = tfdv.validate_statistics(
        training_stats, with_all_comparators(schema, "skew"), environment=SERVING_ENV,
        serving_statistics=serving_stats)
    skew = _measurements(skew_anomalies, "skew")
    drift = {}
    if previous_stats is not None:
        drift_anomalies = tfdv.validate_statistics(
            serving_stats, with_all_comparators(schema, "drift"), environment=SERVING_ENV,
            previous_statistics=previous_stats)
        drift = _measurements(drift_anomalies, "drift")
    for feature in serving_features(schema):
        if feature.type == schema_pb2.BYTES:
            continue
        name = feature.name
        current = feature_stats(serving_stats, name)
        distance = js_divergence(feature_stats(training_stats, name), current)
        if distance is not None:
            skew[name] = {"distance": distance, "measure": "JENSEN_SHANNON_DIVERGENCE"}
        if previous_stats is not None:
            distance = js_divergence(feature_stats(previous_stats, name), current)
            if distance is not None:
                drift[name] = {"distance": distance, "measure": "JENSEN_SHANNON_DIVERGENCE"}
    by_feature = _anomaly_list(anomalies)
    results = []
    for feature in serving_features(schema):
        name = feature.name
        s = skew.get(name, {})
        results.append(FeatureResult(
            name=name, type=schema_pb2.FeatureType.Name(feature.type),
            training_present=_present(training_stats, name), serving_present=_present(serving_stats, name),
            skew=s.get("distance"), skew_measure=s.get("measure", ""),
            skew_threshold=watched_threshold(schema, name, "skew"),
            drift=drift.get(name, {}).get("distance"),
            drift_threshold=watched_threshold(schema, name, "drift") if previous_stats is not None else None,
            anomalies=by_feature.pop(name, [])))
    for name, items in sorted(by_feature.items()):   # features the schema does not know
        results.append(FeatureResult(name=name, type="?", training_present=_present(training_stats, name),
                                     serving_present=_present(serving_stats, name), anomalies=items))
    return {"features": results, "anomalies_proto": anomalies}


def _present(stats, name: str) -> bool:
    feature = feature_stats(stats, name)
    if feature is None:
        return False
    common = _common(feature)
    return common is not None and common.num_non_missing > 0


def _common(feature):
    kind = feature.WhichOneof("stats")
    if kind is None:
        return None
    return getattr(feature, kind).common_stats


# ------------------------------------------------------------------ prediction drift
def prediction_drift(served_stats, baseline_stats, threshold: float) -> Dict:
    """JS divergence between the served outputs (``served_stats``: their statistics
    as a ``PREDICTION`` feature) and the evaluation set's."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    served = feature_stats(served_stats, PREDICTION) if served_stats.datasets else None
    served = served.num_stats if served is not None and served.WhichOneof("stats") == "num_stats" else None
    if served is None or not served.common_stats.num_non_missing or baseline_stats is None:
        return {"available": False, "reason": "no predictions logged" if served is None
                or not served.common_stats.num_non_missing else "no evaluation-set predictions for this model"}
    schema = schema_pb2.Schema()
    feature = schema.feature.add(name=PREDICTION, type=schema_pb2.FLOAT)
    feature.skew_comparator.jensen_shannon_divergence.threshold = threshold
    result = tfdv.validate_statistics(baseline_stats, schema, serving_statistics=served_stats)
    distance = _measurements(result, "skew").get(PREDICTION, {}).get("distance")
    return {"available": True, "distance": distance, "threshold": threshold,
            "over": distance is not None and distance > threshold,
            "served_mean": float(served.mean), "served_stats": served_stats,
            "baseline_stats": baseline_stats}


def evaluation_predictions(model_path: str, eval_pattern: str, max_rows: int = 20_000) -> np.ndarray:
    """The model's outputs on its evaluation split (what the Evaluator scored)."""
    import tensorflow as tf

    files = sorted(glob.glob(eval_pattern))
    if not files:
        return np.zeros(0, np.float32)
    model = tf.saved_model.load(model_path)
    fn = model.signatures[F.DEFAULT_SIGNATURE]
    input_name = list(fn.structured_input_signature[1].keys())[0]
    outputs = []
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(max_rows).batch(1024)
    for batch in dataset:
        result = fn(**{input_name: batch})
        tensor = result[F.PREDICTION_KEY] if F.PREDICTION_KEY in result else result[sorted(result)[0]]
        values = tensor.numpy().reshape(batch.shape[0], -1)[:, -1]
        outputs.append(values.astype(np.float32))
    return np.concatenate(outputs) if outputs else np.zeros(0, np.float32)


# ------------------------------------------------------------------ quality
def labels_from_rows(tips: np.ndarray, fare: np.ndarray) -> np.ndarray:
    """The training target, as Transform derives it (core.features.is_big_tipper)."""
    fare = np.where(np.isnan(fare), F.default_value(F.FARE_KEY), fare)
    return F.is_big_tipper(tips, fare).astype(np.int8)


def auc(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """ROC AUC by ranks (ties averaged); None with a single class."""
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < scores.size:             # average ranks over ties
        j = i
        while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def quality(labels: np.ndarray, scores: np.ndarray, evaluator: Dict[str, float],
            min_labelled: int, max_drop: float) -> Dict:
    n = int(labels.size)
    out = {"labelled_rows": n, "min_labelled": min_labelled,
           "evaluator_auc": evaluator.get("auc"), "evaluator_accuracy": evaluator.get("binary_accuracy")}
    if n == 0:
        out.update(available=False, reason="no labels came back for this window")
        return out
    window_auc = auc(labels, scores)
    accuracy = float(((scores >= 0.5).astype(np.int8) == labels).mean())
    out.update(available=n >= min_labelled, auc=window_auc, accuracy=accuracy)
    if n < min_labelled:
        out["reason"] = f"{n} labelled rows, fewer than {min_labelled}: figures shown, not judged"
    base = evaluator.get("auc")
    if window_auc is not None and base is not None:
        out["auc_drop"] = base - window_auc
        out["over"] = bool(n >= min_labelled and max_drop > 0 and base - window_auc > max_drop)
    else:
        out["over"] = False
    if not math.isfinite(out.get("auc_drop", 0.0) or 0.0):
        out["auc_drop"] = None
    return out
