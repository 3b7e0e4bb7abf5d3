"""The k-means objective and its ratio to the optimum."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightzip.core import fit_centroids, optimal_centroids, relative_sse, sse
from weightzip.core.sample import SortedSample

FINITE = st.floats(-100, 100, allow_nan=False, allow_subnormal=False)


def direct_sse(values, centroids, weights=None):
    values = np.asarray(values, dtype=np.float64).ravel()
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    distance = (values[:, None] - np.asarray(centroids, dtype=np.float64)[None, :]) ** 2
    return float((weights * distance.min(axis=1)).sum())


@settings(deadline=None)
@given(st.lists(FINITE, min_size=1, max_size=50), st.lists(FINITE, min_size=1, max_size=10), st.data())
def test_sse_equals_a_direct_computation(values, centroids, data):
    values = np.array(values)
    weights = np.array(data.draw(st.lists(st.floats(0, 10), min_size=len(values), max_size=len(values))))
    scale = 1e-9 * (1.0 + direct_sse(values, [0.0]) * 4 + np.max(np.abs(centroids)) ** 2 * values.size)
    assert sse(values, centroids) == pytest.approx(direct_sse(values, centroids), abs=scale)
    assert sse(values, centroids, sample_weight=weights) == pytest.approx(
        direct_sse(values, centroids, weights), abs=scale * 10)


def test_sse_of_a_tensor_with_known_error():
    values = np.array([[0.0, 1.0], [3.0, 4.0]], dtype=np.float32)
    assert sse(values, [0.5, 3.5]) == pytest.approx(1.0)
    assert sse(values, [0.5, 3.5], sample_weight=[[1.0, 3.0], [0.0, 2.0]]) == pytest.approx(0.25 * 6)
    assert sse(values, [0.0, 1.0, 3.0, 4.0]) == 0.0


def test_sorted_sample_sse_agrees_with_sse():
    rng = np.random.default_rng(0)
    values, weights = rng.normal(size=1000), rng.uniform(size=1000)
    centroids = np.sort(rng.normal(size=7))
    assert SortedSample.from_values(values, weights).sse(centroids) == pytest.approx(
        sse(values, centroids, sample_weight=weights), rel=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_relative_sse_of_the_optimum_is_one(weighted):
    rng = np.random.default_rng(1)
    values = rng.normal(size=3000)
    weights = rng.exponential(size=3000) if weighted else None
    best = optimal_centroids(values, 9, sample_weight=weights)
    assert relative_sse(values, best, sample_weight=weights) == 1.0


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2**16), st.integers(1, 12), st.sampled_from(["linear", "density", "random", "kmeans++"]),
       st.integers(0, 30))
def test_relative_sse_of_any_other_method_is_at_least_one(seed, k, init, lloyd_iterations):
    values = np.random.default_rng(seed).standard_t(3, size=500)
    centroids = fit_centroids(values, k, init, lloyd_iterations=lloyd_iterations, seed=seed)
    assert relative_sse(values, centroids) >= 1.0 - 1e-9


def test_relative_sse_uses_a_given_optimum_and_handles_zero():
    values = np.array([0.0, 1.0, 3.0, 4.0])
    assert relative_sse(values, [0.5, 3.5], optimum=0.5) == pytest.approx(2.0)
    assert relative_sse(values, [0.0, 1.0, 3.0, 4.0]) == 1.0
    assert relative_sse(values, [0.0, 1.0, 3.0, 5.0]) == float("inf")
