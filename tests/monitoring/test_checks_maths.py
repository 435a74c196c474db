"""The monitor's own maths against independent references: the Jensen-Shannon
divergence over the training quantile bins (scipy), the CDF read from a quantile
histogram (scipy's distributions, numpy on a sample), the AUC with ties (sklearn),
and the L-infinity distance TFDV reports for categorical features (numpy)."""
import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import roc_auc_score

from monitoring import checks


def _quantiles(edges, counts):
    """A numeric feature's statistics with one QUANTILES histogram: bucket i spans
    ``edges[i]``..``edges[i + 1]`` and holds ``counts[i]`` values."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    feature = statistics_pb2.FeatureNameStatistics(name="x", type=statistics_pb2.FeatureNameStatistics.FLOAT)
    histogram = feature.num_stats.histograms.add(type=statistics_pb2.Histogram.QUANTILES)
    for low, high, count in zip(edges[:-1], edges[1:], counts):
        histogram.buckets.add(low_value=float(low), high_value=float(high), sample_count=float(count))
    return feature


def _js(p, q):
    """Jensen-Shannon divergence in bits: scipy returns its square root (a distance)."""
    return jensenshannon(np.asarray(p, float), np.asarray(q, float), base=2) ** 2


# ------------------------------------------------------------------ JS divergence on quantile bins
def test_js_on_the_same_bins_is_scipys_divergence_in_bits():
    edges = [0.0, 1.0, 2.5, 4.0, 7.0, 10.0]
    training, serving = [20, 20, 20, 20, 20], [5, 10, 20, 30, 35]
    got = checks.js_divergence(_quantiles(edges, training), _quantiles(edges, serving))
    # bins: below the lowest edge, the training buckets, above the highest edge (both empty here)
    assert got == pytest.approx(_js([0] + training + [0], [0] + serving + [0]), abs=1e-12)
    assert got == pytest.approx(_js(training, serving), abs=1e-12)


def test_js_reads_the_serving_mass_per_training_bin_as_uniform_within_its_buckets():
    """Serving uniform on [2, 12] in 20 buckets of its own: its mass per training bin
    is the overlap's length / 10, mass above the training range included."""
    training_edges = np.array([0.0, 1.0, 3.0, 6.0, 8.0, 10.0])
    training = [10, 30, 25, 20, 15]
    serving_edges = np.linspace(2.0, 12.0, 21)
    got = checks.js_divergence(_quantiles(training_edges, training), _quantiles(serving_edges, [5] * 20))

    bins = np.concatenate([[-np.inf], training_edges, [np.inf]])
    overlap = np.clip(np.minimum(bins[1:], 12.0) - np.maximum(bins[:-1], 2.0), 0, None) / 10.0
    assert overlap.sum() == pytest.approx(1.0)
    assert got == pytest.approx(_js([0] + training + [0], overlap), abs=1e-9)


def test_js_bounds_identical_and_disjoint():
    edges, counts = [0.0, 1.0, 2.0, 3.0], [1, 2, 3]
    assert checks.js_divergence(_quantiles(edges, counts), _quantiles(edges, counts)) == pytest.approx(0.0, abs=1e-12)
    far = checks.js_divergence(_quantiles(edges, counts), _quantiles([10.0, 11.0, 12.0], [4, 4]))
    assert far == pytest.approx(1.0) and far == pytest.approx(_js([0, 1, 2, 3, 0], [0, 0, 0, 0, 1]))
    assert checks.js_divergence(None, _quantiles(edges, counts)) is None


# ------------------------------------------------------------------ the quantile CDF
def test_quantile_cdf_is_exact_for_a_uniform_distribution():
    edges = np.linspace(-2.0, 6.0, 11)
    cdf, lows, highs = checks.quantile_cdf(_quantiles(edges, [7] * 10))
    assert list(lows) == list(edges[:-1]) and list(highs) == list(edges[1:])
    for x in np.linspace(-5.0, 9.0, 141):
        assert cdf(x) == pytest.approx(scipy_stats.uniform.cdf(x, loc=-2.0, scale=8.0), abs=1e-12)


def test_quantile_cdf_matches_the_distribution_at_its_quantiles_and_stays_between():
    """Buckets at an exponential's deciles: exact at the edges, monotone, and within
    each bucket between the distribution's values at its ends."""
    probabilities = np.linspace(0.0, 1.0, 11)
    probabilities[-1] = 0.999
    edges = scipy_stats.expon.ppf(probabilities)
    masses = np.diff(probabilities)
    cdf, _, _ = checks.quantile_cdf(_quantiles(edges, masses * 1000))
    scale = probabilities[-1]              # the histogram holds 99.9% of the mass
    for x, p in zip(edges, probabilities):
        assert cdf(x) == pytest.approx(p / scale, abs=1e-9)
    grid = np.linspace(0.0, edges[-1], 500)
    values = np.array([cdf(x) for x in grid])
    assert np.all(np.diff(values) >= -1e-12)
    lower = np.searchsorted(edges, grid, side="right") - 1
    inside = (lower >= 0) & (lower < len(edges) - 1)
    low, high = probabilities[lower[inside]] / scale, probabilities[lower[inside] + 1] / scale
    assert np.all(values[inside] >= low - 1e-12) and np.all(values[inside] <= high + 1e-12)
    assert cdf(-1.0) == 0.0 and cdf(edges[-1] + 1) == pytest.approx(1.0)


def test_quantile_cdf_counts_a_point_mass_at_its_value():
    """A bucket of zero width (many equal values, as trip_start_hour has) holds its
    mass from its value on."""
    cdf, _, _ = checks.quantile_cdf(_quantiles([0.0, 5.0, 5.0, 10.0], [25, 50, 25]))
    assert cdf(4.999) == pytest.approx(0.25 * 4.999 / 5)
    assert cdf(5.0) == pytest.approx(0.75)
    assert cdf(7.5) == pytest.approx(0.875)


def test_quantile_cdf_of_tfdv_statistics_follows_the_sample():
    """TFDV's own QUANTILES histogram of a sample: its CDF against numpy's empirical
    one, close at the bucket edges (TFDV's quantiles are a sketch's), and within a
    bucket's mass between them (the CDF is linear inside a bucket)."""
    sample = np.random.default_rng(7).lognormal(mean=1.0, sigma=0.8, size=20_000)
    feature = checks.feature_stats(checks.statistics_of({"x": sample}), "x")
    cdf, lows, highs = checks.quantile_cdf(feature)
    assert len(lows) == 10
    for x in np.unique(np.concatenate([lows, highs])):
        assert cdf(x) == pytest.approx(np.mean(sample <= x), abs=0.005)
    for q in (0.01, 0.25, 0.55, 0.75, 0.99):
        x = np.quantile(sample, q)
        assert cdf(x) == pytest.approx(np.mean(sample <= x), abs=0.1 + 0.005)


# ------------------------------------------------------------------ AUC with ties
@pytest.mark.parametrize("seed", range(5))
def test_auc_with_ties_is_sklearns(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=2000).astype(np.int8)
    scores = np.round(np.clip(0.3 * labels + rng.normal(0.4, 0.25, size=2000), 0, 1), 1)  # 11 values: ties
    assert len(np.unique(scores)) <= 11
    assert checks.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_edge_cases():
    labels = np.array([0, 1, 0, 1, 1], np.int8)
    assert checks.auc(labels, np.full(5, 0.3)) == pytest.approx(0.5) == roc_auc_score(labels, np.full(5, 0.3))
    assert checks.auc(labels, labels.astype(float)) == pytest.approx(1.0)
    assert checks.auc(labels, 1.0 - labels) == pytest.approx(0.0)
    assert checks.auc(np.ones(4, np.int8), np.linspace(0, 1, 4)) is None      # one class: undefined


# ------------------------------------------------------------------ L-infinity for categorical features
def _categorical_statistics(values):
    import pyarrow as pa

    accumulator = checks.StatsAccumulator()
    accumulator.add(pa.RecordBatch.from_arrays([pa.array([[v] for v in values], pa.list_(pa.binary()))], ["c"]))
    return accumulator.result()


def test_categorical_skew_is_the_l_infinity_distance_of_the_frequencies():
    from tensorflow_metadata.proto.v0 import schema_pb2

    categories = np.array([b"cash", b"card", b"mobile", b"unknown"], dtype=object)
    rng = np.random.default_rng(3)
    training = rng.choice(categories, size=5000, p=[0.5, 0.3, 0.15, 0.05])
    serving = rng.choice(categories, size=3000, p=[0.2, 0.5, 0.2, 0.1])
    schema = schema_pb2.Schema(default_environment=["TRAINING", "SERVING"])
    schema.feature.add(name="c", type=schema_pb2.BYTES).skew_comparator.infinity_norm.threshold = 0.1

    (result,) = checks.validate(_categorical_statistics(serving), _categorical_statistics(training),
                                schema)["features"]
    frequency = {side: {c: np.mean(values == c) for c in categories}
                 for side, values in (("training", training), ("serving", serving))}
    expected = max(abs(frequency["training"][c] - frequency["serving"][c]) for c in categories)
    assert result.skew_measure == "L_INFTY"
    assert result.skew == pytest.approx(expected, abs=1e-9)
    assert result.over_skew
