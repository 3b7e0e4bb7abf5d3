"""Quality measures of a clustering: squared error, and its ratio to the optimum."""

from __future__ import annotations

import numpy as np

from weightzip.core.assign import assign_to_centroids
from weightzip.core.validation import as_sample_weight, as_weight_array


def sse(values, centroids, *, sample_weight=None) -> float:
    """Σ w·(x − nearest centroid)², the k-means objective."""
    array = as_weight_array(values)
    importance = as_sample_weight(sample_weight, array.shape)
    codebook = np.asarray(centroids, dtype=np.float64).ravel()
    error = array.astype(np.float64) - codebook[assign_to_centroids(array, codebook)]
    error *= error
    return float(error.sum() if importance is None else (error * importance).sum())


def relative_sse(values, centroids, *, sample_weight=None, optimum: float | None = None) -> float:
    """SSE of `centroids` divided by the optimal SSE for the same k (1.0 means optimal, up to rounding).

    `optimum` may be passed when already known; otherwise the exact optimum is computed by the exact
    solver on the distinct values (``optimal_partition(..., max_atoms=None)``), never by the binned default
    that :func:`~weightzip.core.optimal.optimal_centroids` uses on large float32 arrays, so a clustering
    better than the binned solution still scores >= 1. That solver needs k × distinct-values int32 split
    points and refuses above 1 GiB: for such arrays pass `optimum`.
    """
    from weightzip.core.optimal import optimal_partition

    codebook = np.asarray(centroids, dtype=np.float64).ravel()
    if optimum is None:
        optimum = optimal_partition(values, codebook.shape[0], sample_weight=sample_weight, max_atoms=None).sse
    achieved = sse(values, codebook, sample_weight=sample_weight)
    if optimum == 0.0:
        return 1.0 if achieved == 0.0 else float("inf")
    return achieved / optimum
