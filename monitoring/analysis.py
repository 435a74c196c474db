"""One served version's window against its baseline: statistics, schema anomalies
(on the SERVING contract of the signatures it served), skew and drift, rejected
requests, prediction drift, quality on the labels that came back."""
import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from core import features as F
from core.config import Settings
from monitoring import baseline as baseline_lib, bias as bias_lib, checks, contract as contract_lib, policy
from monitoring import redacted, rejections as rejections_lib, report
from monitoring.traffic import VersionTraffic


@dataclasses.dataclass
class VersionAnalysis:
    traffic: VersionTraffic
    baseline: baseline_lib.Baseline
    current: bool                          # the version served now
    stats: object                          # the window's DatasetFeatureStatisticsList
    train_stats: object                    # the baseline's training statistics
    relaxed: List[contract_lib.Relaxed]    # what the served signatures do not take
    features: List[checks.FeatureResult]
    anomalies: object                      # the Anomalies proto (SERVING), rejections included
    rejections: rejections_lib.Summary
    alert: Optional[rejections_lib.Alert]  # the rejections are over the alert threshold
    prediction: Dict                       # ``checks.prediction_drift`` and its distribution
    quality: Dict                          # ``checks.quality``
    labelled_rows: List[Dict]              # raw rows whose labels came back (a data span)
    bias: Optional[bias_lib.BiasDrift] = None   # the sensitive slices vs the Evaluator's (``monitoring.bias``)


def analyse(settings: Settings, traffic: VersionTraffic, base: baseline_lib.Baseline, *, current: bool,
            previous_statistics: Optional[str], monitor_dir: Path) -> VersionAnalysis:
    """The version's window against ``base`` (and the previous window's statistics
    file, for drift)."""
    import tensorflow_data_validation as tfdv

    stats, schema = redacted.left_out(settings, traffic.stats.result(), base.load_schema())   # issue 16 part 6
    train_stats = base.load_statistics("train")
    previous = (tfdv.load_stats_binary(previous_statistics)
                if previous_statistics and Path(previous_statistics).is_file() else None)
    inputs = rejections_lib.signature_inputs(base.model_path)
    contract = contract_lib.effective(schema, traffic.rows_by_signature(), inputs)
    validation = checks.validate(stats, train_stats, contract.schema, previous)
    rejected, alert = _judge_rejections(settings, traffic, schema, train_stats, validation, inputs)
    prediction = _prediction(settings, traffic, base, monitor_dir)
    labels, scores, labelled_rows = _labelled_arrays(traffic.labelled)
    quality = checks.quality(labels, scores, base.evaluation_metrics(), settings.monitor_min_labelled,
                             settings.trigger_quality_drop)
    evaluation = base.evaluation_artifact.uri if base.evaluation_artifact is not None else None
    bias = bias_lib.drift(settings, traffic.slices, labels, scores, labelled_rows,
                          bias_lib.evaluator_slices(settings, evaluation))
    return VersionAnalysis(traffic, base, current, stats, train_stats, contract.relaxed, validation["features"],
                           validation["anomalies_proto"], rejected, alert, prediction, quality, labelled_rows,
                           bias=bias)


def _judge_rejections(settings: Settings, traffic: VersionTraffic, schema, train_stats, validation: Dict,
                      inputs: Dict[str, set]):
    """The version's rejected requests against its schema's SERVING features and its
    training data (``inputs``: its signatures' input names): a summary, the alert the
    policy makes of it, and the findings as SERVING anomalies (in the features and the
    Anomalies proto)."""
    baselines = {f.name: rejections_lib.training_empty_fraction(train_stats, f.name)
                 for f in checks.serving_features(schema)}
    summary = rejections_lib.summarize(traffic.rejections, traffic.requests, baselines, inputs)
    alert = policy.rejection_alert(settings, summary)
    rejections_lib.flag(summary, validation["features"], validation["anomalies_proto"], alerting=alert is not None)
    return summary, alert


def _prediction(settings: Settings, traffic: VersionTraffic, base: baseline_lib.Baseline, monitor_dir: Path) -> Dict:
    """Prediction drift, with the two output distributions for the report (the
    statistics themselves are not kept)."""
    prediction = checks.prediction_drift(traffic.served_statistics(), _eval_prediction_stats(base, monitor_dir),
                                         settings.prediction_drift_threshold)
    baseline_stats, served_stats = prediction.pop("baseline_stats", None), prediction.pop("served_stats", None)
    if prediction.get("available"):
        prediction["distribution"] = report.distribution(
            checks.feature_stats(baseline_stats, checks.PREDICTION),
            checks.feature_stats(served_stats, checks.PREDICTION))
    return prediction


def _eval_prediction_stats(base: baseline_lib.Baseline, monitor_dir: Path):
    """Statistics of the model's outputs on its evaluation split, computed once per
    model (cached under ``<monitor_dir>/baselines``)."""
    import tensorflow_data_validation as tfdv

    cache = monitor_dir / "baselines" / f"model-{base.model.id}" / "eval_predictions.pb"
    if cache.is_file():
        return tfdv.load_stats_binary(str(cache))
    values = checks.evaluation_predictions(base.model_path, base.eval_examples_pattern())
    if values.size == 0:
        return None
    stats = checks.statistics_of({checks.PREDICTION: values})
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_bytes(stats.SerializeToString())
    tmp.replace(cache)
    return stats


def _labelled_arrays(labelled) -> Tuple[np.ndarray, np.ndarray, List[Dict]]:
    """Labels (the training target), the served scores and the raw rows (with ``tips``)
    of the rows whose labels came back."""
    if not labelled:
        return np.zeros(0, np.int8), np.zeros(0), []
    from core.examples import example_to_row
    import tensorflow as tf

    rows, scores, tips, fares = [], [], [], []
    for serialized, score, tip in labelled:
        row = example_to_row(tf.train.Example.FromString(serialized))
        row[F.LABEL_KEY] = tip
        rows.append(row)
        scores.append(score)
        tips.append(tip)
        fare = row.get(F.FARE_KEY)
        fares.append(np.nan if fare is None else float(fare))
    labels = checks.labels_from_rows(np.asarray(tips, np.float64), np.asarray(fares, np.float64))
    return labels, np.asarray(scores, np.float64), rows


def save_statistics(analysis: VersionAnalysis, directory: Path) -> Path:
    """The window's statistics and anomalies in TFX's layout under ``directory`` (for
    MLMD, and as the next window's drift baseline); the statistics file."""
    stats_file = directory / "statistics" / "Split-serving" / "FeatureStats.pb"
    anomalies_file = directory / "anomalies" / "Split-serving" / "SchemaDiff.pb"
    for path in (stats_file, anomalies_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    stats_file.write_bytes(analysis.stats.SerializeToString())
    anomalies_file.write_bytes(analysis.anomalies.SerializeToString())
    return stats_file


def distributions(analysis: VersionAnalysis) -> Dict[str, Optional[Dict]]:
    """Training vs serving mass per bin of every judged feature (for the report)."""
    return {f.name: report.distribution(checks.feature_stats(analysis.train_stats, f.name),
                                        checks.feature_stats(analysis.stats, f.name)) for f in analysis.features}
