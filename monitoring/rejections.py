"""Rejected requests: how many, why, and which features the clients stopped sending.

The server and the proxies log a call they refuse as a PredictionLog with what
could be decoded of the request and an ``__error__`` output [code, message]
(``core.request_log``, ``rejected_record``). ``window.decode_records`` puts those
records in a chunk's ``rejected`` part; here, per (model, version):

* ``RowsDecoder`` reads their rows with the schema's types (tfx_bsl, C++); rows
  that are not tf.Examples are dropped, and a value of another type than the
  schema's is removed from its row (it is what the server refused; the causes
  name it), so the rows can join the window's statistics: the skew and
  anomalies of what clients *sent* are judged with the rest;
* ``Tally`` counts the requests, their causes (code and message with the
  variable parts taken out: at most ``MAX_CAUSES`` groups) and, per request, the
  set of features its rows all carry non-empty (at most ``MAX_SHAPES`` distinct
  sets): enough to tell, for any feature, how many rejected requests lacked it
  and since when, with bounded memory whatever the clients send. It merges
  across decoding workers;
* ``summarize`` reads it against the served model's schema (SERVING
  environment) and ``flag`` records the findings as SERVING anomalies, in the
  version's results and in TFDV's Anomalies proto (``CUSTOM_VALIDATION``).

Rejected calls that name no model version (an unknown model, nothing loaded)
are tallied for the window as a whole; their rows join no statistics.
"""
import dataclasses
import re
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from monitoring.contract import takes

MAX_CAUSES = 20
MAX_SHAPES = 64
# A feature is reported missing when rejected requests lack it (or send it empty)
# more often than the training data does, by this much and by 3 standard errors.
MIN_EXCESS = 0.1
EXAMPLE_CHARS = 600                     # an example message per cause: both ends kept
OTHER = "(other causes)"
ANOMALY_TYPE = "REJECTED_REQUESTS"
DATASET = "<rejected requests>"
# TFDV anomalies that a feature missing from rejected requests explains
PRESENCE_TYPES = {"SCHEMA_MISSING_COLUMN", "FEATURE_TYPE_LOW_FRACTION_PRESENT", "FEATURE_TYPE_LOW_NUMBER_PRESENT",
                  "FEATURE_TYPE_NOT_PRESENT", "FEATURE_TYPE_LOW_NUMBER_VALUES", "FEATURE_TYPE_NO_VALUES",
                  "INVALID_FEATURE_SHAPE"}
_KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}     # schema_pb2.FeatureType -> Feature kind


# ------------------------------------------------------------------ rows
class RowsDecoder:
    """Rows of rejected requests -> an Arrow RecordBatch with the schema's features and types."""

    def __init__(self, schema):
        from tfx_bsl.coders import example_coder

        self.names = [f.name for f in schema.feature]
        self.kinds = {f.name: _KINDS.get(f.type) for f in schema.feature}
        self._typed = example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString())

    def decode(self, rows: List[bytes]):
        """(batch or None, indices of the rows it holds)."""
        if not rows:
            return None, np.zeros(0, np.int64)
        try:
            return self._typed.DecodeBatch(rows), np.arange(len(rows))
        except RuntimeError:          # not a tf.Example, or a value of another type
            pass
        kept, clean = [], []
        for i, raw in enumerate(rows):
            row = self._sanitized(raw)
            if row is not None:
                kept.append(i)
                clean.append(row)
        return (self._typed.DecodeBatch(clean) if clean else None), np.asarray(kept, np.int64)

    def _sanitized(self, raw: bytes) -> Optional[bytes]:
        from google.protobuf.message import DecodeError
        from tensorflow.core.example import example_pb2

        try:
            example = example_pb2.Example.FromString(raw)
        except DecodeError:
            return None
        features = example.features.feature
        for name in [n for n, f in features.items()
                     if f.WhichOneof("kind") not in (None, self.kinds.get(n, f.WhichOneof("kind")))]:
            del features[name]
        return example.SerializeToString()


def _present(batch, names: List[str]) -> np.ndarray:
    """rows x names: the row carries the feature with at least one value."""
    import pyarrow.compute as pc

    out = np.zeros((batch.num_rows, len(names)), dtype=bool)
    columns = set(batch.schema.names)
    for j, name in enumerate(names):
        if name in columns:
            lengths = pc.list_value_length(batch.column(name)).fill_null(0)
            out[:, j] = lengths.to_numpy(zero_copy_only=False) > 0
    return out


def for_statistics(batch):
    """The batch without all-null columns (features no row carries), as the
    answered rows are fed to the statistics."""
    import pyarrow as pa

    keep = [i for i, c in enumerate(batch.columns) if c.null_count < batch.num_rows]
    return pa.RecordBatch.from_arrays([batch.column(i) for i in keep], [batch.schema.names[i] for i in keep])


# ------------------------------------------------------------------ tally
def pattern(message: str) -> str:
    """A message with what varies per request taken out: echoed JSON (whole, or cut
    short with "..." as TF Serving's messages quote it), quoted values, numbers."""
    text = re.sub(r"\{.*(\}|\.\.\.)", "{…}", message, flags=re.S)
    text = re.sub(r'"[^"]{0,200}"', '"…"', text)
    text = re.sub(r"\d+", "N", text)
    return text if len(text) <= 300 else text[:300] + "…"


@dataclasses.dataclass
class Tally:
    rejected: int = 0                      # rejected requests
    with_rows: int = 0                     # ... whose rows could be read (at least one)
    rows: int = 0                          # rows read
    first: Optional[int] = None            # unix seconds
    last: Optional[int] = None
    causes: Dict[Tuple[str, str], List] = dataclasses.field(default_factory=dict)   # -> [n, first, example]
    # (signature, features every row carries non-empty) -> [requests, first]
    shapes: Dict[Tuple[str, Tuple[str, ...]], List[int]] = dataclasses.field(default_factory=dict)
    other_shapes: List = dataclasses.field(default_factory=lambda: [0, None, {}])   # [n, first, {name: n}]
    rows_by_signature: Dict[str, int] = dataclasses.field(default_factory=dict)     # rows read, per signature

    def add(self, part, decoder: Optional[RowsDecoder]):
        """Count a chunk's ``window.Rejected`` part; the batch of its readable rows (for
        the statistics), or None."""
        stamps = np.asarray(part.timestamps, np.int64)
        self.rejected += len(stamps)
        if len(stamps):
            self.first = _min(self.first, int(stamps.min()))
            self.last = max(self.last or 0, int(stamps.max()))
        for code, message, stamp in zip(part.codes, part.messages, part.timestamps):
            self._cause(code, message, stamp, 1)
        if decoder is None or not part.rows:
            return None
        batch, kept = decoder.decode(part.rows)
        if batch is None:
            return None
        request = np.repeat(np.arange(len(stamps)), part.row_counts)[kept]
        starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
        present = np.logical_and.reduceat(_present(batch, decoder.names), starts, axis=0)
        signatures = sorted(set(part.signatures))
        ids = np.asarray([signatures.index(s) for s in part.signatures], np.int64)
        self._shapes(np.column_stack([ids[request[starts]], present]), stamps[request[starts]], decoder.names,
                     signatures)
        self._count_rows(signatures, ids[request])
        self.with_rows += len(starts)
        self.rows += batch.num_rows
        return batch

    def _count_rows(self, signatures: List[str], per_row: np.ndarray) -> None:
        """``per_row``: the signature index of each row read."""
        for i, n in enumerate(np.bincount(per_row, minlength=len(signatures)).tolist()):
            if n:
                self.rows_by_signature[signatures[i]] = self.rows_by_signature.get(signatures[i], 0) + n

    def _cause(self, code: str, message: str, first: int, n: int) -> None:
        example = message if len(message) <= EXAMPLE_CHARS else \
            message[:EXAMPLE_CHARS // 2] + " … " + message[-EXAMPLE_CHARS // 2:]    # keep both ends
        self._add_cause((code[:64], pattern(message)), n, first, example)

    def _add_cause(self, key: Tuple[str, str], n: int, first: int, example: str) -> None:
        if key not in self.causes and len(self.causes) >= MAX_CAUSES:
            key = ("", OTHER)
        entry = self.causes.setdefault(key, [0, first, example])
        entry[0] += n
        entry[1] = _min(entry[1], first)

    def _shapes(self, keys: np.ndarray, stamps: np.ndarray, names: List[str], signatures: List[str]) -> None:
        """``keys``: per request, its signature's index and whether each feature is present."""
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for k, row in enumerate(unique):
            mine = inverse == k
            present = tuple(n for n, p in zip(names, row[1:]) if p)
            self._shape((signatures[row[0]][:256], present), int(mine.sum()), int(stamps[mine].min()))

    def _shape(self, key: Tuple[str, Tuple[str, ...]], n: int, first: int) -> None:
        names = key[1]
        entry = self.shapes.get(key)
        if entry is None and len(self.shapes) >= MAX_SHAPES:
            other = self.other_shapes
            other[0] += n
            other[1] = _min(other[1], first)
            for name in names:
                other[2][name] = other[2].get(name, 0) + n
            return
        entry = self.shapes.setdefault(key, [0, first])
        entry[0] += n
        entry[1] = _min(entry[1], first)

    def merge(self, other: "Tally") -> None:
        self.rejected += other.rejected
        self.with_rows += other.with_rows
        self.rows += other.rows
        self.first = _min(self.first, other.first)
        self.last = max(self.last or 0, other.last or 0) or None
        for key, (n, first, example) in other.causes.items():
            self._add_cause(key, n, first, example)
        for key, (n, first) in other.shapes.items():
            self._shape(key, n, first)
        for name, n in other.rows_by_signature.items():
            self.rows_by_signature[name] = self.rows_by_signature.get(name, 0) + n
        if other.other_shapes[0]:
            mine = self.other_shapes
            mine[0] += other.other_shapes[0]
            mine[1] = _min(mine[1], other.other_shapes[1])
            for name, n in other.other_shapes[2].items():
                mine[2][name] = mine[2].get(name, 0) + n

    def lacking(self, name: str, expects) -> Tuple[int, int, Optional[int]]:
        """Of the rejected requests with readable rows whose signature takes ``name``
        (``expects(signature, name)``): how many lack it, how many there are, and the
        first lacking one's time. (Past MAX_SHAPES, requests count as expecting it,
        and the overflow's first time stands for theirs.)"""
        n, expected, first = 0, 0, None
        for (signature, names), (count, since) in self.shapes.items():
            if expects(signature, name):
                expected += count
                if name not in names:
                    n, first = n + count, _min(first, since)
        other_n, other_first, present = self.other_shapes
        expected += other_n
        if other_n - present.get(name, 0) > 0:
            n, first = n + other_n - present.get(name, 0), _min(first, other_first)
        return n, expected, first


def _min(a, b):
    return b if a is None else a if b is None else min(a, b)


# ------------------------------------------------------------------ summary
@dataclasses.dataclass
class MissingFeature:
    feature: str
    requests: int                 # rejected requests whose rows lack it (or send it empty)
    fraction: float               # of the rejected requests with readable rows whose signature takes it
    since: str                    # the first of them
    of: int                       # rejected requests with readable rows whose signature takes it
    training_fraction: float      # examples of the training split without a value for it

    def line(self) -> str:
        return f"{self.feature} missing in {percent(self.fraction)} of rejected requests since {self.since}"

    def detail(self) -> str:
        return f"{self.line()} (training examples without it: {percent(self.training_fraction)})"


@dataclasses.dataclass
class Summary:
    requests: int                 # every request: answered and rejected
    rejected: int
    rate: float
    with_rows: int
    rows: int
    first: Optional[str]
    last: Optional[str]
    causes: List[Dict]
    missing_features: List[MissingFeature]

    def as_dict(self) -> Dict:
        return dict(dataclasses.asdict(self), line=self.line())

    def line(self) -> str:
        head = f"rejected: {self.rejected} of {self.requests} requests ({percent(self.rate)})"
        if self.missing_features:
            return head + ": " + ", ".join(m.line() for m in self.missing_features[:3])
        if self.causes:
            top = self.causes[0]
            return head + f": {top['code']} {top['pattern'][:80]}"
        return head


@dataclasses.dataclass
class Alert:
    """Rejections over the policy's thresholds (``policy.rejection_alert``), formatted
    once: the finding (``finding``) and the finding with the policy (``reason``)."""
    rejected: int
    requests: int                 # every request: answered and rejected
    rate: float
    missing_features: List[MissingFeature]
    causes: List[Dict]            # as in Summary: the most frequent first
    rate_threshold: float         # alert_rejection_rate
    min_rejected: int             # alert_min_rejected
    scope: str = ""               # which requests, when not a version's ("before any model version was chosen")

    @classmethod
    def of(cls, summary: Summary, rate_threshold: float, min_rejected: int, scope: str = "") -> "Alert":
        return cls(summary.rejected, summary.requests, summary.rate, summary.missing_features, summary.causes,
                   rate_threshold, min_rejected, scope)

    def finding(self) -> str:
        """The finding in words ("the server rejected 1500 of 1500 requests (100%): trip_miles
        missing in ..."); without a missing feature to name, the top cause."""
        head = (f"the server rejected {self.rejected} of {self.requests} requests ({percent(self.rate)})"
                + (f" {self.scope}" if self.scope else ""))
        if self.missing_features:
            return head + ": " + "; ".join(m.line() for m in self.missing_features[:3])
        if self.causes:
            top = self.causes[0]
            return head + f": top cause {top['code']}: {top['pattern'][:200]} ({percent(top['fraction'])})"
        return head

    def reason(self) -> str:
        return (f"{self.finding()} (policy: alert_rejection_rate={self.rate_threshold:g}, "
                f"alert_min_rejected={self.min_rejected})")


def percent(x: float) -> str:
    return f"{x:.0%}" if x == 0 or x >= 0.1 else f"{x:.1%}"


def training_empty_fraction(train_stats, name: str) -> float:
    """Share of the training examples without a value for ``name`` (missing or empty)."""
    from monitoring.checks import feature_stats

    examples = train_stats.datasets[0].num_examples if train_stats.datasets else 0
    feature = feature_stats(train_stats, name)
    kind = feature.WhichOneof("stats") if feature is not None else None
    if not examples or kind is None:
        return 1.0 if examples else 0.0
    common = getattr(feature, kind).common_stats
    if common.max_num_values <= 1:                         # scalars: one value or none
        return max(0.0, 1.0 - common.tot_num_values / examples)
    empty = sum(b.sample_count for b in common.num_values_histogram.buckets if b.high_value < 1)
    return min(1.0, (common.num_missing + empty) / examples)


def _excess(fraction: float, baseline: float, n: int) -> bool:
    return fraction - baseline > max(MIN_EXCESS, 3 * (baseline * (1 - baseline) / max(1, n)) ** 0.5)


def signature_inputs(model_path: str) -> Dict[str, set]:
    """Input names per signature of a SavedModel, read from its saved_model.pb (no graph
    is loaded); {} if it cannot be read."""
    import os
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        with open(os.path.join(model_path, "saved_model.pb"), "rb") as handle:
            model = saved_model_pb2.SavedModel.FromString(handle.read())
    except Exception:  # noqa: BLE001 - a model whose files are gone: every feature expected
        return {}
    return {name: set(sig.inputs) for graph in model.meta_graphs for name, sig in graph.signature_def.items()}


def summarize(tally: Tally, answered_requests: int, baselines: Dict[str, float],
              inputs: Optional[Dict[str, set]] = None) -> Summary:
    """The tally against the served model: ``baselines`` maps each SERVING feature of
    its schema to the share of its training examples without a value for it;
    ``inputs`` the model's signatures' input names. A rejected request is judged on
    the features its signature takes (all of them for a signature of serialized
    tf.Examples, or one the model does not have)."""
    inputs, known = inputs or {}, set(baselines)

    def expects(signature: str, name: str) -> bool:
        return takes(inputs, signature, name, known)

    requests = answered_requests + tally.rejected
    causes = [{"code": code, "pattern": pat, "requests": n, "fraction": n / max(1, tally.rejected),
               "first": _iso(first), "example": example}
              for (code, pat), (n, first, example) in sorted(tally.causes.items(), key=lambda kv: -kv[1][0])]
    missing = []
    for name, baseline in baselines.items():
        n, expected, first = tally.lacking(name, expects)
        if n and _excess(n / expected, baseline, expected):
            missing.append(MissingFeature(name, n, n / expected, _iso(first), expected, baseline))
    missing.sort(key=lambda m: (-m.fraction, m.feature))
    return Summary(requests, tally.rejected, tally.rejected / max(1, requests), tally.with_rows, tally.rows,
                   _iso(tally.first), _iso(tally.last), causes, missing)


def _iso(epoch: Optional[int]) -> Optional[str]:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# ------------------------------------------------------------------ anomalies
def flag(summary: Summary, features: List, anomalies_proto, alerting: bool) -> None:
    """Record the rejections as SERVING anomalies: one per feature the rejected requests
    lacked, one for the rejection rate (``features``: checks.FeatureResult, extended in
    place; TFDV's presence anomalies on those features are marked as explained)."""
    from monitoring.checks import FeatureResult

    if not summary.rejected:
        return
    severity = "ERROR" if alerting else "WARNING"
    by_name = {f.name: f for f in features}
    for m in summary.missing_features:
        feature = by_name.get(m.feature)
        if feature is None:
            continue
        text = (f"{m.feature} missing or empty in {percent(m.fraction)} of the rejected requests whose rows "
                f"could be read ({m.requests} of {m.of}) since {m.since}, against "
                f"{percent(m.training_fraction)} of the training examples: the server refused them, the "
                f"model never saw these rows")
        for anomaly in feature.anomalies:
            if anomaly["type"] in PRESENCE_TYPES:
                anomaly["explained_by"] = "rejected requests"
        feature.anomalies.append(_anomaly(severity, "Missing in rejected requests", text))
        _to_proto(anomalies_proto, m.feature, severity, "Missing in rejected requests", text)
    text = summary.line() + (f"; top cause: {summary.causes[0]['code']}: {summary.causes[0]['example'][:200]}"
                             if summary.causes else "")
    features.append(FeatureResult(DATASET, "-", False, True,
                                  anomalies=[_anomaly(severity, "Rejected requests", text)]))
    _to_proto(anomalies_proto, None, severity, "Rejected requests", text)


def _anomaly(severity: str, short: str, description: str) -> Dict:
    return {"severity": severity, "type": ANOMALY_TYPE, "short": short, "description": description,
            "explained_by": "rejected requests"}


def _to_proto(anomalies, name: Optional[str], severity: str, short: str, description: str) -> None:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    kind = anomalies_pb2.AnomalyInfo
    info = anomalies.anomaly_info[name] if name else anomalies.dataset_anomaly_info
    if name and not info.path.step:
        info.path.step.append(name)
    info.reason.add(type=kind.CUSTOM_VALIDATION, short_description=short, description=description)
    info.severity = max(info.severity, kind.ERROR if severity == "ERROR" else kind.WARNING)
    if not info.short_description:
        info.short_description, info.description = short, description
