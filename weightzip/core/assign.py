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

    Binary search of each value among the midpoints of the sorted centroids. Centroids need not be sorted
    and may repeat; indices refer to their given order and, as with ``argmin``, an exact tie goes to the
    lowest index.
    """
    array = as_weight_array(values)
    codebook = as_weight_array(centroids, name="centroids").ravel().astype(np.float64)
    order = np.argsort(codebook, kind="stable")
    ordered = codebook[order]
    # Repeated centroids: every copy answers with the lowest index holding that value.
    first_copy = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    order = order[np.maximum.accumulate(np.where(first_copy, np.arange(order.shape[0]), 0))]
    midpoints = (ordered[1:] + ordered[:-1]) / 2.0
    positions = np.searchsorted(midpoints, array, side="left")
    # A value exactly on a midpoint went to the smaller centroid; argmin takes the lower index instead.
    upper_wins = order[1:] < order[:-1]
    if upper_wins.any():
        on_midpoint = array == midpoints[np.minimum(positions, midpoints.shape[0] - 1)]
        positions = positions + (on_midpoint & upper_wins[np.minimum(positions, midpoints.shape[0] - 1)]
                                 & (positions < midpoints.shape[0]))
    return order.astype(index_dtype(codebook.shape[0]))[positions]
