"""The algorithms of weightzip, in NumPy only, written once and used by every front end.

- :func:`fit_centroids`: k centroids of a 1-D weight set (linear, density, Forgy, k-means++, exact optimum;
  optional Lloyd refinement), optionally weighted by per-weight importance.
- :class:`ClusteringSpec`, :class:`PruningSpec`: what to do to every selected weight, the same fields in both
  front ends (:mod:`weightzip.core.specs`).
- :func:`cluster_array`: a whole tensor to a :class:`ClusteredTensor` (per-tensor, per-channel or grouped
  codebooks; sparsity preserved on request).
- :func:`assign_to_centroids`: nearest centroid by binary search on midpoints, O(n log k).
- :func:`magnitude_mask`, :func:`n_m_mask`, pruning schedules: Deep Compression's pruning stage.
- :func:`sse`, :func:`relative_sse`: the k-means objective and its ratio to the optimum.
"""

from weightzip.core import _numba_cache  # noqa: F401  (serialises numba cache saves across processes)
from weightzip.core.assign import assign_to_centroids, index_dtype
from weightzip.core.centroid_init import CentroidInitialization
from weightzip.core.cluster import ClusterConfig, ClusteredTensor, cluster_array
from weightzip.core.errors import InvalidClusterCountError, InvalidWeightsError, WeightzipError
from weightzip.core.fit import fit_centroids
from weightzip.core.lloyd import lloyd_refine
from weightzip.core.metrics import relative_sse, sse
from weightzip.core.optimal import OptimalPartition, optimal_centroids, optimal_partition
from weightzip.core.palette import palettize_exact
from weightzip.core.pruning import (
    ConstantSparsity,
    PolynomialDecay,
    PruningSchedule,
    magnitude_mask,
    n_m_mask,
)
from weightzip.core.sample import SortedSample
from weightzip.core.specs import ClusteringSpec, PostTrainingSpec, PruningSpec

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PruningSchedule",
    "magnitude_mask",
    "n_m_mask",
    "CentroidInitialization",
    "ClusterConfig",
    "ClusteringSpec",
    "PostTrainingSpec",
    "PruningSpec",
    "ClusteredTensor",
    "InvalidClusterCountError",
    "InvalidWeightsError",
    "SortedSample",
    "WeightzipError",
    "assign_to_centroids",
    "cluster_array",
    "fit_centroids",
    "index_dtype",
    "lloyd_refine",
    "OptimalPartition",
    "optimal_centroids",
    "optimal_partition",
    "palettize_exact",
    "relative_sse",
    "sse",
]
