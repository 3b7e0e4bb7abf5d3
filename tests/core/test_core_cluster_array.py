"""Whole-tensor clustering: sparsity, per-channel and grouped codebooks, importance weights, padding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from weightzip.core import ClusterConfig, ClusteredTensor, cluster_array, fit_centroids, sse

INITS = ["linear", "density", "random", "kmeans++", "optimal"]


def sparse_tensor(shape, density=0.3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=shape).astype(dtype)
    values[rng.random(shape) > density] = 0
    return values


def channel_slices(tensor, axis):
    moved = np.moveaxis(tensor, axis, 0)
    return [moved[c] for c in range(moved.shape[0])]


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("lloyd_iterations", [0, 10])
def test_preserve_sparsity_keeps_zeros_zero_and_nonzeros_nonzero(init, lloyd_iterations):
    weights = sparse_tensor((32, 24))
    config = ClusterConfig(8, init=init, lloyd_iterations=lloyd_iterations, preserve_sparsity=True, seed=1)
    decoded = cluster_array(weights, config).decode()
    assert decoded.shape == weights.shape and decoded.dtype == weights.dtype
    np.testing.assert_array_equal(decoded == 0, weights == 0)
    assert len(np.unique(decoded)) <= 8


@settings(deadline=None, max_examples=100)
@given(
    hnp.arrays(np.float32, st.integers(1, 40),
               elements=st.sampled_from([0.0, 0.0, -1.0, 1.0, 0.5]) | st.floats(-4, 4, width=32)),
    st.integers(2, 6),
    st.sampled_from(INITS),
)
def test_preserve_sparsity_holds_for_any_tensor(weights, k, init):
    """Including symmetric data, whose one nonzero cluster would otherwise have mean exactly 0."""
    decoded = cluster_array(weights, ClusterConfig(k, init=init, preserve_sparsity=True, seed=0)).decode()
    np.testing.assert_array_equal(decoded == 0, weights == 0)
    assert len(np.unique(decoded)) <= k


def test_preserve_sparsity_of_symmetric_pair_keeps_both_nonzero():
    weights = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
    decoded = cluster_array(weights, ClusterConfig(2, init="optimal", preserve_sparsity=True)).decode()
    assert decoded[1] == 0 and decoded[0] != 0 and decoded[2] != 0


def test_preserve_sparsity_reserves_a_zero_entry_per_codebook_row():
    weights = sparse_tensor((6, 40), seed=3)
    clustered = cluster_array(weights, ClusterConfig(4, axis=0, preserve_sparsity=True))
    assert clustered.codebook.shape == (6, 4)
    assert np.all(np.any(clustered.codebook == 0, axis=1))


def test_all_zero_tensor_with_preserve_sparsity():
    clustered = cluster_array(np.zeros((3, 3), np.float32), ClusterConfig(4, preserve_sparsity=True))
    np.testing.assert_array_equal(clustered.decode(), np.zeros((3, 3)))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
@pytest.mark.parametrize("init", ["linear", "optimal", "kmeans++"])
def test_per_channel_codebooks(axis, init):
    weights = np.random.default_rng(4).normal(size=(5, 6, 7)).astype(np.float32)
    weights *= np.arange(1, weights.shape[axis] + 1).reshape([-1 if d == axis % 3 else 1 for d in range(3)])
    clustered = cluster_array(weights, ClusterConfig(3, init=init, axis=axis, seed=0))
    decoded = clustered.decode()
    assert decoded.shape == weights.shape and clustered.shape == weights.shape
    assert clustered.codebook.shape == (weights.shape[axis], 3)
    assert clustered.axis == axis % 3
    assert np.all(np.diff(clustered.codebook, axis=1) >= 0)
    for channel, original in zip(channel_slices(decoded, axis), channel_slices(weights, axis)):
        assert len(np.unique(channel)) <= 3
        # Each channel gets its own fit: identical to clustering that channel alone.
        alone = cluster_array(original, ClusterConfig(3, init=init, seed=0)).decode()
        if init != "kmeans++":  # kmeans++ draws from one generator across channels
            np.testing.assert_array_equal(channel, alone)


@pytest.mark.parametrize("group_size", [1, 2, 3, 4, 10])
def test_grouped_codebooks(group_size):
    weights = np.random.default_rng(5).normal(size=(4, 10)).astype(np.float32)
    clustered = cluster_array(weights, ClusterConfig(4, init="optimal", axis=1, group_size=group_size))
    n_groups = -(-10 // group_size)
    assert clustered.codebook.shape == (n_groups, 4)
    decoded = clustered.decode()
    assert decoded.shape == weights.shape
    for group in range(n_groups):
        members = slice(group * group_size, (group + 1) * group_size)
        assert len(np.unique(decoded[:, members])) <= 4
        expected = fit_centroids(weights[:, members], 4, "optimal")
        np.testing.assert_allclose(np.unique(decoded[:, members]), np.unique(expected.astype(np.float32)))


def test_decode_is_codebook_lookup():
    codebook = np.array([[-1.0, 1.0], [10.0, 20.0]], dtype=np.float32)
    indices = np.array([[0, 1], [1, 1], [1, 0]], dtype=np.uint8)
    decoded = ClusteredTensor(codebook, indices, axis=1, group_size=1).decode()
    np.testing.assert_array_equal(decoded, [[-1.0, 20.0], [1.0, 20.0], [1.0, 10.0]])


@pytest.mark.parametrize("init", INITS)
def test_sample_weight_pulls_centroids_toward_heavy_weights(init):
    values = np.linspace(0.0, 9.0, 10).astype(np.float32)
    heavy = np.where(values >= 8, 1000.0, 1.0)
    plain = cluster_array(values, ClusterConfig(2, init=init, lloyd_iterations=20, seed=0))
    weighted = cluster_array(values, ClusterConfig(2, init=init, lloyd_iterations=20, seed=0), sample_weight=heavy)
    assert sse(values, weighted.codebook[0], sample_weight=heavy) < sse(values, plain.codebook[0], sample_weight=heavy)
    # The heavy points 8 and 9 end up far better represented than without weights.
    heavy_error = np.abs(weighted.decode() - values)[values >= 8].max()
    assert heavy_error <= 0.51
    assert heavy_error < np.abs(plain.decode() - values)[values >= 8].max()


def test_per_channel_sample_weight_follows_the_channel_axis():
    values = np.tile(np.arange(6, dtype=np.float64), (3, 1)).T  # (6, 3): every channel along axis 1 is 0..5
    importance = np.ones_like(values)
    importance[5, 2] = 1e6  # channel 2 must represent 5.0 exactly
    clustered = cluster_array(values, ClusterConfig(2, init="optimal", axis=1), sample_weight=importance)
    assert clustered.decode()[5, 2] == pytest.approx(5.0, abs=1e-3)
    assert clustered.decode()[5, 0] != pytest.approx(5.0, abs=1e-3)


def test_group_with_fewer_distinct_values_than_k_is_padded_exactly():
    weights = np.array([[1.0, 1.0, 2.0], [0.0, 3.0, 4.0]], dtype=np.float32)
    clustered = cluster_array(weights, ClusterConfig(4, init="optimal", axis=0))
    np.testing.assert_array_equal(clustered.codebook[0], [1.0, 2.0, 2.0, 2.0])
    np.testing.assert_array_equal(clustered.decode(), weights)


@pytest.mark.parametrize("init", INITS)
def test_padding_counts_only_values_of_positive_weight(init):
    values = np.array([1.0, 2.0, 3.0, 4.0])
    importance = np.array([1.0, 1.0, 0.0, 0.0])
    clustered = cluster_array(values, ClusterConfig(3, init=init, lloyd_iterations=2, seed=0),
                              sample_weight=importance)
    np.testing.assert_array_equal(clustered.codebook[0], [1.0, 2.0, 2.0])
    np.testing.assert_array_equal(clustered.decode()[:2], [1.0, 2.0])


def test_group_of_zero_importance_is_fitted_unweighted():
    values = np.array([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    importance = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    clustered = cluster_array(values, ClusterConfig(2, init="optimal", axis=0), sample_weight=importance)
    np.testing.assert_array_equal(clustered.codebook[0], clustered.codebook[1])


def test_same_seed_same_result_for_random_inits():
    weights = np.random.default_rng(8).normal(size=(8, 16)).astype(np.float32)
    config = ClusterConfig(5, init="kmeans++", axis=0, seed=123)
    a, b = cluster_array(weights, config), cluster_array(weights, config)
    np.testing.assert_array_equal(a.codebook, b.codebook)
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_codebook_keeps_the_tensor_dtype(dtype):
    weights = np.random.default_rng(9).normal(size=(10, 10)).astype(dtype)
    clustered = cluster_array(weights, ClusterConfig(16, init="optimal"))
    assert clustered.codebook.dtype == dtype and clustered.decode().dtype == dtype
    assert clustered.indices.dtype == np.uint8 and clustered.number_of_clusters == 16


def test_index_dtype_widens_past_256_clusters():
    weights = np.random.default_rng(10).normal(size=2000).astype(np.float32)
    clustered = cluster_array(weights, ClusterConfig(300, init="optimal"))
    assert clustered.indices.dtype == np.uint16
    assert len(np.unique(clustered.decode())) <= 300


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.uint8, np.uint16, np.int64])
def test_one_row_decode_is_a_lookup_and_refuses_indices_out_of_range(dtype, index_dtype):
    from weightzip.core import ClusteredTensor

    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(1, 5)).astype(dtype)
    indices = rng.integers(0, 5, size=(7, 9)).astype(index_dtype)
    decoded = ClusteredTensor(codebook, indices).decode()
    assert decoded.dtype == dtype and decoded.shape == (7, 9)
    np.testing.assert_array_equal(decoded, codebook[0][indices.astype(np.int64)])
    indices[3, 4] = 5
    with pytest.raises(IndexError):
        ClusteredTensor(codebook, indices).decode()
