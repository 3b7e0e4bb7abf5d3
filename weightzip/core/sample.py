"""Sorted 1-D weights with prefix sums: every cluster statistic becomes an O(1) range query.

With the values sorted, a cluster of a 1-D k-means solution is a contiguous run, so its weight, mean and
squared error follow from three prefix sums (of w, w·x, w·x²). Lloyd iterations, k-means++ seeding and
SSE then cost O(k log n) instead of O(n k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weightzip.core.validation import as_sample_weight, as_weight_array


@dataclass(frozen=True)
class SortedSample:
    """Sorted values and the prefix sums of their weights, first and second moments.

    `cum_weight` is None for unweighted data (the prefix weight of index i is then i), which saves
    one n-sized float64 array on large tensors.
    """

    values: np.ndarray
    cum_weight: np.ndarray | None
    cum_sum: np.ndarray
    cum_sq: np.ndarray

    @classmethod
    def from_values(cls, values, sample_weight=None) -> "SortedSample":
        array = as_weight_array(values).ravel()
        importance = as_sample_weight(sample_weight, np.shape(values))
        if importance is None:
            ordered = np.sort(array)
            wide = ordered.astype(np.float64)
            cum_weight = None
            cum_sum = _prefix(wide)
            np.multiply(wide, wide, out=wide)
            cum_sq = _prefix(wide)
        else:
            order = np.argsort(array, kind="stable")
            ordered = array[order]
            weight = importance.ravel()[order]
            wide = ordered.astype(np.float64)
            cum_weight = _prefix(weight)
            cum_sum = _prefix(weight * wide)
            cum_sq = _prefix(weight * wide * wide)
        return cls(ordered, cum_weight, cum_sum, cum_sq)

    @property
    def size(self) -> int:
        return int(self.values.shape[0])

    @property
    def total_weight(self) -> float:
        return float(self.size if self.cum_weight is None else self.cum_weight[-1])

    def weight_up_to(self, index) -> np.ndarray:
        """Prefix weight of the first `index` values (vectorised over `index`)."""
        index = np.asarray(index)
        if self.cum_weight is None:
            return index.astype(np.float64)
        return self.cum_weight[index]

    def distinct_count(self) -> int:
        """Number of distinct values that carry positive weight (O(n), the data being sorted).

        A value of zero weight cannot attract a centroid, so it does not count towards k.
        """
        if self.cum_weight is None:
            return int(np.count_nonzero(np.diff(self.values))) + 1
        _, weight = self.distinct_runs()
        return int(np.count_nonzero(weight > 0))

    def distinct_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Start index of each run of equal values, and the total weight of the run."""
        starts = np.flatnonzero(np.concatenate(([True], np.diff(self.values) != 0)))
        ends = np.append(starts[1:], self.size)
        return starts, self.weight_up_to(ends) - self.weight_up_to(starts)

    def boundaries(self, centroids: np.ndarray) -> np.ndarray:
        """Start index of each centroid's run, plus n: nearest-centroid assignment on sorted data."""
        midpoints = (centroids[1:] + centroids[:-1]) / 2.0
        inner = np.searchsorted(self.values, _rounded_down(midpoints, self.values.dtype), side="right")
        return np.concatenate(([0], inner, [self.size]))

    def run_moments(self, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weight, Σw·x, Σw·x²) of each run [bounds[j], bounds[j+1])."""
        weight = np.diff(self.weight_up_to(bounds))
        first = np.diff(self.cum_sum[bounds])
        second = np.diff(self.cum_sq[bounds])
        return weight, first, second

    def sse(self, centroids: np.ndarray) -> float:
        """Weighted squared error of assigning every value to its nearest centroid (sorted centroids)."""
        centroids = np.asarray(centroids, dtype=np.float64)
        weight, first, second = self.run_moments(self.boundaries(centroids))
        per_cluster = second - 2.0 * centroids * first + centroids * centroids * weight
        return float(max(per_cluster.sum(), 0.0))

    def quantiles(self, levels: np.ndarray) -> np.ndarray:
        """Weighted quantiles at `levels` in [0, 1] (the value where the CDF first reaches the level).

        Weighted, the CDF at a value is judged as (prefix weight) / (total weight) >= level, as NumPy's weighted
        ``inverted_cdf`` does: ``level · total`` alone rounds, and where the CDF meets a level exactly (integer
        weights) the search could land on the next value (total 84 at level 4.5/14: 27.000000000000004 > 27), so
        the search on it is corrected by one step either way, over a run of equal prefix weights. Unweighted, the
        index is ``ceil(level · n) - 1``, as NumPy's unweighted ``inverted_cdf`` computes it (ties included)."""
        levels = np.asarray(levels, dtype=np.float64)
        total = self.total_weight
        targets = levels * total
        if self.cum_weight is None:
            index = np.ceil(targets).astype(np.int64) - 1
            return self.values[np.clip(index, 0, self.size - 1)].astype(np.float64)
        cum = self.cum_weight  # CDF of index i: cum[i + 1] / total
        index = np.clip(np.searchsorted(cum, targets, side="left") - 1, 0, self.size - 1)
        back = (index > 0) & (cum[index] / total >= levels)
        index[back] = np.searchsorted(cum, cum[index[back]], side="left") - 1
        ahead = (index < self.size - 1) & (cum[index + 1] / total < levels)
        index[ahead] = np.searchsorted(cum, cum[index[ahead] + 1], side="right") - 1
        return self.values[np.clip(index, 0, self.size - 1)].astype(np.float64)


def _rounded_down(points: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`points` in `dtype`, each rounded down, so that for values of that dtype v <= point ⇔ v <= result.

    Searching float64 points among float32 values would make NumPy cast all n values first: O(n) per
    search instead of O(k log n), which made every Lloyd iteration and k-means++ step a full pass.
    """
    if points.dtype == dtype:
        return points
    with np.errstate(over="ignore"):
        cast = points.astype(dtype)
    too_high = cast.astype(np.float64) > points
    cast[too_high] = np.nextafter(cast[too_high], dtype.type(-np.inf))
    return cast


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.shape[0] + 1, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(values, dtype=np.float64, out=out[1:])
    return out
