"""Centroid initialisation: where the k shared weights start before refinement or training.

Deep Compression (§3.1) compares Forgy (random), density-based and linear initialisation and finds
linear best, because it keeps the rare large weights, which matter most, represented. TFMOT adds
k-means++. `OPTIMAL` is weightzip's own: the exact 1-D k-means solution (see :mod:`.optimal`).
"""

from __future__ import annotations

import enum

import numpy as np

from weightzip.core.sample import SortedSample


class CentroidInitialization(str, enum.Enum):
    """How to place the initial centroids. Values are the strings accepted everywhere (CLI, configs)."""

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
    def parse(cls, value: "CentroidInitialization | str") -> "CentroidInitialization":
        """Accept a member, its value or its name (case-insensitive), with an error listing the choices."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            lowered = value.strip().lower()
            for member in cls:
                if lowered in (member.value, member.name.lower()):
                    return member
        choices = ", ".join(member.name for member in cls)
        raise ValueError(f"unknown centroid initialization {value!r}; choose one of {choices}")


def linear_centroids(sample: SortedSample, k: int) -> np.ndarray:
    return np.linspace(float(sample.values[0]), float(sample.values[-1]), k)


def density_centroids(sample: SortedSample, k: int) -> np.ndarray:
    levels = (np.arange(k, dtype=np.float64) + 0.5) / k
    return sample.quantiles(levels)


def forgy_centroids(sample: SortedSample, k: int, rng: np.random.Generator) -> np.ndarray:
    starts = np.flatnonzero(np.concatenate(([True], np.diff(sample.values) != 0)))
    ends = np.append(starts[1:], sample.size)
    weight = sample.weight_up_to(ends) - sample.weight_up_to(starts)
    eligible = np.flatnonzero(weight > 0)
    probability = weight[eligible] / weight[eligible].sum()
    chosen = rng.choice(eligible, size=k, replace=False, p=probability)
    return np.sort(sample.values[starts[chosen]].astype(np.float64))


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
        if total <= 0.0:
            break  # every point coincides with a centroid: fewer distinct values than k
        cluster = int(np.searchsorted(np.cumsum(mass), rng.random() * total, side="right"))
        cluster = min(cluster, mass.shape[0] - 1)
        index = _index_in_run(sample, bounds[cluster], bounds[cluster + 1], centroids[cluster],
                              rng.random() * mass[cluster])
        value = float(sample.values[index])
        if np.any(centroids == value):
            # Only reachable through rounding in the prefix sums: take the run's farthest point instead.
            lo, hi = bounds[cluster], bounds[cluster + 1] - 1
            far_lo = abs(float(sample.values[lo]) - centroids[cluster])
            far_hi = abs(float(sample.values[hi]) - centroids[cluster])
            value = float(sample.values[lo if far_lo >= far_hi else hi])
            if np.any(centroids == value):
                break
        centroids = np.sort(np.append(centroids, value))
    return centroids


def _index_at_weight(sample: SortedSample, target: float) -> int:
    if sample.cum_weight is None:
        return min(int(target), sample.size - 1)
    index = int(np.searchsorted(sample.cum_weight, target, side="right")) - 1
    return int(np.clip(index, 0, sample.size - 1))


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
