"""Assignment of weights to their nearest centroid in O(n), without an n × k distance matrix."""

from __future__ import annotations

import numba
import numpy as np

from weightzip.core.validation import as_weight_array

_CELLS_PER_CENTROID = 4  # lookup-table resolution: about one midpoint comparison per value


def index_dtype(k: int) -> np.dtype:
    """Smallest unsigned integer dtype able to index a codebook of k entries."""
    if k <= 1 << 8:
        return np.dtype(np.uint8)
    if k <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def assign_to_centroids(values, centroids) -> np.ndarray:
    """Index of the nearest centroid for every value (same shape as `values`).

    Each value is placed among the midpoints of the sorted centroids (a value exactly on a midpoint goes
    to the smaller centroid); a lookup table over [first, last midpoint] starts each search next to its
    answer, so the pass costs about one comparison per value. Centroids need not be sorted and may
    repeat; indices refer to their given order and, as with ``argmin``, an exact tie goes to the lowest
    index.
    """
    array = as_weight_array(values)
    codebook = as_weight_array(centroids, name="centroids").ravel().astype(np.float64)
    order = np.argsort(codebook, kind="stable")
    ordered = codebook[order]
    # Repeated centroids: every copy answers with the lowest index holding that value.
    first_copy = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    order = order[np.maximum.accumulate(np.where(first_copy, np.arange(order.shape[0]), 0))]
    midpoints = (ordered[1:] + ordered[:-1]) / 2.0
    # A value exactly on a midpoint goes to the smaller centroid, unless argmin prefers the upper one's index.
    upper_wins = order[1:] < order[:-1]
    out = np.empty(array.size, dtype=index_dtype(codebook.shape[0]))
    if midpoints.shape[0] == 0:
        out.fill(order[0])
        return out.reshape(array.shape)
    cells = max(1, _CELLS_PER_CENTROID * midpoints.shape[0])
    low, high = float(midpoints[0]), float(midpoints[-1])
    scale = (cells / (high - low)) if high > low else 0.0
    edges = low + np.arange(cells) / scale if scale else np.full(cells, low)
    start = np.searchsorted(midpoints, edges, side="left").astype(np.int64)
    flat = np.ascontiguousarray(array).ravel()
    if flat.dtype.itemsize < 4:  # numba has no float16: widen (exactly)
        flat = flat.astype(np.float32)
    _assign_kernel(flat, midpoints, upper_wins, order.astype(out.dtype),
                   start, low, scale, out)
    return out.reshape(array.shape)


@numba.njit(cache=True, nogil=True)
def _assign_kernel(values, midpoints, upper_wins, order, start, low, scale, out):
    """out[i] = order[number of midpoints < values[i]] (+1 on a midpoint where the upper centroid wins).

    The table guess `start[cell]` is only a starting point: the scan moves down or up until the count is
    exact, so rounding in the table never changes an answer.
    """
    last = midpoints.shape[0]
    cells = start.shape[0]
    for i in range(values.shape[0]):
        x = np.float64(values[i])
        c = (x - low) * scale
        if c < 0.0:
            position = 0
        else:
            cell = int(c) if c < cells else cells - 1
            position = start[cell]
        if position < last:  # most cells hold at most one midpoint: one step up, without a branch to mispredict
            position += midpoints[position] < x
        while position > 0 and midpoints[position - 1] >= x:
            position -= 1
        while position < last and midpoints[position] < x:
            position += 1
        if position < last and upper_wins[position] and midpoints[position] == x:
            position += 1
        out[i] = order[position]
