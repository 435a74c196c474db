"""The poisoning guard: what a new span of labelled requests must pass before an
automatic retrain uses it (``monitoring.act``). Feedback labels come from outside;
a retrain on them learns whatever they say, so a span that looks unlike the
training history waits for a person (``monitoring.approval``, ``tfxops approve``).

The training history (``act.training_history``) is the curated training data, the
CSVs of ``data_dir``, and every span accepted before. Checks, each in plain words when it fails:

* the data gate: the span's statistics (TFDV, the CSV decoded as CsvExampleGen
  decodes it: column types inferred from the values, an empty cell an empty list)
  validated against the curated schema as ExampleValidator does, anomalies of a
  ``gate_severities`` severity named as the pipeline's DataGate names them
  (``core.anomalies``);
* the label rate (the share of big tippers, ``core.features.is_big_tipper``) of
  the whole span, and of every slice of ``sensitive_features``,
  ``slice_features`` and every categorical model input (``CATEGORICAL_INPUTS``: a
  group an attacker can pick by a value the model sees, e.g. one company) with at
  least ``poisoning_min_slice_rows`` rows on both sides, against the history's: a move is flagged when it is larger than the
  bound (``poisoning_max_label_rate_change``, ``poisoning_max_slice_label_rate_change``)
  and the pooled two-proportion z-test (``monitoring.bias.z_score``) says it is
  not noise at ``poisoning_significance``; flipping one group's labels moves that
  group's rate even when the overall rate barely moves;
* the distribution of every model input (``core.features.MODEL_FEATURES``) but
  ``poisoning_unjudged_features`` (the month: a window covers weeks, the history
  years): its distance to the history's as the monitor's skew check measures it
  (``monitoring.checks``: Jensen-Shannon divergence for numbers, L-infinity for
  categories) at most ``poisoning_max_feature_distance``.

A bound of 1 never fires (rates and both distances lie in [0, 1]).
``retrain_requires_approval`` holds every span, whatever the checks say.
"""
import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from core import anomalies as anomalies_lib
from core import features as F
from core import storage
from core.config import Settings
from core.storage import Location
from monitoring import bias as bias_lib, checks

ALL_ROWS = "all rows"
# the model inputs whose values pick a group: each one's slices are judged, whatever slice_features says
CATEGORICAL_INPUTS = tuple(F.VOCAB_FEATURES + list(F.CATEGORICAL_INT_FEATURES) + F.HASHED_FEATURES)
Rows = List[Dict[str, str]]


@dataclasses.dataclass(frozen=True)
class LabelShift:
    """The big-tipper rate of a group of rows: in the span against the history."""
    group: str                   # ALL_ROWS, or "feature=value"
    span_rows: int
    span_rate: float
    history_rows: int
    history_rate: float
    z: float
    bound: float
    flagged: bool

    @property
    def change(self) -> float:
        return self.span_rate - self.history_rate

    def line(self) -> str:
        where = "the span" if self.group == ALL_ROWS else f"{self.group}"
        return (f"the big-tipper rate of {where} is {self.span_rate:.3f} on {self.span_rows} span rows against "
                f"{self.history_rate:.3f} on {self.history_rows} training rows: {self.change:+.3f}, beyond "
                f"+/-{self.bound:g} (z = {self.z:.1f})")

    def to_dict(self) -> Dict:
        return dict(dataclasses.asdict(self), change=self.change)


@dataclasses.dataclass(frozen=True)
class FeatureDistance:
    """A model input's distribution in the span against the history's."""
    name: str
    measure: str                 # JENSEN_SHANNON_DIVERGENCE | L_INFTY
    distance: float
    bound: float

    @property
    def over(self) -> bool:
        return self.distance > self.bound

    def line(self) -> str:
        return f"{self.name}'s distribution moved {self.distance:.3f} ({self.measure}) > {self.bound:g}"

    def to_dict(self) -> Dict:
        return dict(dataclasses.asdict(self), over=self.over)


@dataclasses.dataclass
class SpanReview:
    """What the guard found in one span, and whether the retrain waits."""
    span: str
    rows: int
    history: List[str]                       # the files of the training history
    history_rows: int
    approval_required: bool                  # retrain_requires_approval
    gate: List[str] = dataclasses.field(default_factory=list)        # the data gate's blocking anomalies
    labels: Optional[LabelShift] = None
    slices: List[LabelShift] = dataclasses.field(default_factory=list)
    distances: List[FeatureDistance] = dataclasses.field(default_factory=list)
    problems: List[str] = dataclasses.field(default_factory=list)    # what could not be judged, and why

    def suspicions(self) -> List[str]:
        """Why the span looks poisoned, in plain words (empty: it does not)."""
        found = [f"the span fails the data gate (the pipeline's DataGate would stop the retrain): {line}"
                 for line in self.gate]
        found += [shift.line() for shift in [self.labels, *self.slices] if shift is not None and shift.flagged]
        found += [d.line() for d in self.distances if d.over]
        return found + self.problems

    @property
    def held(self) -> bool:
        return self.approval_required or bool(self.suspicions())

    def verdict(self) -> str:
        """The window's outcome in words: why the retrain waits ("" when it does not)."""
        suspicions = self.suspicions()
        if suspicions:
            return "retrain held for approval: suspected poisoning: " + "; ".join(suspicions)
        return "retrain held for approval: approval required by retrain_requires_approval" \
            if self.approval_required else ""

    def to_dict(self) -> Dict:
        return {"span": self.span, "rows": self.rows, "history": self.history, "history_rows": self.history_rows,
                "approval_required": self.approval_required, "held": self.held, "suspicions": self.suspicions(),
                "gate": self.gate, "labels": self.labels.to_dict() if self.labels else None,
                "slices": [s.to_dict() for s in self.slices], "distances": [d.to_dict() for d in self.distances]}


# ------------------------------------------------------------------ the review
def review(settings: Settings, span: Path, history: Sequence[Location]) -> SpanReview:
    """The span (a CSV written by ``act.write_span``) against the ``history`` CSVs."""
    span_rows = read_rows(str(span))
    result = SpanReview(span=str(span), rows=len(span_rows), history=[str(h) for h in history], history_rows=0,
                        approval_required=settings.retrain_requires_approval)
    import tensorflow_data_validation as tfdv

    schema = tfdv.load_schema_text(settings.schema_path)
    span_stats = statistics_of_rows(span_rows) if span_rows else None
    result.gate = data_gate(settings, span_stats, schema)
    history_rows = [row for path in history for row in read_rows(path)]
    result.history_rows = len(history_rows)
    if not history_rows:
        result.problems.append("there is no training history to compare the span with (no CSV in data_dir, "
                               "no span accepted before)")
        return result
    result.labels = label_shift(settings, ALL_ROWS, span_rows, history_rows,
                                settings.poisoning_max_label_rate_change)
    result.slices = slice_shifts(settings, span_rows, history_rows)
    if span_stats is not None:
        result.distances = distances(settings, span_stats, statistics_of_rows(history_rows), schema)
    return result


def read_rows(path: Location) -> Rows:
    """A CSV's rows (text cells), local or at a URI."""
    return list(csv.DictReader(io.StringIO(storage.read_text(path), newline="")))


# ------------------------------------------------------------------ the data gate
def data_gate(settings: Settings, span_stats, schema) -> List[str]:
    """The span's blocking anomalies against the curated ``schema``, found as
    ExampleValidator finds them and worded as the pipeline's DataGate words them
    (empty: it passes)."""
    import tensorflow_data_validation as tfdv

    if span_stats is None:
        return []
    anomalies = tfdv.validate_statistics(span_stats, schema)
    return anomalies_lib.describe({"span": anomalies}, settings.gate_severities)


def statistics_of_rows(rows: Rows):
    """TFDV statistics of CSV rows decoded as CsvExampleGen decodes them: each
    column's type inferred from its values (tfx_bsl's ``ColumnTypeInferrer``), an
    empty cell an empty value list; a column empty throughout takes its declared type."""
    import pyarrow as pa
    from tfx_bsl.coders import csv_decoder

    columns = list(rows[0].keys())
    inferrer = csv_decoder.ColumnTypeInferrer(columns, skip_blank_lines=True)
    types = inferrer.create_accumulator()
    for row in rows:
        types = inferrer.add_input(types, [(row.get(c) or "").encode() for c in columns])
    arrays = [_column(pa, [row.get(c) or "" for row in rows], _arrow_type(pa, c, types.get(c))) for c in columns]
    accumulator = checks.StatsAccumulator()
    accumulator.add(pa.RecordBatch.from_arrays(arrays, columns))
    return accumulator.result()


def _arrow_type(pa, column: str, inferred):
    from tfx_bsl.coders import csv_decoder

    kind = csv_decoder.ColumnType
    if inferred in (None, kind.UNKNOWN):
        declared = F.column_type(column) if column in F.CSV_COLUMNS else "string"
        inferred = {"int": kind.INT, "float": kind.FLOAT}.get(declared, kind.STRING)
    return {kind.INT: pa.int64(), kind.FLOAT: pa.float32()}.get(inferred, pa.binary())


def _column(pa, cells: List[str], value_type):
    parse = {pa.int64(): int, pa.float32(): float}.get(value_type, str.encode)
    return pa.array([[parse(cell)] if cell else [] for cell in cells], type=pa.large_list(value_type))


# ------------------------------------------------------------------ label rates
def big_tippers(rows: Rows) -> np.ndarray:
    """The training target of each row (``core.features.is_big_tipper``)."""
    tips = np.array([_number(r.get(F.LABEL_KEY)) for r in rows], dtype=np.float64)
    fares = np.array([_number(r.get(F.FARE_KEY)) for r in rows], dtype=np.float64)
    return checks.labels_from_rows(tips, fares)


def _number(cell) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


def label_shift(settings: Settings, group: str, span_rows: Rows, history_rows: Rows, bound: float) -> LabelShift:
    """The group's big-tipper rate in the span against the history's, judged."""
    mine, theirs = big_tippers(span_rows), big_tippers(history_rows)
    span_figure = bias_lib.Figure(float(mine.mean()), int(mine.size))
    history_figure = bias_lib.Figure(float(theirs.mean()), int(theirs.size))
    z = bias_lib.z_score(bias_lib.POSITIVE_RATE, span_figure, history_figure)
    moved = abs(span_figure.value - history_figure.value) > bound
    return LabelShift(group, span_figure.count, span_figure.value, history_figure.count, history_figure.value,
                      z, bound, bool(moved and abs(z) > bias_lib.critical_z(settings.poisoning_significance)))


def slice_shifts(settings: Settings, span_rows: Rows, history_rows: Rows) -> List[LabelShift]:
    """Every slice of the sensitive and slice features and of every categorical model
    input (``CATEGORICAL_INPUTS``) with enough rows on both sides."""
    shifts = []
    features = list(dict.fromkeys(settings.sensitive_features + settings.slice_features + list(CATEGORICAL_INPUTS)))
    for feature in features:
        span_groups, history_groups = _groups(span_rows, feature), _groups(history_rows, feature)
        for value in sorted(span_groups):
            mine, theirs = span_groups[value], history_groups.get(value, [])
            if min(len(mine), len(theirs)) >= settings.poisoning_min_slice_rows:
                shifts.append(label_shift(settings, f"{feature}={value}", mine, theirs,
                                          settings.poisoning_max_slice_label_rate_change))
    return shifts


def _groups(rows: Rows, feature: str) -> Dict[str, Rows]:
    groups: Dict[str, Rows] = {}
    for row in rows:
        value = row.get(feature) or ""
        if value:
            groups.setdefault(_slice_value(feature, value), []).append(row)
    return groups


def _slice_value(feature: str, cell: str) -> str:
    """A slice value as the Evaluator's slice keys print it (``bias.value_text``)."""
    kind = F.column_type(feature) if feature in F.CSV_COLUMNS else "string"
    try:
        return bias_lib.value_text(int(float(cell)) if kind == "int" else float(cell) if kind == "float" else cell)
    except ValueError:
        return cell


# ------------------------------------------------------------------ distributions
def distances(settings: Settings, span_stats, history_stats, schema) -> List[FeatureDistance]:
    """Each model input's distance to the history's, as the skew check measures it."""
    found = checks.validate(span_stats, history_stats, schema)["features"]
    judged = set(F.MODEL_FEATURES) - set(settings.poisoning_unjudged_features)
    return [FeatureDistance(f.name, f.skew_measure, float(f.skew),
                            settings.poisoning_max_feature_distance)
            for f in found if f.name in judged and f.skew is not None]


# ------------------------------------------------------------------ the report
def held_html(outcome: Optional[Dict], window_id: str) -> str:
    """The monitor report's box for a retrain held for approval ("" for any other outcome)."""
    import html

    if not outcome or not outcome.get("held"):
        return ""
    review = outcome.get("review") or {}
    items = review.get("suspicions") or [outcome["held"]]
    return (f"<div class='box act'><b>Retrain held for approval</b>: the span of {outcome.get('span_rows', 0)} "
            f"labelled rows ({html.escape(str(outcome.get('span')))}) is kept out of the training data"
            "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>"
            f"Release it (the pipeline reruns with it): <code>tfxops approve {html.escape(window_id)}</code>; "
            f"discard it: <code>tfxops approve --reject {html.escape(window_id)}</code></div>")
