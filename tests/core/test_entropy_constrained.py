"""Entropy-constrained per-tensor codebooks: rates met by the writer's coded indices, less error than k-means at the
same coded size, sensitivities honoured, and the allocation using them."""

import dataclasses

import numpy as np
import pytest

from weightzip.core.allocation import (
    Candidates,
    TensorToCompress,
    allocate,
    rate_distortion_curves,
    stored_bytes,
    weighted_error,
    write_options_for,
)
from weightzip.core.assign import assign_to_centroids
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.entropy_constrained import entropy_constrained
from weightzip.core.errors import WeightzipError
from weightzip.core.optimal import optimal_partitions

OPTIONS = write_options_for(Candidates())


def _bits(clustered, size):
    return 8.0 * stored_bytes("t", clustered, OPTIONS) / size


def _laplace(n=60_000, seed=0):
    return np.random.default_rng(seed).laplace(scale=0.02, size=(n // 200, 200)).astype(np.float32)


def test_coded_size_follows_the_rate_asked_for():
    values = np.random.default_rng(1).normal(size=(100, 200)).astype(np.float32)
    found = entropy_constrained(values, (2.0, 3.0, 4.0))
    assert sorted(found) == [2.0, 3.0, 4.0]
    for rate, clustered in found.items():
        assert clustered.decode().shape == values.shape
        assert abs(_bits(clustered, values.size) - rate) < 0.2
        assert clustered.codebook.shape[1] > 2 ** rate  # more cells than a fixed-length code of that rate


def test_less_error_than_optimal_kmeans_at_the_same_coded_size():
    values = _laplace()
    kmeans = []
    for k, partition in optimal_partitions(values, [4, 6, 8, 12, 16, 24, 32]).items():
        codes = assign_to_centroids(values.ravel(), partition.centroids).reshape(values.shape)
        clustered = ClusteredTensor(partition.centroids.astype(np.float32)[None, :], codes.astype(np.uint8), None, 1)
        kmeans.append((_bits(clustered, values.size), weighted_error(values, clustered.decode(), None)))
    for rate, clustered in entropy_constrained(values, (2.5, 3.0, 3.5)).items():
        bits, error = _bits(clustered, values.size), weighted_error(values, clustered.decode(), None)
        # k-means' error at that size, interpolated in log(error) between the k-means points around it
        (b0, e0), (b1, e1) = max((p for p in kmeans if p[0] <= bits)), min((p for p in kmeans if p[0] > bits))
        interpolated = np.exp(np.log(e0) + (np.log(e1) - np.log(e0)) * (bits - b0) / (b1 - b0))
        assert error < 0.85 * interpolated, (rate, bits, error, interpolated)


def test_sensitivities_weigh_the_error():
    values = _laplace(40_000, seed=2)
    importance = np.where(np.abs(values) > 0.03, 100.0, 0.01)  # the tails matter, the bulk hardly
    weighted = entropy_constrained(values, (3.0,), sample_weight=importance)[3.0]
    size = _bits(weighted, values.size)
    # the unweighted partition with at least that coded size still has more sensitivity-weighted error
    plain = [c for c in entropy_constrained(values, np.arange(2.5, 4.5, 0.1)).values()
             if _bits(c, values.size) >= size][0]
    assert weighted_error(values, weighted.decode(), importance) < 0.7 * weighted_error(values, plain.decode(),
                                                                                           importance)


def test_cell_limit_and_bad_input():
    values = _laplace(20_000, seed=3)
    assert entropy_constrained(values, (6.0,), max_clusters=8) == {}
    assert entropy_constrained(np.full((10, 10), 0.5, np.float32), (3.0,)) == {}
    with pytest.raises(WeightzipError, match="float"):
        entropy_constrained(np.arange(10), (3.0,))
    with pytest.raises(WeightzipError, match="sample_weight"):
        entropy_constrained(values, (3.0,), sample_weight=-np.ones(values.shape))
    with pytest.raises(WeightzipError, match="entropy_rates"):
        Candidates(entropy_rates=(0.0,))


def test_allocation_at_the_same_budget_has_less_error_with_them():
    rng = np.random.default_rng(4)
    tensors = [TensorToCompress(f"t{i}", (rng.standard_t(4, size=(64, 256)) * scale).astype(np.float32),
                                rng.gamma(2.0, size=(64, 256)) * scale, 0)
               for i, scale in enumerate((0.5, 1.0, 2.0))]
    candidates = Candidates(clusters=(4, 8, 16, 32), granularities=("tensor", "channel"))
    without = allocate(rate_distortion_curves(tensors, dataclasses.replace(candidates, entropy_rates=())),
                       bits_per_weight=3.0)
    with_them = allocate(rate_distortion_curves(tensors, candidates), bits_per_weight=3.0)
    assert with_them.total_bytes <= 3.0 * sum(t.size for t in tensors) / 8
    assert with_them.estimated_error < 0.9 * without.estimated_error
    for name, choice in with_them.choices.items():  # the stored tensor is exactly the one whose error was counted
        tensor = next(t for t in tensors if t.name == name)
        assert np.isclose(choice.weighted_error, weighted_error(tensor.weights, choice.stored.decode(),
                                                                tensor.importance), rtol=1e-6)
