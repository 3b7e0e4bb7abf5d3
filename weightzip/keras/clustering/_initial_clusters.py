"""Initial codebooks for a layer's kernels, computed by :mod:`weightzip.core` (never re-implemented here)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weightzip.core import InvalidClusterCountError, cluster_array, fit_centroids
from weightzip.keras.clustering.config import ClusteringParams, Reassignment


@dataclass(frozen=True)
class InitialClusters:
    """Codebook ``(groups, k)`` (rows sorted), per-weight indices when needed, and the sparsity pin."""

    codebook: np.ndarray
    indices: np.ndarray | None
    centroid_pin: np.ndarray | None
    sparsity_mask: np.ndarray | None


# Codebook rows of at most this many entries store each weight's index in one byte.
MAX_BYTE_INDEXED_CLUSTERS = 256


def pulling_index_dtype(number_of_clusters: int):
    """The stored index type: uint8 up to 256 clusters per row (a quarter of int32's bytes for every
    fixed-assignment step to read), else int32."""
    return np.uint8 if number_of_clusters <= MAX_BYTE_INDEXED_CLUSTERS else np.int32


def initial_clusters(kernel: np.ndarray, params: ClusteringParams, channel_axis: int) -> InitialClusters:
    """Cluster `kernel` as `params` asks, with the core.

    Indices are only computed when they are stored (``Reassignment.FIXED``); otherwise the forward
    pass assigns the weights itself, and a per-tensor codebook is just :func:`fit_centroids`, which
    for LINEAR initialisation reads the kernel once (a 4096 × 4096 kernel in ~20 ms).
    """
    axis = channel_axis if params.cluster_per_channel else None
    need_indices = params.reassignment is Reassignment.FIXED
    if axis is None and not need_indices and not params.preserve_sparsity:
        try:
            centroids = fit_centroids(kernel, params.number_of_clusters, params.cluster_centroids_init,
                                      seed=params.seed)
            return InitialClusters(centroids.astype(kernel.dtype)[None, :], None, None, None)
        except InvalidClusterCountError:
            pass  # fewer distinct values than k: cluster_array represents them exactly
    clustered = cluster_array(kernel, params.spec.cluster_config(channel_axis))
    codebook = clustered.codebook.astype(kernel.dtype)
    indices = clustered.indices.astype(pulling_index_dtype(codebook.shape[1])) if need_indices else None
    if not params.preserve_sparsity:
        return InitialClusters(codebook, indices, None, None)
    pin = (codebook != 0).astype(kernel.dtype)
    mask = (kernel != 0).astype(kernel.dtype)
    return InitialClusters(codebook, indices, pin, mask)
