"""Choosing the k centroids of one 1-D weight set: initialisation, then optional Lloyd refinement."""

from __future__ import annotations

import numpy as np

from weightzip.core.centroid_init import (
    CentroidInitialization,
    density_centroids,
    forgy_centroids,
    kmeans_plus_plus_centroids,
    linear_centroids,
)
from weightzip.core.errors import InvalidArgumentError, InvalidClusterCountError
from weightzip.core.lloyd import lloyd_refine
from weightzip.core.optimal import DEFAULT_MAX_ATOMS, optimal_centroids
from weightzip.core.sample import SortedSample
from weightzip.core.validation import (
    as_sample_weight,
    as_weight_array,
    check_cluster_count,
    require_some_weight,
)


def fit_centroids(
    values,
    number_of_clusters: int,
    init: CentroidInitialization | str = CentroidInitialization.LINEAR,
    *,
    sample_weight=None,
    lloyd_iterations: int = 0,
    seed: int | np.random.Generator | None = None,
    max_atoms: int | str | None = DEFAULT_MAX_ATOMS,
) -> np.ndarray:
    """Sorted float64 centroids for `values` (any shape, flattened).

    `init` places the centroids (see :class:`CentroidInitialization`); `lloyd_iterations` > 0 then
    refines them with Lloyd's algorithm on the full data (an upper bound; it stops at convergence).
    `sample_weight` gives each weight an importance (e.g. a Hessian diagonal or Fisher information).

    Raises :class:`InvalidClusterCountError` when k exceeds the number of distinct values (of positive
    weight, when weighted; LINEAR without refinement only checks that the data are not constant, to avoid a
    sort of large tensors: its empty clusters are harmless, as in TFMOT), and :class:`InvalidWeightsError`
    when `sample_weight` is zero everywhere.
    """
    method = CentroidInitialization.parse(init)
    array = as_weight_array(values).ravel()
    importance = as_sample_weight(sample_weight, np.shape(values))
    importance = None if importance is None else importance.ravel()
    require_some_weight(importance)
    k = check_cluster_count(number_of_clusters)
    integral = isinstance(lloyd_iterations, (int, np.integer)) and not isinstance(lloyd_iterations, bool)
    if not integral or lloyd_iterations < 0:
        raise InvalidArgumentError(f"lloyd_iterations must be an integer >= 0, got {lloyd_iterations!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    if method is CentroidInitialization.OPTIMAL and lloyd_iterations == 0:
        return optimal_centroids(array, k, sample_weight=importance, max_atoms=max_atoms)
    if method is CentroidInitialization.LINEAR and lloyd_iterations == 0:
        low, high = float(array.min()), float(array.max())
        if k > 1 and (low == high or array.shape[0] < k):
            distinct = 1 if low == high else array.shape[0]
            raise InvalidClusterCountError(
                f"number_of_clusters={k} exceeds the {distinct} distinct values available to cluster"
            )
        return np.linspace(low, high, k)

    sample = SortedSample.from_values(array, importance)
    what = "distinct values" if importance is None else "distinct values of positive sample_weight"
    check_cluster_count(k, sample.distinct_count(), what=what)
    if method is CentroidInitialization.LINEAR:
        centroids = linear_centroids(sample, k)
    elif method is CentroidInitialization.DENSITY_BASED:
        centroids = density_centroids(sample, k)
    elif method is CentroidInitialization.RANDOM:
        centroids = forgy_centroids(sample, k, rng)
    elif method is CentroidInitialization.KMEANS_PLUS_PLUS:
        centroids = kmeans_plus_plus_centroids(sample, k, rng)
    else:
        centroids = optimal_centroids(array, k, sample_weight=importance, max_atoms=max_atoms)
    if lloyd_iterations:
        centroids, _ = lloyd_refine(sample, centroids, lloyd_iterations)
    return np.sort(centroids)
