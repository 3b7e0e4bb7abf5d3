"""Builders of clustered and plain tensors for the .wz tests (imported by the test modules)."""

from __future__ import annotations

import numpy as np

from weightzip.core import ClusteredTensor, index_dtype


def random_clustered(shape, k, *, density=1.0, axis=None, group_size=1, dtype=np.float32, seed=0,
                     index_type=None) -> ClusteredTensor:
    """Sorted random codebook(s) with one exact zero, indices hitting the zero slot at 1 - density."""
    rng = np.random.default_rng(seed)
    groups = 1 if axis is None else -(-shape[axis] // group_size)
    codebook = np.sort(rng.normal(size=(groups, k)), axis=1).astype(dtype)
    zero_slot = rng.integers(0, k, size=groups)
    codebook[np.arange(groups), zero_slot] = 0
    codebook.sort(axis=1)
    zero_slot = np.argmax(codebook == 0, axis=1)
    indices = rng.integers(0, k, size=shape).astype(index_type or index_dtype(k))
    layout = ClusteredTensor(codebook, indices, axis, group_size)
    group = np.broadcast_to(layout.group_of_each_weight(), shape)
    pruned = rng.random(shape) >= density
    indices[pruned] = zero_slot[group[pruned]]
    return ClusteredTensor(codebook, indices, axis, group_size)


def pruned_array(shape, density, *, dtype=np.float32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=shape).astype(dtype)
    values[rng.random(shape) >= density] = 0
    return values


def assert_same_tensors(actual: dict, expected: dict) -> None:
    """Bit-exact equality of two name -> ClusteredTensor / array dicts, dtypes and order included."""
    assert list(actual) == list(expected)
    for name, want in expected.items():
        got = actual[name]
        if isinstance(want, ClusteredTensor):
            assert isinstance(got, ClusteredTensor), name
            assert got.codebook.dtype == want.codebook.dtype, name
            assert got.codebook.tobytes() == np.ascontiguousarray(want.codebook).tobytes(), name
            assert got.indices.dtype == want.indices.dtype and got.indices.shape == want.indices.shape, name
            assert np.array_equal(got.indices, want.indices), name
            assert (got.axis, got.group_size) == (want.axis, want.group_size), name
        else:
            want = np.asarray(want)
            assert isinstance(got, np.ndarray), name
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.tobytes() == np.ascontiguousarray(want).tobytes(), name
