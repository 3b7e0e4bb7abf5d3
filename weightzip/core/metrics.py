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
    """SSE of `centroids` divided by the optimal SSE for the same k (1.0 means optimal).

    `optimum` may be passed when already known; otherwise the exact optimum is computed.
    """
    from weightzip.core.optimal import optimal_centroids

    codebook = np.asarray(centroids, dtype=np.float64).ravel()
    if optimum is None:
        best = optimal_centroids(values, codebook.shape[0], sample_weight=sample_weight)
        optimum = sse(values, best, sample_weight=sample_weight)
    achieved = sse(values, codebook, sample_weight=sample_weight)
    if optimum == 0.0:
        return 1.0 if achieved == 0.0 else float("inf")
    return achieved / optimum
