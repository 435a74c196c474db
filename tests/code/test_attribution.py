"""core.attribution: the sampled Shapley estimator against closed forms, the
conversion of raw rows to the signature's columns, saving and loading at a path
and at a URI."""
import numpy as np
import pytest
import tensorflow as tf

from core import attribution


def _linear(weights):
    def predict(columns):
        return sum(w * columns[name].astype(np.float64) for name, w in weights.items())
    return predict


def test_a_linear_model_gets_its_exact_shapley_values():
    """For f = sum w_i x_i, the Shapley value of feature i against background row z
    is w_i (x_i - z_i), whatever the permutation: the estimate is exact."""
    weights = {"a": 2.0, "b": -1.0, "c": 0.5}
    rows = {"a": np.array([1.0, 3.0]), "b": np.array([4.0, 0.0]), "c": np.array([-2.0, 8.0])}
    background = {"a": np.array([0.0]), "b": np.array([1.0]), "c": np.array([2.0])}
    estimate = attribution.sampled_shapley(_linear(weights), rows, background, samples=4, seed=1)
    assert estimate.features == ["a", "b", "c"]
    expected = [[2.0 * 1, -1.0 * 3, 0.5 * -4], [2.0 * 3, -1.0 * -1, 0.5 * 6]]
    np.testing.assert_allclose(estimate.values, expected, atol=1e-12)
    # 2 rows x 4 permutations x (3 features + 1) steps, in one call
    assert (estimate.model_calls, estimate.model_rows) == (1, 2 * 4 * 4)


def test_an_interaction_is_split_evenly_and_the_attributions_add_up_to_the_output():
    """f = x*y against the zero row: each walk gives the product to whichever of the
    two comes second; a permutation and its reverse split it in halves."""
    rows = {"x": np.array([3.0, -2.0]), "y": np.array([5.0, 4.0]), "z": np.array([7.0, 7.0])}
    background = {"x": np.zeros(1), "y": np.zeros(1), "z": np.zeros(1)}
    estimate = attribution.sampled_shapley(lambda c: c["x"] * c["y"], rows, background, samples=2, seed=3,
                                           batch_rows=5)
    np.testing.assert_allclose(estimate.values, [[7.5, 7.5, 0.0], [-4.0, -4.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(estimate.values.sum(axis=1), [15.0, -8.0], atol=1e-12)
    assert estimate.model_calls == 4          # 16 rows of input in batches of 5


def test_several_background_rows_average_and_a_seed_repeats_the_draws():
    weights = {"a": 1.0, "b": 1.0}
    rows = {"a": np.array([10.0]), "b": np.array([10.0])}
    background = {"a": np.array([0.0, 4.0]), "b": np.array([2.0, 6.0])}
    first = attribution.sampled_shapley(_linear(weights), rows, background, samples=400, seed=7)
    again = attribution.sampled_shapley(_linear(weights), rows, background, samples=400, seed=7)
    np.testing.assert_array_equal(first.values, again.values)
    # E over the background: a: 10 - 2 = 8, b: 10 - 4 = 6 (within sampling error)
    np.testing.assert_allclose(first.values[0], [8.0, 6.0], atol=0.4)


def test_nothing_to_explain_is_an_error_that_says_so():
    with pytest.raises(attribution.AttributionError, match="0 row"):
        attribution.sampled_shapley(_linear({"a": 1}), {"a": np.zeros(0)}, {"a": np.zeros(1)}, samples=2, seed=0)
    with pytest.raises(attribution.AttributionError, match="0 background row.*attribution_background_rows"):
        attribution.sampled_shapley(_linear({"a": 1}), {"a": np.zeros(1)}, {"a": np.zeros(0)}, samples=2, seed=0)


def test_raw_rows_become_the_signatures_columns_with_missing_values_filled_in():
    inputs = {"fare": tf.float32, "trip_seconds": tf.int64, "company": tf.string}
    columns = attribution.columns_of(
        [{"fare": "7.25", "trip_seconds": "720", "company": "Flash Cab"},
         {"fare": "", "trip_seconds": None, "company": ""},
         {"fare": 3, "trip_seconds": 12.0, "company": b"X"}], inputs)
    np.testing.assert_array_equal(columns["fare"], np.array([7.25, 0.0, 3.0], np.float32))
    assert columns["fare"].dtype == np.float32 and columns["trip_seconds"].dtype == np.int64
    np.testing.assert_array_equal(columns["trip_seconds"], [720, 0, 12])
    assert list(columns["company"]) == [b"Flash Cab", b"", b"X"]


def _example():
    return attribution.Attributions("sampled-shapley", 200, {"fare": 0.3, "company": 0.1, "trip_miles": 0.1},
                                    samples=8, seed=42, background=[{"fare": 1.5, "company": None}],
                                    cost={"seconds": 1.2, "model_calls": 4, "model_rows": 25600})


def test_shares_and_ranking():
    found = _example()
    assert found.shares() == pytest.approx({"fare": 0.6, "company": 0.2, "trip_miles": 0.2})
    assert found.ranking() == ["fare", "company", "trip_miles"]     # ties by name


@pytest.mark.parametrize("where", ["local", "uri"])
def test_saved_attributions_load_back_the_same(tmp_path, where):
    uri = str(tmp_path / "artifact") if where == "local" else f"ram://tfxops-test/{tmp_path.name}/artifact"
    attribution.save(_example(), uri)
    assert attribution.load(uri) == _example()


def test_reading_attributions_that_are_not_there_names_the_file(tmp_path):
    with pytest.raises(attribution.AttributionError, match="attributions.json"):
        attribution.load(str(tmp_path))


@pytest.mark.parametrize("content, says", [
    ('{"rows": 3, "mean_abs": {}}', "have no method field"),
    ('{"method": "sampled_shapley"}', "have no rows, mean_abs field"),
    ('[1, 2]', "have no method, rows, mean_abs field"),
    ('{"method": "m", "rows": 3, "mean_abs": [1]}', "'mean_abs' a mapping of feature to number"),
    ('{"method": ', "not valid JSON"),
])
def test_a_broken_attributions_file_is_named_with_what_is_wrong(tmp_path, content, says):
    (tmp_path / attribution.FILE_NAME).write_text(content)
    with pytest.raises(attribution.AttributionError) as raised:
        attribution.load(str(tmp_path))
    message = str(raised.value)
    assert str(tmp_path / attribution.FILE_NAME) in message and says in message
    assert "Error" not in message and "rerun the pipeline" in message
