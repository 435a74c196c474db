"""TFDV's anomalies in words: one line per anomaly of a blocking severity, as the
pipeline's DataGate (``pipeline/gate.py``) and the monitor's poisoning guard
(``monitoring/poisoning.py``) name them."""
from typing import Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2


def describe(anomalies_by_split: Dict[str, anomalies_pb2.Anomalies],
             severities: List[str]) -> List[str]:
    """One line per blocking anomaly: 'split: feature: SEVERITY: reason'."""
    lines = []
    for split, anomalies in sorted(anomalies_by_split.items()):
        for feature, info in sorted(anomalies.anomaly_info.items()):
            severity = anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)
            if severity not in severities:
                continue
            reason = info.description or info.short_description
            lines.append(f"{split}: feature '{feature}': {severity}: {reason}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            severity = anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)
            if severity in severities:
                lines.append(f"{split}: dataset: {severity}: {info.description}")
    return lines
