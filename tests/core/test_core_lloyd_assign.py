"""Lloyd refinement (monotone SSE, fixed point) and nearest-centroid assignment (equal to argmin)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightzip.core import assign_to_centroids, fit_centroids, index_dtype, lloyd_refine, sse
from weightzip.core.sample import SortedSample

FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


def argmin_assignment(values, centroids):
    distance = np.abs(np.asarray(values, np.float64).reshape(-1, 1) - np.asarray(centroids, np.float64)[None, :])
    return distance.argmin(axis=1).reshape(np.shape(values)), distance


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("init", ["linear", "density", "random", "kmeans++"])
def test_lloyd_sse_never_increases(init, weighted):
    rng = np.random.default_rng(11)
    values = np.concatenate((rng.normal(size=2000), rng.laplace(4.0, 0.3, size=500)))
    weights = rng.exponential(size=values.size) if weighted else None
    sample = SortedSample.from_values(values, weights)
    start = fit_centroids(values, 10, init, sample_weight=weights, seed=3)
    history = [sse(values, start, sample_weight=weights)]
    for steps in range(1, 40):
        centroids, _ = lloyd_refine(sample, start, steps)
        history.append(sse(values, centroids, sample_weight=weights))
    scale = 1e-12 * history[0]
    assert all(later <= earlier + scale for earlier, later in zip(history, history[1:]))
    assert history[-1] < history[0]


@pytest.mark.parametrize("weighted", [False, True])
def test_lloyd_converges_to_a_fixed_point(weighted):
    rng = np.random.default_rng(12)
    values = rng.standard_t(4, size=3000)
    weights = rng.uniform(0.1, 3.0, size=values.size) if weighted else np.ones_like(values)
    sample = SortedSample.from_values(values, weights if weighted else None)
    centroids, iterations = lloyd_refine(sample, np.linspace(values.min(), values.max(), 12), 10_000)
    assert iterations < 10_000
    labels, _ = argmin_assignment(values, centroids)
    for j, centre in enumerate(centroids):
        members = labels == j
        if members.any():  # an empty cluster keeps its centroid
            mean = np.average(values[members], weights=weights[members])
            assert centre == pytest.approx(mean, rel=1e-12, abs=1e-12)
    # Converged: one more iteration changes nothing.
    again, _ = lloyd_refine(sample, centroids, 1)
    np.testing.assert_allclose(again, centroids, rtol=1e-12, atol=1e-12)


def test_lloyd_keeps_an_empty_cluster_in_place():
    sample = SortedSample.from_values(np.array([0.0, 0.1, 10.0, 10.1]))
    centroids, _ = lloyd_refine(sample, np.array([0.0, 5.0, 5.0 + 1e-9, 10.0]), 10)
    assert 5.0 in centroids or (5.0 + 1e-9) in centroids
    assert centroids[0] == pytest.approx(0.05) and centroids[-1] == pytest.approx(10.05)


def test_lloyd_rejects_negative_iterations():
    with pytest.raises(ValueError, match="max_iterations must be >= 0"):
        lloyd_refine(SortedSample.from_values(np.arange(3.0)), np.array([0.0]), -1)


@settings(deadline=None, max_examples=200)
@given(st.lists(FINITE, min_size=1, max_size=30), st.lists(FINITE, min_size=1, max_size=12))
def test_assignment_matches_argmin_of_distance(values, centroids):
    """Unsorted, possibly repeated centroids; ties decided as argmin does (lowest index)."""
    values = np.array(values)
    centroids = np.array(centroids)
    ours = assign_to_centroids(values, centroids).astype(np.int64)
    expected, distance = argmin_assignment(values, centroids)
    chosen = distance[np.arange(values.size), ours]
    best = distance.min(axis=1)
    # Midpoints are rounded once (fl(a + b) / 2), so for a value within a few ulps of one the choice may
    # differ from a comparison of two rounded distances; everywhere else it must be exactly argmin's.
    slack = 4 * np.finfo(np.float64).eps * (np.abs(values) + np.abs(centroids).max())
    assert np.all(chosen <= best + slack)
    by_value = np.sort(np.abs(values[:, None] - np.unique(centroids)[None, :]), axis=1)
    runner_up = by_value[:, 1] if by_value.shape[1] > 1 else np.full(values.size, np.inf)
    clear = runner_up - by_value[:, 0] > slack
    np.testing.assert_array_equal(ours[clear], expected[clear])


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(-20, 20), min_size=1, max_size=30), st.lists(st.integers(-10, 10), min_size=1,
                                                                        max_size=8))
def test_assignment_breaks_exact_ties_like_argmin(half_values, centroids):
    """Half-integers against integers: many exact ties, all exactly representable."""
    values = np.array(half_values, dtype=np.float64) / 2.0
    centroids = np.array(centroids, dtype=np.float64)
    expected, _ = argmin_assignment(values, centroids)
    np.testing.assert_array_equal(assign_to_centroids(values, centroids), expected)


def test_assignment_keeps_the_shape_and_uses_the_smallest_index_dtype():
    values = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    codes = assign_to_centroids(values, np.linspace(-2, 2, 300))
    assert codes.shape == (3, 4, 5) and codes.dtype == np.uint16
    assert index_dtype(256) == np.uint8 and index_dtype(257) == np.uint16 and index_dtype(1 << 17) == np.uint32


def test_assignment_rejects_bad_centroids():
    from weightzip.core import InvalidWeightsError

    with pytest.raises(InvalidWeightsError, match="centroids contains 1 NaN"):
        assign_to_centroids(np.zeros(3), np.array([0.0, np.nan]))
    with pytest.raises(InvalidWeightsError, match="centroids is empty"):
        assign_to_centroids(np.zeros(3), np.array([]))


@settings(deadline=None, max_examples=200)
@given(st.sampled_from([np.float16, np.float32, np.float64]),
       st.lists(st.floats(-100, 100, width=16), min_size=1, max_size=40),
       st.lists(st.floats(-150, 150, allow_nan=False), min_size=1, max_size=8))
def test_sorted_sample_boundaries_match_nearest_centroid_in_float64(dtype, values, centroids):
    """Midpoints are searched in the values' own dtype (rounded down), with float64 semantics kept."""
    values = np.array(values, dtype=dtype)
    centroids = np.sort(np.array(centroids))
    sample = SortedSample.from_values(values)
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    expected = np.searchsorted(np.sort(values).astype(np.float64), midpoints, side="right")
    np.testing.assert_array_equal(sample.boundaries(centroids)[1:-1], expected)


def test_assignment_of_many_values_matches_argmin_with_repeated_unsorted_centroids():
    """Enough values to exercise the lookup table, outliers beyond the midpoints, values on midpoints."""
    rng = np.random.default_rng(4)
    centroids = np.concatenate((rng.normal(size=30), [0.5, 0.5, -3.0]))[rng.permutation(33)]
    ordered = np.unique(centroids)
    on_midpoints = (ordered[1:] + ordered[:-1]) / 2
    values = np.concatenate((rng.normal(size=60000) * 2, [1e9, -1e9, 0.5, -3.0], on_midpoints))
    for array in (values, values.astype(np.float32)):
        expected, distance = argmin_assignment(array, centroids)
        nearest = np.sort(distance, axis=1)
        clear = nearest[:, 1] - nearest[:, 0] > 1e-12 * (1 + np.abs(array.astype(np.float64)))
        got = assign_to_centroids(array, centroids)
        np.testing.assert_array_equal(got[clear], expected[clear])
        # A value on a midpoint (a tie up to rounding) goes to one of its two centroids, lowest index for that value.
        tied = ~clear
        assert tied.sum() >= len(on_midpoints) - 2
        lowest_index = {value: int(np.flatnonzero(centroids == value)[0]) for value in ordered}
        for value, index in zip(array[tied].astype(np.float64), got[tied]):
            assert lowest_index[centroids[index]] == index
            gap = abs(value - centroids[index]) - np.min(np.abs(value - centroids))
            assert gap <= 1e-12 * (1 + abs(value))
