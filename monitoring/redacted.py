"""The monitor on redacted request logs (``core.redact``): the features the logs do
not hold as sent (``log_drop_features``, ``log_hash_features``) are left out of the
checks, and the report names them.

* skew, drift and schema anomalies: each is marked not in the SERVING environment
  of the schema the window is validated against, and its statistics are removed
  from the window's, so TFDV reports neither a missing feature nor a hashed
  string where the schema says INT or FLOAT;
* decoding: a hashed feature is decoded as a string (the decoding schema's type);
* attribution drift: not judged when the model takes a redacted feature (its
  explanations would be of rows the model never saw);
* probing: the sweep statistic leaves them out (``monitoring.probing``).
* out-of-domain rates: a dropped feature's marks are removed with it from each record
  (``core.redact``), so the rates never name it; the note says so.

Retraining on feedback spans with a model input redacted is refused by
``config.load`` (``core.redact.settings_problem``).
"""
import copy
from typing import Dict, Optional

from core import features as F
from core.config import Settings
from core.redact import redacted_features
from monitoring import checks


def left_out(settings: Settings, stats, schema):
    """(window statistics, schema) without the redacted features in the SERVING checks."""
    names = redacted_features(settings)
    if not names:
        return stats, schema
    schema = copy.deepcopy(schema)
    for feature in schema.feature:
        if feature.name in names and checks.SERVING_ENV not in feature.not_in_environment:
            feature.not_in_environment.append(checks.SERVING_ENV)
    stats = copy.deepcopy(stats)
    for dataset in stats.datasets:
        kept = [f for f in dataset.features if _name(f) not in names]
        del dataset.features[:]
        dataset.features.extend(kept)
    return stats, schema


def _name(feature) -> str:
    """A FeatureNameStatistics' feature name (its path's last step, or its name)."""
    return feature.path.step[-1] if feature.path.step else feature.name


def decoding_schema(settings: Settings, schema):
    """The decoding hint with each hashed feature typed as a string (a copy)."""
    if schema is None or not settings.log_hash_features:
        return schema
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = copy.deepcopy(schema)
    for feature in schema.feature:
        if feature.name in settings.log_hash_features:
            feature.type = schema_pb2.BYTES
            feature.ClearField("int_domain")
            feature.ClearField("float_domain")
    return schema


def attribution_not_judged(settings: Settings):
    """An ``AttributionDrift`` saying why it is not judged when the model takes a
    redacted feature; None otherwise."""
    from monitoring.attribution_drift import AttributionDrift

    taken = sorted(redacted_features(settings) & set(F.MODEL_FEATURES))
    if not taken:
        return None
    return AttributionDrift(False, f"not judged: the request logs do not hold {', '.join(taken)} as sent "
                                   f"(log_drop_features / log_hash_features), which the model takes")


def summary(settings: Settings) -> Optional[Dict]:
    """What the report says about redaction: the features left out, and how."""
    if not redacted_features(settings):
        return None
    note = "left out of the skew, drift and anomaly checks: the request logs do not hold them as sent"
    if settings.log_drop_features:
        note += (". A dropped feature's out-of-domain marks are dropped with it, so the report's out-of-domain "
                 "rates never name it, while the server's out-of-domain metric (tfxops_out_of_domain_count) "
                 "still counts its calls")
    return {"dropped": sorted(settings.log_drop_features), "hashed": sorted(settings.log_hash_features),
            "note": note}


def render_html(redaction: Optional[Dict]) -> str:
    if not redaction:
        return ""
    import html

    parts = [f"dropped from the logs: {', '.join(redaction['dropped'])}" if redaction["dropped"] else "",
             f"hashed in the logs: {', '.join(redaction['hashed'])}" if redaction["hashed"] else ""]
    return (f"<div class='box warn'><b>Redacted request logs</b>: {html.escape('; '.join(p for p in parts if p))}"
            f" · {html.escape(redaction['note'])}</div>")
