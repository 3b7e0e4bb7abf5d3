"""Centroid initialisation: where the k shared weights start before refinement or training.

Deep Compression (§3.1) compares Forgy (random), density-based and linear initialisation and finds
linear best, because it keeps the rare large weights, which matter most, represented. TFMOT adds
k-means++. `OPTIMAL` is weightzip's own: the optimal 1-D k-means solution by dynamic programming, exact up to
65,536 weights and for 16-bit data of any size, otherwise optimal over a 65,536-bin histogram (see :mod:`.optimal`).
"""

from __future__ import annotations

import numpy as np

from weightzip.core.options import ParsableEnum
from weightzip.core.sample import SortedSample


class CentroidInitialization(ParsableEnum):
    """How to place the initial centroids. Values are the strings accepted everywhere (CLI, configs); ``parse``
    also takes names in any case and TFMOT's ``"CentroidInitialization.LINEAR"``."""

    LINEAR = "linear"
    """Evenly spaced on [min, max] (the paper's best)."""
    DENSITY_BASED = "density"
    """Evenly spaced on the CDF: the weighted quantiles at levels (i + 1/2) / k."""
    RANDOM = "random"
    """Forgy: k distinct observed values drawn with probability proportional to their weight."""
    KMEANS_PLUS_PLUS = "kmeans++"
    """k-means++ D² seeding (Arthur & Vassilvitskii 2007), exact on the full data."""
    OPTIMAL = "optimal"
    """The exact optimum of weighted 1-D k-means (no refinement needed)."""

    @classmethod
    def _label(cls) -> str:
        return "centroid initialization"


def linear_centroids(sample: SortedSample, k: int) -> np.ndarray:
    return np.linspace(float(sample.values[0]), float(sample.values[-1]), k)


def density_centroids(sample: SortedSample, k: int) -> np.ndarray:
    levels = (np.arange(k, dtype=np.float64) + 0.5) / k
    return sample.quantiles(levels)


def forgy_centroids(sample: SortedSample, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct values, each drawn with probability ∝ its weight among the values not drawn yet.

    Positions are drawn ∝ weight (a binary search each) and a value drawn before is drawn again, which
    has exactly that law without listing the distinct values (O(n) memory on large tensors). Only when
    redraws pile up (the values drawn hold nearly all the weight) are the remaining values listed.
    """
    chosen: list[float] = []
    seen: set[float] = set()
    budget = 64 * k + 1024
    while len(chosen) < k and budget > 0:
        batch = min(budget, 2 * (k - len(chosen)) + 16)
        budget -= batch
        for value in sample.values[_indices_at_weights(sample, rng.random(batch) * sample.total_weight)].tolist():
            if value not in seen:
                seen.add(value)
                chosen.append(value)
                if len(chosen) == k:
                    break
    if len(chosen) < k:
        starts, weight = sample.distinct_runs()
        eligible = starts[weight > 0]
        unseen = ~np.isin(sample.values[eligible], np.array(chosen, dtype=sample.values.dtype))
        eligible, mass = eligible[unseen], weight[weight > 0][unseen]
        rest = rng.choice(eligible, size=k - len(chosen), replace=False, p=mass / mass.sum())
        chosen.extend(sample.values[rest].tolist())
    return np.sort(np.array(chosen, dtype=np.float64))


def kmeans_plus_plus_centroids(sample: SortedSample, k: int, rng: np.random.Generator) -> np.ndarray:
    """D² seeding: each new centroid is a data point drawn with probability ∝ weight · distance².

    On sorted data the D² mass of each current cluster is a range query, and the point inside the
    chosen cluster is found by bisection on its cumulative D² mass, so a step costs O(k + log n).
    """
    first = _index_at_weight(sample, rng.random() * sample.total_weight)
    centroids = np.array([float(sample.values[first])])
    while centroids.shape[0] < k:
        bounds = sample.boundaries(centroids)
        weight, s1, s2 = sample.run_moments(bounds)
        mass = np.maximum(s2 - 2.0 * centroids * s1 + centroids * centroids * weight, 0.0)
        total = mass.sum()
        value = None
        if total > 0.0:
            cluster = int(np.searchsorted(np.cumsum(mass), rng.random() * total, side="right"))
            cluster = min(cluster, mass.shape[0] - 1)
            index = _index_in_run(sample, bounds[cluster], bounds[cluster + 1], centroids[cluster],
                                  rng.random() * mass[cluster])
            value = float(sample.values[index])
        if value is None or np.any(centroids == value):
            # Rounding left no usable D² mass (distances below ~1e-154 square to 0, and the prefix
            # sums of exhausted clusters are noise): take the unused value farthest from every centroid.
            value = _farthest_unused_value(sample, centroids)
            if value is None:
                break  # every value of positive weight is a centroid: fewer distinct values than k
        centroids = np.sort(np.append(centroids, value))
    return centroids


def _farthest_unused_value(sample: SortedSample, centroids: np.ndarray) -> float | None:
    """The distinct value of positive weight farthest from its nearest centroid (None if all are used)."""
    starts, weight = sample.distinct_runs()
    candidates = sample.values[starts[weight > 0]].astype(np.float64)
    slot = np.clip(np.searchsorted(centroids, candidates), 1, max(centroids.shape[0] - 1, 1))
    below = np.abs(candidates - centroids[slot - 1])
    above = np.abs(candidates - centroids[np.minimum(slot, centroids.shape[0] - 1)])
    distance = np.minimum(below, above)
    if distance.size == 0 or distance.max() <= 0.0:
        return None
    return float(candidates[int(np.argmax(distance))])


def _index_at_weight(sample: SortedSample, target: float) -> int:
    return int(_indices_at_weights(sample, np.array([target]))[0])


def _indices_at_weights(sample: SortedSample, targets: np.ndarray) -> np.ndarray:
    """Position whose cumulative-weight interval holds each target in [0, total): a draw ∝ weight."""
    if sample.cum_weight is None:
        index = targets.astype(np.int64)
    else:
        index = np.searchsorted(sample.cum_weight, targets, side="right") - 1
    return np.clip(index, 0, sample.size - 1)


def _index_in_run(sample: SortedSample, lo: int, hi: int, centre: float, target: float) -> int:
    """Smallest index t in [lo, hi) whose cumulative D² mass over [lo, t] exceeds `target`."""

    def mass_through(t: int) -> float:
        w = float(sample.weight_up_to(t + 1) - sample.weight_up_to(lo))
        s1 = sample.cum_sum[t + 1] - sample.cum_sum[lo]
        s2 = sample.cum_sq[t + 1] - sample.cum_sq[lo]
        return s2 - 2.0 * centre * s1 + centre * centre * w

    left, right = lo, hi - 1
    while left < right:
        middle = (left + right) // 2
        if mass_through(middle) > target:
            right = middle
        else:
            left = middle + 1
    return left
