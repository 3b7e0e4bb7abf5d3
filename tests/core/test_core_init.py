"""Each centroid initialisation against its definition, and seeding determinism."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightzip.core import CentroidInitialization, fit_centroids

FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


@st.composite
def values_and_k(draw, max_size=40):
    values = np.array(draw(st.lists(FINITE | st.sampled_from([0.0, 1.0, -1.0]), min_size=1, max_size=max_size)))
    k = draw(st.integers(1, len(np.unique(values))))
    return values, k


def test_parse_accepts_members_values_and_names():
    assert CentroidInitialization.parse("kmeans++") is CentroidInitialization.KMEANS_PLUS_PLUS
    assert CentroidInitialization.parse("Density_Based") is CentroidInitialization.DENSITY_BASED
    assert CentroidInitialization.parse(CentroidInitialization.OPTIMAL) is CentroidInitialization.OPTIMAL
    with pytest.raises(ValueError, match="unknown centroid initialization 'forgy'.*LINEAR"):
        CentroidInitialization.parse("forgy")


@settings(deadline=None)
@given(values_and_k())
def test_linear_is_linspace_of_min_and_max(problem):
    values, k = problem
    if k > 1 and values.min() == values.max():
        return  # constant data: k > 1 is rejected (see test_core_validation)
    np.testing.assert_array_equal(fit_centroids(values, k, "linear"), np.linspace(values.min(), values.max(), k))


@settings(deadline=None)
@given(values_and_k())
def test_density_is_the_quantiles_at_bin_centres(problem):
    values, k = problem
    levels = (np.arange(k) + 0.5) / k
    expected = np.quantile(values, levels, method="inverted_cdf")
    np.testing.assert_array_equal(fit_centroids(values, k, "density"), expected)


@settings(deadline=None)
@given(values_and_k(), st.data())
def test_weighted_density_is_the_weighted_quantiles(problem, data):
    values, k = problem
    # Integer-valued weights keep every cumulative sum exact, so the reference agrees to the bit.
    weights = np.array(data.draw(st.lists(st.integers(0, 5), min_size=len(values), max_size=len(values))),
                       dtype=np.float64)
    positive_distinct = len(np.unique(values[weights > 0]))
    if positive_distinct < k:
        return
    levels = (np.arange(k) + 0.5) / k
    expected = np.quantile(values, levels, method="inverted_cdf", weights=weights)
    np.testing.assert_array_equal(fit_centroids(values, k, "density", sample_weight=weights), expected)


def test_weighted_density_takes_the_value_where_the_cdf_meets_a_level_exactly():
    """Integer weights of total 84: the CDF after -0.5 is exactly 27/84 = level 4.5/14, though 4.5/14 · 84 rounds to
    27.000000000000004 (a search on that product landed on the next value, 0; found by the property test above)."""
    values = np.array([0, 0, 0, 0.5, -1, -2, -3, -1.5, -0.5] + [0] * 14 + [1, -4, -5, -6, -7] + [0] * 10 + [-8, -9])
    weights = np.array([0, 0, 0, 1, 1, 1, 1, 4, 5] + [0] * 13 + [1, 5, 1, 1, 1, 2] + [5] * 12, dtype=np.float64)
    assert weights.sum() == 84 and len(values) == len(weights) == 40
    levels = (np.arange(14) + 0.5) / 14
    expected = np.quantile(values, levels, method="inverted_cdf", weights=weights)
    assert expected[4] == -0.5
    np.testing.assert_array_equal(fit_centroids(values, 14, "density", sample_weight=weights), expected)


@pytest.mark.parametrize("init", ["random", "kmeans++"])
@settings(deadline=None)
@given(values_and_k(), st.integers(0, 2**32 - 1))
def test_seeded_inits_pick_k_distinct_observed_values(init, problem, seed):
    values, k = problem
    centroids = fit_centroids(values, k, init, seed=seed)
    assert centroids.shape == (k,)
    assert len(np.unique(centroids)) == k
    assert np.isin(centroids, values).all()


def test_random_never_picks_a_value_of_zero_weight():
    values = np.arange(10, dtype=np.float64)
    weights = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0], dtype=np.float64)
    for seed in range(200):
        chosen = fit_centroids(values, 3, "random", sample_weight=weights, seed=seed)
        assert set(chosen.tolist()) <= {0.0, 2.0, 4.0, 6.0, 8.0}


def test_random_draws_in_proportion_to_weight():
    values = np.array([0.0, 1.0, 2.0])
    weights = np.array([8.0, 1.0, 1.0])
    counts = Counter(float(fit_centroids(values, 1, "random", sample_weight=weights, seed=s)[0])
                     for s in range(2000))
    assert counts[0.0] / 2000 == pytest.approx(0.8, abs=0.04)


def test_random_draws_without_replacement_in_proportion_to_weight():
    # P({0, 1}) = 0.8·(1/2) + 0.1·(8/9), P({1, 2}) = 2·0.1·(1/9): successive sampling ∝ weight.
    values, weights, draws = np.array([0.0, 1.0, 2.0]), np.array([8.0, 1.0, 1.0]), 3000
    counts = Counter(tuple(fit_centroids(values, 2, "random", sample_weight=weights, seed=s).tolist())
                     for s in range(draws))
    for pair, probability in {(0.0, 1.0): 0.4 + 0.8 / 9, (0.0, 2.0): 0.4 + 0.8 / 9, (1.0, 2.0): 0.2 / 9}.items():
        sigma = np.sqrt(probability * (1 - probability) / draws)
        assert counts[pair] / draws == pytest.approx(probability, abs=4.5 * sigma)


def test_random_when_one_value_holds_nearly_all_the_weight():
    # After the heavy value, redraws almost never find another: the remaining values are listed instead.
    values = np.array([0.0, 1.0, 2.0, 3.0])
    weights = np.array([1e12, 1.0, 1.0, 2.0])
    counts = Counter(tuple(fit_centroids(values, 2, "random", sample_weight=weights, seed=s).tolist())
                     for s in range(400))
    assert set(counts) == {(0.0, 1.0), (0.0, 2.0), (0.0, 3.0)}
    assert counts[(0.0, 3.0)] / 400 == pytest.approx(0.5, abs=0.1)


def test_kmeans_plus_plus_picks_k_distinct_points_among_many_duplicates():
    # Heavy duplication makes the D² masses of exhausted clusters pure rounding noise.
    rng = np.random.default_rng(0)
    values = rng.choice(np.array([-3.0, -0.1, 0.0, 0.1, 0.2, 5.0, 7.5, 1e3]), size=200_000)
    for seed in range(20):
        centroids = fit_centroids(values, 8, "kmeans++", seed=seed)
        np.testing.assert_array_equal(centroids, np.unique(values))


def test_kmeans_plus_plus_seeds_both_of_two_far_blobs():
    # Uniform picking would put both seeds in the big blob 99.9% of the time; D² seeding almost never does.
    rng = np.random.default_rng(1)
    values = np.concatenate((rng.normal(0.0, 0.01, size=10_000), rng.normal(100.0, 0.01, size=5)))
    both = sum(
        int(np.count_nonzero(fit_centroids(values, 2, "kmeans++", seed=seed) > 50.0) == 1) for seed in range(200)
    )
    assert both >= 199


@pytest.mark.parametrize(
    "weights, expected",
    [
        # Unweighted on {0, 1, 3}: first pick uniform, second ∝ D² (worked out by hand).
        (None, {(0.0, 1.0): 0.1, (0.0, 3.0): (0.9 + 9 / 13) / 3, (1.0, 3.0): (0.8 + 4 / 13) / 3}),
        # Weights (2, 1, 1): first pick ∝ w, second ∝ w·D².
        ([2.0, 1.0, 1.0], {(0.0, 1.0): 0.05 + 0.25 / 3, (0.0, 3.0): 0.45 + 0.25 * 18 / 22,
                           (1.0, 3.0): 0.25 * 2 / 3 + 0.25 * 4 / 22}),
    ],
)
def test_kmeans_plus_plus_follows_the_d_squared_distribution(weights, expected):
    values = np.array([0.0, 1.0, 3.0])
    draws = 3000
    counts = Counter(tuple(fit_centroids(values, 2, "kmeans++", sample_weight=weights, seed=seed).tolist())
                     for seed in range(draws))
    assert set(counts) <= set(expected)
    for pair, probability in expected.items():
        sigma = np.sqrt(probability * (1 - probability) / draws)
        assert counts[pair] / draws == pytest.approx(probability, abs=4.5 * sigma)


def test_kmeans_plus_plus_never_picks_a_value_of_zero_weight():
    values = np.array([-5.0, 0.0, 1.0, 2.0, 50.0])
    weights = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    for seed in range(100):
        assert 50.0 not in fit_centroids(values, 3, "kmeans++", sample_weight=weights, seed=seed)


@pytest.mark.parametrize("init", ["random", "kmeans++", "linear", "density", "optimal"])
@pytest.mark.parametrize("lloyd_iterations", [0, 5])
def test_same_seed_gives_identical_centroids(init, lloyd_iterations):
    values = np.random.default_rng(5).standard_t(3, size=3000)
    first = fit_centroids(values, 12, init, lloyd_iterations=lloyd_iterations, seed=42)
    second = fit_centroids(values, 12, init, lloyd_iterations=lloyd_iterations, seed=42)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("init", ["random", "kmeans++"])
def test_different_seeds_give_different_centroids(init):
    values = np.random.default_rng(5).standard_t(3, size=3000)
    results = {tuple(fit_centroids(values, 12, init, seed=seed).tolist()) for seed in range(5)}
    assert len(results) == 5


def test_a_generator_can_be_passed_as_seed():
    values = np.random.default_rng(5).normal(size=500)
    a = fit_centroids(values, 4, "random", seed=np.random.default_rng(3))
    b = fit_centroids(values, 4, "random", seed=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("init", list(CentroidInitialization))
def test_every_init_returns_sorted_float64_centroids(init):
    values = np.random.default_rng(9).normal(size=(16, 8)).astype(np.float32)
    centroids = fit_centroids(values, 6, init, seed=0)
    assert centroids.dtype == np.float64 and centroids.shape == (6,)
    assert np.all(np.diff(centroids) >= 0)
