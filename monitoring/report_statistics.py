"""What the report says about each feature beyond the monitor's distance, read from
the two TFDV statistics files a window already has (its own and the served model's
training split): summary figures side by side (as Facets shows them), and a test
chosen by sample size, as Evidently chooses it.

The rule (``TEST_MAX_ROWS``): when the smaller of the two samples has at most 1,000
rows, a two-sample test with a p-value: Kolmogorov-Smirnov for numbers with more
than five distinct values, chi-squared for strings and small integer categories;
above that, the distance the monitor computed (Jensen-Shannon for numbers,
L-infinity for strings). Evidently decides on the reference's size; here the
reference (a training split) is large and the window is the noisy side, so the
smaller sample decides. The tests are read from the statistics' histograms, not the
rows: the K-S distance is the smallest the histograms prove (conservative: a large
shift is found, a small one may not be, a sample of the same data raises no alarm),
and they never change a flag: the monitor's thresholds decide.
"""
import dataclasses
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from monitoring import report_bins

TEST_MAX_ROWS = 1000
SIGNIFICANCE = 0.05


# ------------------------------------------------------------------ files
def resolve(path: Optional[str], home: Optional[Path]) -> Optional[Path]:
    """A path the result recorded, found again: as written (absolute, or relative to
    the directory the monitor ran in), else its longest tail that exists under ``home``."""
    if not path:
        return None
    candidate = Path(path)
    if candidate.is_file() or home is None:
        return candidate if candidate.is_file() else None
    parts = candidate.parts
    for i in range(len(parts)):
        under = Path(home, *parts[i:])
        if under.is_file():
            return under
    return None


def load(path: Optional[str], home: Optional[Path] = None):
    """A DatasetFeatureStatisticsList file (TFX's FeatureStats.pb), or None if unreadable."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    found = resolve(path, home)
    if found is None:
        return None
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    try:
        stats.ParseFromString(found.read_bytes())
    except (OSError, ValueError):
        return None
    return stats if stats.datasets else None


def feature_of(stats, name: str):
    if stats is None:
        return None
    for feature in stats.datasets[0].features:
        if ".".join(feature.path.step) == name or feature.name == name:
            return feature
    return None


def rows_of(stats) -> int:
    return int(stats.datasets[0].num_examples) if stats is not None else 0


# ------------------------------------------------------------------ summaries
@dataclasses.dataclass
class Summary:
    """One side's figures for one feature."""
    rows: int                    # rows in the dataset
    count: int                   # rows with a value
    missing: float               # share of rows without a value
    mean: Optional[float] = None
    std: Optional[float] = None
    minimum: Optional[float] = None
    median: Optional[float] = None
    maximum: Optional[float] = None
    zeros: Optional[float] = None        # share of values that are 0
    unique: Optional[int] = None         # distinct values (strings: TFDV counts them)
    top: List[List] = dataclasses.field(default_factory=list)    # [value, share] of the commonest


def summarize(feature, rows: int) -> Optional[Summary]:
    if feature is None:
        return None
    kind = feature.WhichOneof("stats")
    if kind not in ("num_stats", "string_stats"):
        return None
    stats = getattr(feature, kind)
    common = stats.common_stats
    count = int(common.tot_num_values or (common.num_non_missing if common.max_num_values else 0))
    out = Summary(rows=rows, count=count, missing=1.0 - count / rows if rows else 0.0)
    if not count:
        return out
    if kind == "num_stats":
        total = common.tot_num_values or count
        out.mean, out.std, out.minimum = stats.mean, stats.std_dev, stats.min
        out.median, out.maximum, out.zeros = stats.median, stats.max, stats.num_zeros / total
    else:
        counts, total = report_bins.top_values(feature)
        out.unique = int(stats.unique)
        out.top = [[value, c / total] for value, c in sorted(counts.items(), key=lambda kv: -kv[1])[:3]]
    return out


# ------------------------------------------------------------------ tests
@dataclasses.dataclass
class Test:
    """The statistic the sample-size rule picked for one feature."""
    method: str                  # "K-S test" | "chi-squared test" | the monitor's distance measure
    value: Optional[float]       # the test statistic (K-S D, chi-squared) or the distance
    p_value: Optional[float]     # tests only
    rows: List[int]              # [training rows, window rows] with values
    note: str = ""

    @property
    def significant(self) -> Optional[bool]:
        return None if self.p_value is None else self.p_value < SIGNIFICANCE


def choose(feature_result: Dict, training, serving) -> Optional[Test]:
    """The sample-size rule (module docstring) for one feature of the window."""
    t_rows = _values(training)
    s_rows = _values(serving)
    if not t_rows or not s_rows:
        return None
    if min(t_rows, s_rows) > TEST_MAX_ROWS:
        measure = (feature_result.get("skew_measure") or "distance").replace("_", " ").lower()
        return Test(measure, feature_result.get("skew"), None, [t_rows, s_rows])
    few_values = training.WhichOneof("stats") == "num_stats" and training.type == training.INT and \
        training.num_stats.max - training.num_stats.min < 5
    if training.WhichOneof("stats") == "num_stats" and not few_values:
        return _ks(training, serving, t_rows, s_rows)
    return _chi_squared(training, serving, t_rows, s_rows)


def _values(feature) -> int:
    if feature is None or feature.WhichOneof("stats") is None:
        return 0
    common = getattr(feature, feature.WhichOneof("stats")).common_stats
    return int(common.tot_num_values or 0)


def cdf_bounds(feature):
    """(lower, upper): x -> bounds on the fraction of values <= x that the feature's
    histograms prove (every bucket ending at or before x below, every bucket starting
    at or before x above); the tighter of its quantile and equal-width histograms."""
    buckets = []
    for histogram in feature.num_stats.histograms:
        total = sum(b.sample_count for b in histogram.buckets)
        if total > 0:
            buckets.append([(b.low_value, b.high_value, b.sample_count / total) for b in histogram.buckets])

    def lower(x: float) -> float:
        return max(sum(m for _, hi, m in side if hi <= x) for side in buckets)

    def upper(x: float) -> float:
        return min(sum(m for lo, _, m in side if lo <= x) for side in buckets)
    points = sorted({v for side in buckets for lo, hi, _ in side for v in (lo, hi)})
    return lower, upper, points


def _ks(training, serving, t_rows: int, s_rows: int) -> Optional[Test]:
    """The two-sample Kolmogorov-Smirnov test on the smallest distance between the two
    CDFs that their histograms prove: a conservative D (the p-value an upper bound)."""
    from scipy import stats as scipy_stats

    if not training.num_stats.histograms or not serving.num_stats.histograms:
        return None
    (a_low, a_up, a_points), (b_low, b_up, b_points) = cdf_bounds(training), cdf_bounds(serving)
    d = max((max(a_low(x) - b_up(x), b_low(x) - a_up(x), 0.0) for x in a_points + b_points), default=0.0)
    n = round(t_rows * s_rows / (t_rows + s_rows))
    p = float(scipy_stats.kstwo.sf(d, max(1, n)))
    return Test("K-S test", float(d), p, [t_rows, s_rows], "conservative, from the statistics' histograms")


def _chi_squared(training, serving, t_rows: int, s_rows: int) -> Optional[Test]:
    from scipy import stats as scipy_stats

    dist = report_bins.distribution(training, serving)
    if not dist or dist["training"] is None or dist["serving"] is None:
        return None
    table = np.array([np.array(dist["training"]) * t_rows, np.array(dist["serving"]) * s_rows])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return Test("chi-squared test", 0.0, 1.0, [t_rows, s_rows], "one value on both sides")
    chi2, p, _, _ = scipy_stats.chi2_contingency(table)
    return Test("chi-squared test", float(chi2), float(p), [t_rows, s_rows],
                f"{table.shape[1]} bins of the chart")
