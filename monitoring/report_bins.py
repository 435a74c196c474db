"""Readable value bins for the report's charts, from TFDV feature statistics.

Numbers on round bins (0-5, 5-10 ...) over the bulk of both sides, with an overflow
bin for the long tail; integer categories one bar per value; timestamps on
calendar bins labelled as dates; probabilities on 0-0.1 ... 0.9-1; strings as the
top values of both sides plus "other". Each side's mass per bin is read from its
cumulative distribution, built from TFDV's quantile and equal-width histograms.
The monitor's distances are computed elsewhere (``monitoring.checks``), never here.
"""
import datetime
import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from core import features as F

MAX_BINS = 12
TOP_VALUES = 8
SMALL_INT_RANGE = 24          # integer features with at most this many values: one bar per value
TIME_FORMAT_DAY, TIME_FORMAT_MONTH = "%Y-%m-%d", "%b %Y"


# ------------------------------------------------------------------ cumulative distribution
def _histogram_knots(histogram, total: float) -> List[Tuple[float, float]]:
    """(x, fraction <= x) at the edges of one histogram; a point mass as a step."""
    knots, seen = [], 0.0
    for bucket in histogram.buckets:
        before = seen / total
        seen += bucket.sample_count
        after = seen / total
        if bucket.high_value <= bucket.low_value:
            knots.append((bucket.low_value - 1e-9 * max(1.0, abs(bucket.low_value)), before))
        else:
            knots.append((bucket.low_value, before))
        knots.append((bucket.high_value, after))
    return knots


def cdf_of(feature) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """x -> fraction of the feature's values <= x (piecewise linear between the edges of
    TFDV's quantile and equal-width histograms); None without numeric values."""
    if feature is None or feature.WhichOneof("stats") != "num_stats":
        return None
    knots = []
    for histogram in feature.num_stats.histograms:
        total = sum(b.sample_count for b in histogram.buckets)
        if total > 0:
            knots += _histogram_knots(histogram, total)
    if not knots:
        return None
    knots.sort()
    xs = np.array([k[0] for k in knots])
    ys = np.maximum.accumulate(np.clip([k[1] for k in knots], 0.0, 1.0))
    return lambda x: np.interp(x, xs, ys, left=0.0, right=1.0)


def quantile_of(cdf, low: float, high: float, q: float) -> float:
    """The smallest x in [low, high] with cdf(x) >= q (bisection)."""
    for _ in range(60):
        mid = (low + high) / 2
        if cdf(mid) >= q:
            high = mid
        else:
            low = mid
    return high


# ------------------------------------------------------------------ round numbers
def nice_step(span: float, bins: int = 10) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about ``bins`` bins."""
    raw = max(span, 1e-12) / bins
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10 * magnitude


def human(x: float, step: float = 0.0) -> str:
    """A number as a person writes it: 12, 2.5, 0.05, 1500, 12k, 1.5M; to ``step``'s
    precision when given (a bin edge)."""
    if x is None or not math.isfinite(x):
        return "–"
    for scale, suffix in ((1e6, "M"), (1e4, "k")):
        if abs(x) >= scale and (not step or step >= scale / 10):
            if scale == 1e4:
                scale = 1e3
            decimals = 0 if not step else max(0, math.ceil(-math.log10(step / scale) - 1e-9))
            return f"{x / scale:,.{min(decimals, 3)}f}{suffix}" if step else f"{x / scale:.3g}{suffix}"
    if step:
        decimals = 0 if step >= 1 else math.ceil(-math.log10(step) - 1e-9)
        decimals += 1 if round(step * 10 ** decimals, 6) % 1 else 0
        return f"{x:.{decimals}f}"
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.4g}"


def is_time(name: str) -> bool:
    return name == F.TIME_KEY or name.endswith("_timestamp")


# ------------------------------------------------------------------ edges and labels
def _numeric_edges(low: float, high: float, integer: bool) -> Tuple[List[float], Callable]:
    if integer and high - low + 1 <= SMALL_INT_RANGE:
        edges = [v - 0.5 for v in range(int(math.floor(low)), int(math.ceil(high)) + 2)]
        return edges, lambda lo, hi: human(lo + 0.5)
    step = nice_step(high - low)
    if integer:
        step = max(1.0, round(step))
    start = math.floor(low / step) * step
    count = max(1, int(math.ceil((high - start) / step - 1e-9)))
    edges = [start + i * step for i in range(count + 1)]
    if integer:
        return ([e - 0.5 for e in edges],
                lambda lo, hi: f"{human(lo + 0.5, step)}–{human(hi - 0.5, step)}")
    return edges, lambda lo, hi: f"{human(lo, step)}–{human(hi, step)}"


def _time_edges(low: float, high: float) -> Tuple[List[float], Callable]:
    """Calendar bins (months when the span is over 60 days, else days or hours)."""
    start = datetime.datetime.fromtimestamp(low, datetime.timezone.utc)
    span_days = (high - low) / 86400
    if span_days > 60:
        months = next(m for m in (1, 2, 3, 6, 12, 24, 60) if span_days / 30.44 / m <= MAX_BINS)
        cursor = datetime.datetime(start.year, start.month - (start.month - 1) % months, 1,
                                   tzinfo=datetime.timezone.utc)
        edges = [cursor.timestamp()]
        while edges[-1] <= high:
            month = cursor.month - 1 + months
            cursor = cursor.replace(year=cursor.year + month // 12, month=month % 12 + 1)
            edges.append(cursor.timestamp())
        return edges, lambda lo, hi: _date(lo, TIME_FORMAT_MONTH)
    step = next((s for s in (3600, 6 * 3600, 86400, 7 * 86400) if (high - low) / s <= MAX_BINS), 14 * 86400)
    first = math.floor(low / step) * step
    edges = [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]
    if len(edges) < 2:
        edges.append(edges[0] + step)
    fmt = TIME_FORMAT_DAY if step >= 86400 else "%m-%d %H:%M"
    return edges, lambda lo, hi: _date(lo, fmt)


def _date(epoch: float, fmt: str) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(fmt)


# ------------------------------------------------------------------ distributions
def numeric_distribution(name: str, training, serving) -> Optional[Dict]:
    """Both sides' share of values per readable bin (see the module's docstring)."""
    sides = [(feature, cdf_of(feature)) for feature in (training, serving)]
    present = [(f.num_stats, cdf) for f, cdf in sides if cdf is not None]
    if not present:
        return None
    low = min(s.min for s, _ in present)
    top = max(s.max for s, _ in present)
    kind, integer = _numeric_kind(name, training or serving, low, top)
    if kind == "probability":
        edges = [i / 10 for i in range(11)]
        label = lambda lo, hi: f"{lo:.1f}–{hi:.1f}"       # noqa: E731
    elif kind == "time":
        edges, label = _time_edges(low, top)
    else:
        high = max(_bulk_end(stats, cdf, low) for stats, cdf in present)
        if integer and top - low + 1 <= SMALL_INT_RANGE:
            high = top
        edges, label = _numeric_edges(low, max(high, low + 1e-9), integer)
    bins = [label(lo, hi) for lo, hi in zip(edges, edges[1:])]
    overflow = top > edges[-1] + 1e-9
    if overflow:
        bins.append(f"≥ {_edge_text(kind, edges, integer)}")

    def masses(cdf):
        if cdf is None:
            return None
        points = cdf(np.array(edges[1:], dtype=np.float64))
        shares = np.diff(np.concatenate([[0.0], points]))
        return [float(max(0.0, v)) for v in shares] + ([float(max(0.0, 1.0 - points[-1]))] if overflow else [])
    return {"kind": kind, "bins": bins, "edges": [float(e) for e in edges],
            "training": masses(sides[0][1]), "serving": masses(sides[1][1])}


def _bulk_end(stats, cdf, low: float) -> float:
    """Where a side's bins end: its maximum, or its 90th percentile when the top tenth
    stretches further than the rest (a long tail goes to the overflow bin instead of
    flattening every other bin)."""
    p90 = quantile_of(cdf, stats.min, stats.max, 0.9)
    return stats.max if stats.max - low <= 2 * (p90 - low) else p90


def _numeric_kind(name: str, feature, low: float, high: float) -> Tuple[str, bool]:
    integer = feature is not None and feature.type == feature.INT
    if is_time(name):
        return "time", integer
    if not integer and low >= 0 and high <= 1 and (name == "prediction" or high - low > 0.2):
        return "probability", False
    return "numeric", integer


def _edge_text(kind: str, edges: List[float], integer: bool) -> str:
    if kind == "time":
        return _date(edges[-1], TIME_FORMAT_DAY)
    step = edges[-1] - edges[-2] if len(edges) > 1 else 0.0
    return human(edges[-1] + 0.5 if integer else edges[-1], step)


def top_values(feature) -> Tuple[Dict[str, float], float]:
    """A string feature's value -> count (top values and rank histogram), and its total."""
    if feature is None or feature.WhichOneof("stats") != "string_stats":
        return {}, 0.0
    stats = feature.string_stats
    total = float(stats.common_stats.tot_num_values or stats.common_stats.num_non_missing)
    counts = {b.label: float(b.sample_count) for b in stats.rank_histogram.buckets}
    counts.update({tv.value: float(tv.frequency) for tv in stats.top_values})
    return counts, total


def categorical_distribution(training, serving, top: int = TOP_VALUES) -> Optional[Dict]:
    """Shares of the ``top`` most frequent values (on either side), then "other"."""
    (t, t_total), (s, s_total) = top_values(training), top_values(serving)
    if not t_total and not s_total:
        return None
    share = lambda c, total, k: c.get(k, 0.0) / total if total else 0.0      # noqa: E731
    keys = sorted(set(t) | set(s), key=lambda k: -max(share(t, t_total, k), share(s, s_total, k)))[:top]

    def side(counts, total):
        if not total:
            return None
        shares = [share(counts, total, k) for k in keys]
        return shares + [max(0.0, 1.0 - sum(shares))]
    other = len(set(t) | set(s)) > len(keys) or any(
        v is not None and v[-1] > 1e-9 for v in (side(t, t_total), side(s, s_total)))
    bins = keys + (["other"] if other else [])
    trim = (lambda v: v if v is None or other else v[:-1])
    return {"kind": "categorical", "bins": bins, "training": trim(side(t, t_total)),
            "serving": trim(side(s, s_total))}


def distribution(training_feature, serving_feature, name: str = "") -> Optional[Dict]:
    """Both sides' share per readable bin, or None when neither side has values."""
    kind = training_feature if training_feature is not None else serving_feature
    if kind is None:
        return None
    name = name or ".".join(kind.path.step) or kind.name
    if kind.WhichOneof("stats") == "num_stats":
        return numeric_distribution(name, training_feature, serving_feature)
    if kind.WhichOneof("stats") == "string_stats":
        return categorical_distribution(training_feature, serving_feature)
    return None
