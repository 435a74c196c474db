"""A monitor window as MLflow runs: one run per judged version of the window
(``monitoring.result.MonitorResult``, taken as it is: this package does not import
the monitor), so the served version's runs chart drift and quality over windows.

Metrics: rows, requests and rejections, ``drift/<feature>`` and ``skew/<feature>``
(the distances the checks computed), prediction drift, quality (AUC, accuracy, AUC
drop on labelled rows), attribution NDCG, out-of-domain rate, whether the policy
triggered. Tags: the decision and its reasons, the report, the MLMD ids of the
window's record (``tfxops.mlmd.*``)."""
import datetime
import time
from typing import List

from core import mlmd
from core.config import Settings
from tracking.run_record import RunRecord


def window_records(settings: Settings, window_result) -> List[RunRecord]:
    """One record per judged version of an analysed window."""
    started, finished = _ms(window_result.started), _ms(window_result.finished)
    records = []
    for version in window_result.versions:
        record = RunRecord(key=f"window:{window_result.window}:{version.model_name}:{version.version}",
                           store=mlmd.describe_store(settings),
                           name=f"window {window_result.window} version {version.version}",
                           status="FAILED" if version.decision.failed else "FINISHED",
                           start_ms=started, end_ms=max(finished, started))
        record.tag("window", window_result.window)
        record.tag("model_name", version.model_name)
        record.tag("model_version", version.version)
        record.tag("current", "yes" if version.current else "no")
        record.tag("report", window_result.report.html if window_result.report else None)
        record.tag("window_decision", window_result.decision.action if window_result.decision else None)
        _traffic(record, version)
        _distances(record, version)
        _decision(record, version.decision)
        for key, value in sorted((version.mlmd or {}).items()):
            if isinstance(value, int) and not isinstance(value, bool):
                record.tag(f"mlmd.{key}", value)
        records.append(record)
    return records


def _traffic(record: RunRecord, version) -> None:
    rejections = version.rejections.as_dict()
    record.metric("rows", version.rows)
    record.metric("requests", version.requests)
    record.metric("rejected_requests", rejections.get("rejected"))
    record.metric("rejection_rate", rejections.get("rate"))
    if version.out_of_domain is not None:
        record.metric("out_of_domain_rate", version.out_of_domain.rate(version.out_of_domain.marked))


def _distances(record: RunRecord, version) -> None:
    for feature in version.features:
        record.metric(f"drift/{feature.name}", feature.drift)
        record.metric(f"skew/{feature.name}", feature.skew)
    record.metric("flagged_features", len(version.flagged_features))
    record.tag("flagged_features", version.flagged_features or None)
    prediction, quality = version.prediction or {}, version.quality or {}
    record.metric("prediction_drift", prediction.get("distance"))
    record.metric("prediction_served_mean", prediction.get("served_mean"))
    for key in ("auc", "accuracy", "auc_drop", "labelled_rows"):
        record.metric(f"quality/{key}", quality.get(key))
    if version.attribution is not None:
        record.metric("attribution_ndcg", version.attribution.ndcg)
    if version.bias is not None:
        record.metric("bias_flagged_slices", len(version.bias.flagged_slices))


def _decision(record: RunRecord, decision) -> None:
    record.metric("triggered", decision.triggered)
    record.metric("acted", decision.action in ("retrain", "repush") and decision.outcome is not None)
    record.tag("decision", decision.action)
    record.tag("because", decision.because)
    record.tag("reasons", decision.reasons or None)
    if decision.outcome is not None:
        record.tag("outcome", decision.outcome.to_dict())
    record.tags["mlflow.note.content"] = f"decision: {decision.action} ({decision.because})"


def _ms(iso: str) -> int:
    """Epoch milliseconds of the result's ISO time (now when it has none)."""
    try:
        return int(datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
    except (AttributeError, ValueError):
        return int(time.time() * 1000)
