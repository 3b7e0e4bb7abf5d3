"""The numba kernels behind the PyTorch and JAX clustered kernel (clustering/_numba_kernels.py), on
NumPy arrays: the search equals the core's nearest-centroid assignment (ties to the lower centroid) on
each of its paths, and the centroid gradient equals a bincount."""

import numpy as np
import pytest

from weightzip.core import assign_to_centroids
from weightzip.keras.clustering import _numba_kernels as kernels


def search(weights, codebook, inner=1, index_dtype=np.int32):
    """(clustered, index) of the kernels for a (groups, k) codebook with ascending rows."""
    midpoints = ((codebook[:, 1:] + codebook[:, :-1]) / 2).astype(weights.dtype)
    out, index = np.empty_like(weights), np.empty(weights.shape, index_dtype)
    kernels.assign_and_look_up(weights, midpoints, codebook.reshape(-1), inner, out, index)
    return out, index


@pytest.mark.parametrize("k", [1, 2, 16, 32, 40, 256], ids=lambda k: f"k{k}")
def test_per_tensor_search_is_the_core_assignment(k):
    """Sizes that are not a multiple of the block or chunk; weights exactly on midpoints (ties: centroids
    on a 1/16 grid, so that float32 and the core's float64 midpoints are the same number)."""
    rng = np.random.default_rng(k)
    grid = np.arange(-64, 64) / 16 if k <= 64 else np.arange(-256, 256) / 64  # (k = 256: the swept count)
    codebook = np.sort(rng.choice(grid, size=k, replace=False)).astype(np.float32)[None]
    weights = rng.normal(size=200_003).astype(np.float32)
    weights[: k - 1] = (codebook[0, 1:] + codebook[0, :-1]) / 2
    weights[k - 1] = codebook[0, -1]  # (every centroid has a member)
    out, index = search(weights, codebook)
    expected = assign_to_centroids(weights, codebook[0])
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(out, codebook[0][expected])
    if k > 1:
        assert np.count_nonzero(np.bincount(index, minlength=k)) == k


@pytest.mark.parametrize("k", [6, 40], ids=["counted", "binary_search"])
def test_per_channel_search_uses_each_weights_row(k):
    """A C-ordered (rows, channels, inner) kernel with the channel axis in the middle."""
    rng = np.random.default_rng(1)
    channels, inner = 5, 7
    codebook = np.sort(rng.normal(size=(channels, k)).astype(np.float32), axis=1)
    kernel = rng.normal(size=(300, channels, inner)).astype(np.float32)
    out, index = search(kernel.reshape(-1), codebook, inner=inner)
    for channel in range(channels):
        values = kernel[:, channel, :]
        expected = assign_to_centroids(values, codebook[channel])
        np.testing.assert_array_equal(index.reshape(kernel.shape)[:, channel, :], channel * k + expected)
        np.testing.assert_array_equal(out.reshape(kernel.shape)[:, channel, :], codebook[channel][expected])


def test_search_writes_byte_indices():
    rng = np.random.default_rng(2)
    codebook = np.sort(rng.normal(size=(1, 16)).astype(np.float32), axis=1)
    weights = rng.normal(size=70_000).astype(np.float32)
    out, index = search(weights, codebook, index_dtype=np.uint8)
    np.testing.assert_array_equal(index, assign_to_centroids(weights, codebook[0]))


@pytest.mark.parametrize("average", [False, True], ids=["sum", "mean"])
@pytest.mark.parametrize("index_dtype", [np.uint8, np.int32])
def test_segment_sums_equal_a_bincount(average, index_dtype):
    rng = np.random.default_rng(3)
    size = 16
    values = rng.normal(size=300_001).astype(np.float32)
    index = rng.integers(0, size, values.size).astype(index_dtype)
    index[:5] = size + 3  # outside the table: ignored
    out = np.empty(size, np.float32)
    kernels.segment_sums_into(values, index, average, out)
    inside = index < size
    expected = np.bincount(index[inside], values[inside].astype(np.float64), minlength=size)
    if average:
        expected = expected / np.maximum(np.bincount(index[inside], minlength=size), 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_look_up_marks_indices_outside_the_table():
    table = np.array([0.5, -1.0, 2.0], np.float32)
    index = np.array([2, 0, 3, 1, -1], np.int32)
    out = np.empty(5, np.float32)
    assert kernels.look_up(table, index, out) == 2
    np.testing.assert_array_equal(out[[0, 1, 3]], [2.0, 0.5, -1.0])
    assert np.isnan(out[2]) and np.isnan(out[4])


def test_ffi_kernels_only_on_a_jaxlib_whose_call_frame_layout_was_checked(monkeypatch):
    """The FFI handlers read XLA's 0.x C-API call frame at fixed offsets: another jaxlib takes the portable path."""
    import jaxlib
    import keras

    from weightzip.keras.clustering import _jax_lookup

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    weights, table = np.zeros(8, np.float32), np.zeros(4, np.float32)
    assert _jax_lookup.applies(weights, table) == (jaxlib.__version__ in _jax_lookup.TESTED_JAXLIB)
    monkeypatch.setattr(_jax_lookup, "TESTED_JAXLIB", ())
    assert not _jax_lookup.applies(weights, table)
    monkeypatch.setattr(_jax_lookup, "TESTED_JAXLIB", (jaxlib.__version__,))
    assert _jax_lookup.applies(weights, table)
    assert not _jax_lookup.applies(weights.astype(np.float64), table)
