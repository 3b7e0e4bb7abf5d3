"""One thread-pool map for the core's per-tensor work whose kernels release the GIL (numba ``nogil`` kernels,
BLAS, the entropy coders): rate-distortion curves, error compensation and its rescoring."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable


def threaded_map(function: Callable, items: list, workers: int) -> list:
    """``[function(item) for item in items]``, on up to `workers` threads, results in the order of `items`; in this
    thread when there is at most one item or worker (no pool started)."""
    if len(items) <= 1 or workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(function, items))
