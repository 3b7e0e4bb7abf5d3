"""The all-rows-at-once exact k-means agrees with the one-row exact solver, for every k of one DP."""

import numpy as np
import pytest

from weightzip.core import ClusterConfig, cluster_array
from weightzip.core.allocation import weighted_error
from weightzip.core.rowwise import cluster_rows


@pytest.mark.parametrize("group_size", [1, 3])
def test_rows_match_the_exact_solver_for_every_k(group_size):
    rng = np.random.default_rng(0)
    weights = rng.standard_t(3, size=(10, 4, 3, 3)).astype(np.float32)  # 10 channels: last group shorter for 3
    importance = rng.gamma(0.5, size=weights.shape)
    importance[0] = 0.0  # a channel without importance still gets a valid clustering
    results = cluster_rows(weights, 0, group_size, [2, 3, 5, 8], sample_weight=importance)
    for k, (clustered, error) in results.items():
        reference = cluster_array(weights, ClusterConfig(k, init="optimal", axis=0, group_size=group_size),
                                  sample_weight=importance)
        assert clustered.codebook.shape == reference.codebook.shape
        assert np.all(np.diff(clustered.codebook, axis=1) >= 0)
        ours = weighted_error(weights, clustered.decode(), importance)
        assert ours == pytest.approx(error, rel=1e-9)
        assert ours <= weighted_error(weights, reference.decode(), importance) * (1 + 1e-6) + 1e-9


def test_rows_shorter_than_k_are_exact():
    weights = np.arange(12, dtype=np.float32).reshape(4, 3)
    clustered, error = cluster_rows(weights, 0, 1, [4])[4]
    assert error == 0.0 and np.array_equal(clustered.decode(), weights)


def test_long_rows_match_the_exact_solver_through_both_search_orders():
    """Rows of 300 weights up to k = 40: early layers by divide and conquer, later ones (8 j² >= n) in Knuth's
    order; every k as exact as the one-row solver."""
    rng = np.random.default_rng(1)
    weights = rng.standard_t(4, size=(3, 300)).astype(np.float32)
    importance = rng.gamma(0.7, size=weights.shape)
    for k, (clustered, error) in cluster_rows(weights, 0, 1, [2, 6, 16, 40], sample_weight=importance).items():
        reference = cluster_array(weights, ClusterConfig(k, init="optimal", axis=0), sample_weight=importance)
        ours = weighted_error(weights, clustered.decode(), importance)
        assert ours == pytest.approx(error, rel=1e-9)
        assert ours <= weighted_error(weights, reference.decode(), importance) * (1 + 1e-6) + 1e-9
