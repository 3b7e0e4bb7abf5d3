"""The per-step codebook work of the PyTorch clustered kernel in numba: one call each way, no tensor ops.

- :func:`sort_rows`: each codebook row in ascending order of its search key (the centroid; +inf for a
  pinned zero), as :func:`.ops.clustered_kernel`'s portable path (a stable argsort, NaN last), with the
  sorted table values, their midpoints and each sorted entry's position in the unsorted codebook.
- :func:`centroid_gradient`: the segment sums of the upstream gradient over sorted table positions
  (:func:`._numba_fast.segment_sums`), moved back to the codebook's own order and zeroed where pinned.

These replace ~10 eager tensor ops per clustered weight and step (argsort, two takes, masks, the
midpoints, the take's scatter-add in the backward pass); on a small model (LeNet-300-100) those ops'
dispatch cost more than the search itself.
"""

from __future__ import annotations

import numba
import numpy as np

from weightzip.keras.clustering._numba_fast import segment_sums


@numba.njit(cache=True, nogil=True)
def sort_rows(centroids, pin, table, midpoints, order):
    """Sort each row of `centroids` ``(groups, k)`` by its search key.

    pin: None, or 0/1 values shaped like `centroids`: an entry at 0 has the key +inf (it sorts last and no
        finite weight reaches it) and the table value ``centroid * 0``.
    table: ``(groups * k,)`` out, the (pinned) centroid values in sorted order, row after row.
    midpoints: ``(groups, k - 1)`` out, the midpoints of adjacent sorted keys.
    order: ``(groups * k,)`` int out, the flat codebook position of each sorted table entry.
    """
    groups, k = centroids.shape
    keys = np.empty(k, centroids.dtype)
    for g in range(groups):
        for j in range(k):
            keys[j] = centroids[g, j] if pin is None or pin[g, j] > 0 else np.inf
        row_order = np.argsort(keys, kind="mergesort")  # stable, NaN last: as torch's stable argsort
        for p in range(k):
            j = row_order[p]
            order[g * k + p] = g * k + j
            table[g * k + p] = centroids[g, j] if pin is None else centroids[g, j] * pin[g, j]
        for p in range(k - 1):
            midpoints[g, p] = (keys[row_order[p + 1]] + keys[row_order[p]]) / 2


@numba.njit(cache=True, nogil=True)
def centroid_gradient(values, index, average, order, pin, out):
    """``out[order[p]] = sum(values[index == p])`` (the mean when `average`), times ``pin[order[p]]``.

    order: None (the table is the codebook itself) or :func:`sort_rows`' order; pin: None or the flat pin.
    """
    size = out.shape[0]
    sums = np.empty(size, out.dtype)
    segment_sums(values, index, average, sums)
    for p in range(size):
        j = p if order is None else order[p]
        out[j] = sums[p] if pin is None else sums[p] * pin[j]
