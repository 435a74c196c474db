"""Bias drift: how a served model treats each group (each value of a sensitive
feature, ``sensitive_features``) in a window, against what the Evaluator measured
for the same model on the same groups.

Per slice, in the window:

* the positive-prediction rate (served score above the decision threshold, as TFMA
  counts) and the row count, from every answered row: tallied while the window is read
  (``SliceTally``, fed each decoded batch with its served scores), by both engines
  with the same code (``traffic.add_part``), merged across workers;
* where feedback labels came back: accuracy, false positive rate, false negative
  rate (at the same threshold) and AUC, from the labelled rows.

The sensitive features and the decision threshold are those the served model was
evaluated with (its Evaluator's recorded fairness gate, ``served_gate``), the
settings' only when it recorded none: the window's rates are measured as the
Evaluator's were. Each figure is compared with the Evaluator's for the slice
(``core.evaluation``).
A rate ``p`` (positive rate, accuracy, FPR, FNR) measured on ``n`` rows in the
window against the Evaluator's ``q`` on ``m`` examples moved when both

    |p - q| > bias_max_rate_change                       (the effect matters)
    |z| > z(1 - bias_significance / 2),  z = (p - q) / sqrt(r (1 - r) (1/n + 1/m)),
                                         r = (n p + m q) / (n + m)

(the pooled two-proportion z-test: the move is not the sampling noise of two
finite samples; the bound alone flags small slices on noise, the test alone flags
negligible moves on big windows. SageMaker Clarify's bias drift compares the live
metric with a bound and nothing else; a window is far smaller than its data). AUC: a drop of more than ``bias_max_auc_drop``
with ``z = (q - p) / sqrt(se(p)^2 + se(q)^2)`` by Hanley and McNeil's standard
error. Accuracy, FPR, FNR and AUC flag only when they worsen; the positive rate
either way. ``m`` for FPR and FNR is the Evaluator's count of negative or positive
examples (``core.evaluation.SliceMetrics``).

Per feature and rate, the cross-slice gap (demographic parity for the positive
rate, equalized odds for FPR and FNR): the Evaluator's highest and lowest slice
(over the slices judged on both sides), their gap in the window against their gap at
evaluation (the same two slices on both sides, chosen before the window is seen):
flagged when it moved by more than ``bias_max_gap_change`` and its z (the two
slices' variances summed on each side) passes the same test.

A figure measured on fewer than ``bias_min_slice_rows`` rows (its denominator:
rows, labelled rows, labelled negatives for FPR, positives for FNR) in the window,
or examples at evaluation, is shown and never flagged.
Rows without the feature are in no slice of it (as TFMA slices); a multivalent
feature is sliced by its first value.
"""
import dataclasses
import math
from statistics import NormalDist
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from core import evaluation as E
from core import features as F
from core.config import Settings
from monitoring import checks

POSITIVE_RATE, ACCURACY, FPR, FNR, AUC = (
    "positive_rate", "accuracy", "false_positive_rate", "false_negative_rate", "auc")
METRICS = (POSITIVE_RATE, ACCURACY, FPR, FNR, AUC)
WORSE_IF_LOWER = (ACCURACY, AUC)          # the others worsen upwards (the positive rate: either way)
SliceKey = Tuple[str, str]                # (feature, value as text)


def value_text(value) -> str:
    """A slice value as text, as the Evaluator's slice keys print it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


# ------------------------------------------------------------------ the tally, while reading
@dataclasses.dataclass(frozen=True)
class SliceSpec:
    """What to tally: the sensitive features, and the score a positive prediction reaches."""
    features: Tuple[str, ...]
    threshold: float

    @classmethod
    def of(cls, settings: Settings) -> "SliceSpec":
        """The features and threshold the served model was evaluated with (``served_gate``);
        the settings' when its Evaluator recorded no fairness gate."""
        gate = served_gate(settings)
        if gate is None:
            return cls(tuple(settings.sensitive_features), float(settings.decision_threshold))
        return cls(tuple(gate["features"]), float(gate["decision_threshold"]))


def served_gate(settings: Settings) -> Optional[Dict]:
    """The fairness gate recorded by the Evaluator of the served model (the push
    directory's newest version; ``core.evaluation.recorded_gate``), None without one."""
    from core import mlmd, pushdir
    from monitoring import baseline as baseline_lib

    try:
        store = mlmd.open_store(settings, must_exist=True)
        base = baseline_lib.for_version(store, pushdir.newest_version(str(settings.model_push_dir)))
    except (mlmd.MetadataError, baseline_lib.NoLineageError):
        return None
    evaluator = mlmd.producer(store, base.evaluation_artifact.id) if base.evaluation_artifact else None
    return E.recorded_gate(evaluator) if evaluator is not None else None


@dataclasses.dataclass
class SliceCount:
    rows: int = 0          # answered rows with the value
    scored: int = 0        # ... with a served score
    positives: int = 0     # ... scored above the threshold


@dataclasses.dataclass
class SliceTally:
    """Answered rows and positive predictions per (sensitive feature, value) of one
    version's window. Its scores are queued as rows are read and taken, in the same
    order, by the decoded batches (``add``)."""
    spec: Optional[SliceSpec] = None
    counts: Dict[SliceKey, SliceCount] = dataclasses.field(default_factory=dict)
    queued: List[np.ndarray] = dataclasses.field(default_factory=list, compare=False, repr=False)

    def queue(self, scores: np.ndarray) -> None:
        """The served scores of answered rows, in the order their examples are decoded."""
        self.queued.append(np.asarray(scores, np.float64))

    def _take(self, n: int) -> np.ndarray:
        scores = np.concatenate(self.queued) if len(self.queued) > 1 else \
            (self.queued[0] if self.queued else np.zeros(0))
        taken, rest = scores[:n], scores[n:]
        self.queued = [rest] if rest.size else []
        return taken

    def add(self, batch) -> None:
        """A decoded batch of the next queued rows."""
        import pyarrow.compute as pc

        scores = self._take(batch.num_rows)
        if self.spec is None:
            return
        scored = ~np.isnan(scores)
        positive = scored & (np.nan_to_num(scores, nan=-np.inf) > self.spec.threshold)
        names = batch.schema.names
        for feature in self.spec.features:
            if feature not in names:
                continue
            rows, values = _first_values(batch.column(names.index(feature)))
            if rows.size == 0:
                continue
            encoded = pc.dictionary_encode(values)
            uniques, inverse = encoded.dictionary.to_pylist(), encoded.indices.to_numpy()
            per_value = (np.bincount(inverse, minlength=len(uniques)),
                         np.bincount(inverse, weights=scored[rows], minlength=len(uniques)),
                         np.bincount(inverse, weights=positive[rows], minlength=len(uniques)))
            for i, value in enumerate(uniques):
                count = self.counts.setdefault((feature, value_text(value)), SliceCount())
                count.rows += int(per_value[0][i])
                count.scored += int(per_value[1][i])
                count.positives += int(per_value[2][i])

    def merge(self, other: "SliceTally") -> None:
        """Add what ``other`` (the same version, read elsewhere) tallied."""
        self.spec = self.spec or other.spec
        for key, theirs in other.counts.items():
            mine = self.counts.setdefault(key, SliceCount())
            mine.rows += theirs.rows
            mine.scored += theirs.scored
            mine.positives += theirs.positives


def _first_values(column):
    """The rows of a list column that hold a value, and each one's first value (Arrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parents, values = np.asarray(pc.list_parent_indices(column)), column.flatten()
    if parents.size and np.any(np.diff(parents) == 0):        # a multivalent row: its first value
        parents, first = np.unique(parents, return_index=True)
        values = values.take(pa.array(first))
    return parents, values


# ------------------------------------------------------------------ figures
@dataclasses.dataclass(frozen=True)
class Figure:
    """A slice's metric: its value, the rows it is measured on (its denominator),
    and for AUC the (positive, negative) labels behind it."""
    value: Optional[float]
    count: Optional[int]                      # None: the Evaluator did not say
    classes: Optional[Tuple[int, int]] = None


Figures = Dict[SliceKey, Dict[str, Figure]]


def window_figures(tally: SliceTally, labels: np.ndarray, scores: np.ndarray, rows: Sequence[Dict],
                   spec: SliceSpec) -> Figures:
    """Per slice: the positive rate of the answered rows (``tally``) and the label
    metrics of the labelled ``rows`` (their ``labels`` and served ``scores``)."""
    out: Figures = {}
    for key, count in tally.counts.items():
        rate = count.positives / count.scored if count.scored else None
        out.setdefault(key, {})[POSITIVE_RATE] = Figure(rate, count.scored)
    groups: Dict[SliceKey, List[int]] = {}
    for i, row in enumerate(rows):
        for feature in spec.features:
            value = row.get(feature)
            if value is not None and value != "":
                groups.setdefault((feature, value_text(value)), []).append(i)
    for key, index in groups.items():
        out.setdefault(key, {}).update(label_figures(labels[index], scores[index], spec.threshold))
    return out


def label_figures(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Dict[str, Figure]:
    """Accuracy, FPR, FNR at ``threshold`` and AUC of scored, labelled rows."""
    keep = ~np.isnan(scores)
    labels, scores = labels[keep].astype(bool), scores[keep]
    predicted = scores > threshold
    positives, negatives = int(labels.sum()), int((~labels).sum())

    def rate(hits: np.ndarray, count: int) -> Figure:
        return Figure(float(hits.sum()) / count if count else None, count)
    return {ACCURACY: rate(predicted == labels, labels.size),
            FPR: rate(predicted & ~labels, negatives),
            FNR: rate(~predicted & labels, positives),
            AUC: Figure(checks.auc(labels.astype(np.int8), scores), labels.size, (positives, negatives))}


def evaluator_figures(slice_metrics: Sequence[E.SliceMetrics]) -> Figures:
    """The Evaluator's figures per slice of a sensitive feature."""
    out: Figures = {}
    for m in slice_metrics:
        if m.feature:
            out[(m.feature, m.value)] = {
                POSITIVE_RATE: Figure(m.positive_rate, m.example_count),
                ACCURACY: Figure(m.accuracy, m.example_count),
                FPR: Figure(m.false_positive_rate, m.negatives),
                FNR: Figure(m.false_negative_rate, m.positives),
                AUC: Figure(m.auc, m.example_count, (m.positives, m.negatives))}
    return out


def evaluator_slices(settings: Settings, evaluation_uri: Optional[str]) -> List[E.SliceMetrics]:
    """The Evaluator's per-slice figures of every feature it sliced ([] without an
    evaluation); ``drift`` compares those of the features the window tallied."""
    if not evaluation_uri:
        return []
    return E.slice_metrics(evaluation_uri, list(F.RAW_FEATURE_TYPES), settings.fairness_min_examples_per_class)


# ------------------------------------------------------------------ the statistic
def rate_variance(p: float, n: Optional[int]) -> float:
    """The sampling variance of a rate ``p`` over ``n`` rows (0: ``n`` unknown, exact)."""
    return p * (1 - p) / n if n else 0.0


def auc_variance(auc: float, classes: Optional[Tuple[int, int]]) -> float:
    """Hanley and McNeil's variance of an AUC over ``classes`` = (positives, negatives)."""
    if not classes or min(classes) == 0:
        return 0.0
    positives, negatives = classes
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc)
            + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)


def z_score(metric: str, mine: Figure, theirs: Figure) -> float:
    """The change's z: the pooled two-proportion test for a rate (one-sample when the
    Evaluator's count is unknown), Hanley-McNeil for AUC."""
    change = mine.value - theirs.value
    if metric == AUC:
        variance = auc_variance(mine.value, mine.classes) + auc_variance(theirs.value, theirs.classes)
    elif theirs.count:
        pooled = (mine.value * mine.count + theirs.value * theirs.count) / (mine.count + theirs.count)
        variance = pooled * (1 - pooled) * (1 / mine.count + 1 / theirs.count)
    else:
        variance = rate_variance(theirs.value, mine.count)
    if variance <= 0:
        return 0.0 if change == 0 else math.copysign(math.inf, change)
    return change / math.sqrt(variance)


def critical_z(significance: float) -> float:
    return NormalDist().inv_cdf(1 - significance / 2)


# ------------------------------------------------------------------ results
@dataclasses.dataclass(frozen=True)
class Comparison:
    """One metric of one slice: the window's figure against the Evaluator's."""
    metric: str
    window: Optional[float]
    window_count: int                  # rows the window's figure is measured on
    evaluation: Optional[float]
    evaluation_count: Optional[int]    # examples the Evaluator's is measured on (None: unknown)
    change: Optional[float] = None     # window - evaluation
    z: Optional[float] = None
    bound: float = 0.0
    flagged: bool = False
    note: str = ""                     # why it was not judged

    def line(self, slice_name: str) -> str:
        return (f"{slice_name} {self.metric} {self.window:.3f} on {self.window_count} rows vs the Evaluator's "
                f"{self.evaluation:.3f} (change {self.change:+.3f}, z {self.z:+.1f}; bound {self.bound:g})")


@dataclasses.dataclass(frozen=True)
class SliceDrift:
    feature: str
    value: str
    rows: int                          # answered rows in the window
    labelled: int                      # ... whose labels came back
    evaluation_examples: Optional[int]
    comparisons: List[Comparison]

    @property
    def name(self) -> str:
        return f"{self.feature}={self.value}"

    @property
    def flagged(self) -> bool:
        return any(c.flagged for c in self.comparisons)


@dataclasses.dataclass(frozen=True)
class GapDrift:
    """A feature's largest gap in a metric between its judged slices, window vs evaluation."""
    feature: str
    metric: str
    slices: List[str]                  # the values judged on both sides
    between: Tuple[str, str]           # the Evaluator's highest and lowest of them
    window_gap: float                  # the first's figure minus the second's, in the window
    evaluation_gap: float              # ... at evaluation
    change: float
    z: float
    bound: float
    flagged: bool

    def line(self) -> str:
        high, low = self.between
        return (f"{self.feature} {self.metric} gap between slices {self.window_gap:.3f} ({high} vs {low}) vs "
                f"{self.evaluation_gap:.3f} at evaluation (change {self.change:+.3f}, z {self.z:+.1f}; "
                f"bound {self.bound:g})")


@dataclasses.dataclass(frozen=True)
class BiasDrift:
    """A version's bias drift in a window (``drift``)."""
    available: bool                    # any slice's figure was compared with the Evaluator's
    reason: str                        # why none was ("" when available)
    features: List[str]
    threshold: float
    min_rows: int
    significance: float
    slices: List[SliceDrift] = dataclasses.field(default_factory=list)
    gaps: List[GapDrift] = dataclasses.field(default_factory=list)

    @property
    def flagged_slices(self) -> List[str]:
        return [s.name for s in self.slices if s.flagged]

    @property
    def flagged(self) -> bool:
        return bool(self.flagged_slices) or any(g.flagged for g in self.gaps)

    def findings(self) -> List[str]:
        """Every flagged move, in words."""
        return ([c.line(s.name) for s in self.slices for c in s.comparisons if c.flagged]
                + [g.line() for g in self.gaps if g.flagged])

    def to_dict(self) -> Dict:
        out = dataclasses.asdict(self)
        out.update(flagged=self.flagged, flagged_slices=self.flagged_slices, findings=self.findings())
        return out


# ------------------------------------------------------------------ the judgement
def drift(settings: Settings, tally: SliceTally, labels: np.ndarray, scores: np.ndarray,
          rows: Sequence[Dict], evaluation: Sequence) -> BiasDrift:
    """The window's sensitive slices (``tally``; the labelled ``rows`` with their
    ``labels`` and served ``scores``) against the Evaluator's ``evaluation``
    (``core.evaluation.SliceMetrics`` of the served model)."""
    spec = tally.spec or SliceSpec.of(settings)
    mine, theirs = window_figures(tally, labels, scores, rows, spec), evaluator_figures(evaluation)
    order = {feature: i for i, feature in enumerate(spec.features)}
    keys = sorted(mine, key=lambda k: (order.get(k[0], len(order)), -_rows(tally, k), k[1]))
    slices = [_slice_drift(settings, key, mine[key], theirs.get(key, {}), _rows(tally, key)) for key in keys]
    gaps = [gap for feature in spec.features for metric in METRICS if metric != AUC
            for gap in [_gap(settings, feature, metric, slices)] if gap is not None]
    compared = any(c.evaluation is not None for s in slices for c in s.comparisons)
    reason = "" if compared else (
        "no sensitive_features set" if not spec.features else
        "no answered rows in the window carry a sensitive feature" if not mine else
        f"the Evaluator has no per-slice figures of {', '.join(spec.features)} for this model"
        if not theirs else "no slice of the window is among the Evaluator's")
    return BiasDrift(compared, reason, list(spec.features), spec.threshold, settings.bias_min_slice_rows,
                     settings.bias_significance, slices, gaps)


def _rows(tally: SliceTally, key: SliceKey) -> int:
    count = tally.counts.get(key)
    return count.rows if count else 0


def _slice_drift(settings: Settings, key: SliceKey, mine: Dict[str, Figure], theirs: Dict[str, Figure],
                 rows: int) -> SliceDrift:
    auc = mine.get(AUC)
    examples = theirs[POSITIVE_RATE].count if POSITIVE_RATE in theirs else None
    comparisons = [compare(settings, metric, mine[metric], theirs.get(metric))
                   for metric in METRICS if metric in mine]
    return SliceDrift(key[0], key[1], rows, auc.count if auc else 0, examples, comparisons)


def compare(settings: Settings, metric: str, mine: Figure, theirs: Optional[Figure]) -> Comparison:
    """One metric of one slice judged (module docstring): flagged when it moved (worsened,
    but for the positive rate) by more than its bound, and its z passes the test."""
    bound = settings.bias_max_auc_drop if metric == AUC else settings.bias_max_rate_change
    evaluation = theirs.value if theirs else None
    base = Comparison(metric, mine.value, mine.count or 0, evaluation, theirs.count if theirs else None,
                      bound=bound)
    minimum = settings.bias_min_slice_rows
    if mine.value is None or evaluation is None:
        return dataclasses.replace(base, note="no figure in the window" if mine.value is None
                                   else "the Evaluator has no figure for this slice")
    change, z = mine.value - evaluation, z_score(metric, mine, theirs)
    base = dataclasses.replace(base, change=change, z=z)
    if (mine.count or 0) < minimum or (theirs.count is not None and theirs.count < minimum):
        return dataclasses.replace(base, note=f"fewer than bias_min_slice_rows={minimum} rows: shown, not judged")
    moved = abs(change) if metric == POSITIVE_RATE else (-change if metric in WORSE_IF_LOWER else change)
    return dataclasses.replace(base, flagged=moved > bound and abs(z) > critical_z(settings.bias_significance))


def _gap(settings: Settings, feature: str, metric: str, slices: List[SliceDrift]) -> Optional[GapDrift]:
    """``metric``'s largest gap between the slices of ``feature`` judged on both sides."""
    judged = [(s.value, c) for s in slices if s.feature == feature for c in s.comparisons
              if c.metric == metric and c.change is not None and not c.note]
    if len(judged) < 2:
        return None
    by_evaluation = sorted(judged, key=lambda vc: vc[1].evaluation)
    (low, low_c), (high, high_c) = by_evaluation[0], by_evaluation[-1]
    window_gap, evaluation_gap = high_c.window - low_c.window, high_c.evaluation - low_c.evaluation
    change = window_gap - evaluation_gap
    variance = sum(rate_variance(c.window, c.window_count) + rate_variance(c.evaluation, c.evaluation_count)
                   for c in (high_c, low_c))
    z = change / math.sqrt(variance) if variance > 0 else (0.0 if change == 0 else math.copysign(math.inf, change))
    bound = settings.bias_max_gap_change
    return GapDrift(feature, metric, sorted(v for v, _ in judged), (high, low), window_gap, evaluation_gap,
                    change, z, bound,
                    abs(change) > bound and abs(z) > critical_z(settings.bias_significance))

