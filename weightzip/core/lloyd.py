"""Lloyd's k-means refinement on sorted 1-D data, O(k log n) per iteration."""

from __future__ import annotations

import numpy as np

from weightzip.core.errors import InvalidArgumentError
from weightzip.core.sample import SortedSample


def lloyd_refine(sample: SortedSample, centroids, max_iterations: int = 100) -> tuple[np.ndarray, int]:
    """Alternate nearest-centroid assignment and mean update until the assignment stops changing.

    Each cluster is a contiguous run of the sorted data, found by binary search on centroid midpoints;
    its new mean comes from prefix sums. An empty cluster keeps its centroid. Returns the sorted
    centroids and the number of iterations run. The SSE never increases from one iteration to the next.
    """
    if max_iterations < 0:
        raise InvalidArgumentError(f"max_iterations must be >= 0, got {max_iterations}")
    current = np.sort(np.asarray(centroids, dtype=np.float64))
    bounds = sample.boundaries(current)
    for iteration in range(1, max_iterations + 1):
        weight, first, _ = sample.run_moments(bounds)
        filled = weight > 0
        current = current.copy()
        current[filled] = first[filled] / weight[filled]
        current.sort()
        next_bounds = sample.boundaries(current)
        if np.array_equal(next_bounds, bounds):
            return current, iteration
        bounds = next_bounds
    return current, max_iterations
