"""Assignment of weights to their nearest centroid in O(n log k), without an n × k distance matrix."""

from __future__ import annotations

import numpy as np

from weightzip.core.validation import as_weight_array


def index_dtype(k: int) -> np.dtype:
    """Smallest unsigned integer dtype able to index a codebook of k entries."""
    if k <= 1 << 8:
        return np.dtype(np.uint8)
    if k <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def assign_to_centroids(values, centroids) -> np.ndarray:
    """Index of the nearest centroid for every value (same shape as `values`).

    Binary search of each value among the midpoints of the sorted centroids; on an exact tie the lower
    centroid wins, as with ``argmin``. Centroids need not be sorted; indices refer to their given order.
    """
    array = as_weight_array(values)
    codebook = as_weight_array(centroids, name="centroids").ravel().astype(np.float64)
    order = np.argsort(codebook, kind="stable")
    ordered = codebook[order]
    midpoints = (ordered[1:] + ordered[:-1]) / 2.0
    positions = np.searchsorted(midpoints, array, side="left")
    return order.astype(index_dtype(codebook.shape[0]))[positions]
