"""The faster kernels of the JAX step (clustering/_numba_fast.py) give the results of clustering/_numba_kernels.py
(themselves tested against the core's assignment and a bincount), serially (one chunk) and in parallel chunks."""

import numba
import numpy as np
import pytest

from weightzip.core import assign_to_centroids
from weightzip.keras.clustering import _numba_avx512
from weightzip.keras.clustering import _numba_fast as fast
from weightzip.keras.clustering import _numba_kernels as reference

# Serial below fast.SERIAL_BELOW weights (the reference kernels split from 2 x 65536): one size under both
# thresholds, one that the reference splits and the fast kernels do not, one that both split.
SIZES = {"one_chunk": 30_001, "serial": 300_007, "chunks": fast.SERIAL_BELOW + 7}


def both_searches(weights, midpoints, table, index_dtype=np.uint8):
    results = []
    for kernel in (reference.assign_and_look_up, fast.search_and_look_up):
        out, index = np.empty_like(weights), np.empty(weights.shape, index_dtype)
        kernel(weights, midpoints, table, 1, out, index)
        results.append((out, index))
    # The fast search without `out` (the indices alone) finds the same indices.
    index_alone = np.empty(weights.shape, index_dtype)
    fast.search_and_look_up(weights, midpoints, table, 1, None, index_alone)
    np.testing.assert_array_equal(index_alone, results[1][1])
    return results


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("k", [1, 2, 7, 16, 17], ids=lambda k: f"k{k}")
def test_search_is_the_reference_search(k, size):
    """Centroids on a 1/16 grid and weights exactly on their midpoints (ties to the lower centroid), +-inf, NaN."""
    rng = np.random.default_rng(k)
    table = (np.sort(rng.choice(np.arange(-64, 64), size=k, replace=False)) / 16).astype(np.float32)
    midpoints = ((table[1:] + table[:-1]) / 2)[None]
    weights = rng.normal(size=size).astype(np.float32)
    weights[: k - 1] = midpoints[0]
    weights[-3:] = [np.inf, -np.inf, np.nan]
    (out, index), (fast_out, fast_index) = both_searches(weights, midpoints, table)
    np.testing.assert_array_equal(fast_index, index)
    np.testing.assert_array_equal(fast_out, out)
    np.testing.assert_array_equal(fast_index[:-3], assign_to_centroids(weights[:-3], table))


def test_search_with_a_pinned_zero_and_midpoints_out_of_order():
    """+inf midpoints (the pinned zero sorts last) keep the register search; midpoints out of order take the
    reference path, so both count the midpoints below each weight."""
    rng = np.random.default_rng(5)
    weights = rng.normal(size=70_000).astype(np.float32)
    pinned = np.array([[-1.0, -0.25, 0.5, np.inf, np.inf]], np.float32)
    unordered = np.array([[-1.0, 0.5, -0.25, 1.0]], np.float32)
    for midpoints in (pinned, unordered):
        table = np.arange(midpoints.shape[1] + 1, dtype=np.float32)
        (out, index), (fast_out, fast_index) = both_searches(weights, midpoints, table, np.int32)
        np.testing.assert_array_equal(fast_index, index)
        np.testing.assert_array_equal(fast_out, out)
        np.testing.assert_array_equal(index, (weights[:, None] > midpoints[0]).sum(axis=1))


@pytest.mark.skipif(not _numba_avx512.AVX512, reason="numba does not compile for an AVX-512 CPU here")
@pytest.mark.parametrize("index_dtype", [np.uint8, np.int32, np.int64])
def test_the_avx512_search_is_the_select_chain(index_dtype):
    """16 weights at a time (binary search by vpermps) = the chain, on ranges that start and end off a multiple
    of 16, with weights on every midpoint, beside them by one ulp, +-inf, NaN, and +inf / NaN padded midpoints."""
    rng = np.random.default_rng(11)
    for k in (1, 2, 5, 16):
        table = np.sort(rng.normal(size=16)).astype(np.float32)
        midpoints = np.full(16, np.inf, np.float32)
        midpoints[: k - 1] = (table[1:k] + table[: k - 1]) / 2
        if k == 5:
            midpoints[4:] = np.nan  # NaN padding: compares false, as +inf
        weights = rng.normal(size=1003).astype(np.float32)
        edges = midpoints[: k - 1]
        weights[: 3 * (k - 1)] = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
        weights[-3:] = [np.inf, -np.inf, np.nan]
        rng.shuffle(weights[:-3])
        for first, last in ((0, 1003), (5, 999), (16, 32), (3, 10)):
            results = []
            for kernel in (fast._register_search_chain, fast._register_search):  # the chain; 16 at a time
                out, index = np.full(1003, -7.0, np.float32), np.full(1003, 99, index_dtype)
                kernel(weights, midpoints, table, out, index, first, last)
                results.append((out, index))
            (out, index), (vector_out, vector_index) = results
            np.testing.assert_array_equal(vector_index, index)
            np.testing.assert_array_equal(vector_out, out)
            assert (vector_out[:first] == -7.0).all() and (vector_out[last:] == -7.0).all()  # nothing outside
            expected = (weights[first:last, None] > midpoints[None, : k - 1]).sum(axis=1)
            np.testing.assert_array_equal(index[first:last], expected)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("index_dtype", [np.uint8, np.int16, np.int32, np.int64])  # int64: the checked blocks only
@pytest.mark.parametrize("entries", [5, 16, 40], ids=lambda k: f"table{k}")  # <= 16: the vector look-ups too
@pytest.mark.parametrize("outside_at", ["spread", "late", "none"])
def test_look_up_is_the_reference_look_up(index_dtype, size, entries, outside_at):
    """Indices outside the table (NaN, counted) from the first block on, only near the end (the vector look-up
    checks the range as it goes and redoes a block with one outside), or nowhere."""
    rng = np.random.default_rng(6)
    table = rng.normal(size=entries).astype(np.float32)
    index = rng.integers(0, entries, size).astype(index_dtype)
    if outside_at == "spread":
        index[::10_007] = 200
        if np.issubdtype(index_dtype, np.signedinteger):
            index[7] = -1
    elif outside_at == "late":
        index[-600] = entries  # the first index outside
        if np.issubdtype(index_dtype, np.signedinteger):
            index[-5000] = -1
        if index_dtype == np.int64:
            index[-700] = 2**32 + 3  # outside, though its low 32 bits are inside
    out, fast_out = np.full(size, 7.0, np.float32), np.empty(size, np.float32)
    outside = reference.look_up(table, index, out)
    assert fast.look_up_checked(table, index, fast_out) == outside
    assert (outside > 0) == (outside_at != "none")
    np.testing.assert_array_equal(fast_out, out)  # NaN where outside, on both


@pytest.mark.skipif(not _numba_avx512.AVX512, reason="numba does not compile for an AVX-512 CPU here")
@pytest.mark.parametrize("index_dtype", [np.uint8, np.int32, np.int64])
def test_the_avx512_segment_sums_add_each_value_to_its_index_and_lane(index_dtype):
    """256 values a call into partial[16 * index + lane], lane = position % 16, from `first` to the last whole call;
    what was in `partial` is kept. A wrong lane, index or offset fails it."""
    rng = np.random.default_rng(12)
    values = rng.normal(size=1100).astype(np.float32)
    index = rng.integers(0, 16, 1100).astype(index_dtype)
    partial = rng.normal(size=256).astype(np.float32)
    expected = partial.astype(np.float64)
    first = 32
    end = _segment_sums_vector_jitted(values, index, partial, first, 1100)
    assert end == first + 4 * 256
    np.add.at(expected, 16 * index[first:end].astype(np.int64) + np.arange(first, end) % 16, values[first:end])
    np.testing.assert_allclose(partial, expected, rtol=1e-5, atol=1e-5)


@numba.njit
def _segment_sums_vector_jitted(values, index, partial, first, last):
    return _numba_avx512.segment_sums_vector(values, index, partial, first, last)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("average", [False, True], ids=["sum", "mean"])
@pytest.mark.parametrize("index_dtype", [np.uint8, np.int32])
@pytest.mark.parametrize("entries", [16, 5, 40])
def test_segment_sums_equal_a_bincount(index_dtype, average, size, entries):
    rng = np.random.default_rng(7)
    values = rng.normal(size=size).astype(np.float32)
    index = rng.integers(0, entries, size).astype(index_dtype)
    index[:5] = entries + 3  # outside the table (the vector form's first call, and its scalar rest): ignored
    index[-3:] = entries + 3
    index[size // 2] = 200
    if index_dtype == np.int32:
        index[size // 3] = -1
    out = np.empty(entries, np.float32)
    fast.segment_sums(values, index, average, out)
    inside = (index >= 0) & (index < entries)
    expected = np.bincount(index[inside], values[inside].astype(np.float64), minlength=entries)
    if average:
        expected = expected / np.maximum(np.bincount(index[inside], minlength=entries), 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
