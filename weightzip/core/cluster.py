"""Clustering whole tensors: per-tensor, per-channel or grouped-channel codebooks, sparsity kept.

This is the operation every front end calls: a weight tensor in, a :class:`ClusteredTensor` (codebook +
index per weight) out. Front ends only translate their layers' kernels to and from NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from weightzip.core.assign import assign_to_centroids, index_dtype
from weightzip.core.centroid_init import CentroidInitialization
from weightzip.core.errors import InvalidArgumentError, InvalidClusterCountError
from weightzip.core.fit import fit_centroids
from weightzip.core.validation import as_sample_weight, as_weight_array, check_cluster_count


@dataclass(frozen=True)
class ClusterConfig:
    """How to cluster one tensor.

    number_of_clusters: codebook size k per group (with `preserve_sparsity`, one entry is the exact 0).
    init: centroid initialisation (:class:`CentroidInitialization` or its string value).
    lloyd_iterations: Lloyd refinement after initialisation (0 = none, as TFMOT before training).
    axis: channel axis for per-channel codebooks; None for one codebook per tensor.
    group_size: with `axis`, how many consecutive channels share a codebook (1 = per channel).
    preserve_sparsity: zeros are excluded from fitting and stay exactly zero; nonzeros stay nonzero.
    seed: seed for RANDOM and KMEANS_PLUS_PLUS initialisation.
    """

    number_of_clusters: int
    init: CentroidInitialization = CentroidInitialization.LINEAR
    lloyd_iterations: int = 0
    axis: int | None = None
    group_size: int = 1
    preserve_sparsity: bool = False
    seed: int | None = None

    def __post_init__(self):
        check_cluster_count(self.number_of_clusters)
        object.__setattr__(self, "init", CentroidInitialization.parse(self.init))
        if self.preserve_sparsity and self.number_of_clusters < 2:
            raise InvalidClusterCountError(
                "preserve_sparsity needs number_of_clusters >= 2: one centroid is reserved for zero"
            )
        if not isinstance(self.lloyd_iterations, int) or self.lloyd_iterations < 0:
            raise InvalidArgumentError(f"lloyd_iterations must be an integer >= 0, got {self.lloyd_iterations!r}")
        if self.axis is not None and not isinstance(self.axis, int):
            raise InvalidArgumentError(f"axis must be an integer or None, got {self.axis!r}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise InvalidArgumentError(f"group_size must be an integer >= 1, got {self.group_size!r}")


@dataclass(frozen=True)
class ClusteredTensor:
    """A tensor stored as a codebook and one codebook index per weight.

    codebook: (n_groups, k) centroids, each row sorted ascending.
    indices: the tensor's shape, each entry an index into its group's row.
    axis / group_size: which channels use which codebook row (axis None: a single row).
    """

    codebook: np.ndarray
    indices: np.ndarray
    axis: int | None = None
    group_size: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.indices.shape)

    @property
    def number_of_clusters(self) -> int:
        return int(self.codebook.shape[1])

    def group_of_each_weight(self) -> np.ndarray:
        """Codebook row used by each weight, broadcastable to `shape`."""
        if self.axis is None:
            return np.zeros((1,) * self.indices.ndim, dtype=np.intp)
        channels = self.indices.shape[self.axis]
        group = np.arange(channels) // self.group_size
        view = [1] * self.indices.ndim
        view[self.axis] = channels
        return group.reshape(view)

    def decode(self) -> np.ndarray:
        """The clustered weights: each weight replaced by its centroid."""
        if self.axis is None or self.codebook.shape[0] == 1:  # one row: a lookup, no broadcast index
            row, indices = np.ascontiguousarray(self.codebook[0]), np.ascontiguousarray(self.indices)
            fits = row.shape[0] >= 1 << (8 * indices.dtype.itemsize) or indices.size == 0 \
                or int(indices.max()) < row.shape[0]
            if row.dtype.itemsize < 4 or indices.dtype.kind != "u" or not fits:  # numba has no float16;
                return row[indices]  # out-of-range indices: NumPy's IndexError
            out = np.empty(indices.shape, dtype=row.dtype)
            _lookup(row, indices.reshape(-1), out.reshape(-1))
            return out
        return self.codebook[self.group_of_each_weight(), self.indices]


def cluster_array(weights, config: ClusterConfig, *, sample_weight=None) -> ClusteredTensor:
    """Cluster `weights` according to `config`.

    A group with fewer distinct values than its codebook has room for is represented exactly: its
    codebook holds its distinct values, the spare entries repeat the largest one and are never used.
    (The 1-D :func:`fit_centroids` raises instead; here a tensor-level call must not fail because one
    small channel is already low-entropy.) With `sample_weight`, only values of positive weight count as
    distinct, and a group whose weights are all zero is fitted unweighted (every clustering of it has
    zero weighted error, so the unweighted fit is the useful tie-break).
    """
    array = as_weight_array(weights)
    importance = as_sample_weight(sample_weight, array.shape)
    rng = np.random.default_rng(config.seed)
    axis = _normalised_axis(config.axis, array.ndim)
    if axis is None:
        rows = array.reshape(1, -1)
        row_importance = None if importance is None else importance.reshape(1, -1)
        group_size = 1
    else:
        rows = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
        row_importance = None if importance is None else np.moveaxis(importance, axis, 0).reshape(rows.shape)
        group_size = config.group_size
    n_groups = -(-rows.shape[0] // group_size)
    k = config.number_of_clusters
    codebook = np.empty((n_groups, k), dtype=array.dtype)
    indices = np.empty(rows.shape, dtype=index_dtype(k))
    for group in range(n_groups):
        members = slice(group * group_size, (group + 1) * group_size)
        values = rows[members].ravel()
        weight = None if row_importance is None else row_importance[members].ravel()
        centroids, codes = _cluster_values(values, weight, config, rng)
        codebook[group] = centroids
        indices[members] = codes.reshape(rows[members].shape)
    if axis is not None:
        moved_shape = (array.shape[axis],) + tuple(np.delete(array.shape, axis))
        indices = np.moveaxis(indices.reshape(moved_shape), 0, axis)
    else:
        indices = indices.reshape(array.shape)
    return ClusteredTensor(codebook, indices, axis, group_size)


def _normalised_axis(axis: int | None, ndim: int) -> int | None:
    if axis is None:
        return None
    if not -ndim <= axis < ndim:
        raise InvalidArgumentError(f"axis {axis} is out of range for a tensor of rank {ndim}")
    return axis % ndim


def _cluster_values(values, weight, config: ClusterConfig, rng) -> tuple[np.ndarray, np.ndarray]:
    k = config.number_of_clusters
    if not config.preserve_sparsity:
        centroids = _fit_or_exact(values, weight, k, config, rng)
        return centroids, assign_to_centroids(values, centroids)
    nonzero = values != 0
    codes = np.empty(values.shape, dtype=index_dtype(k))
    if not nonzero.any():
        codes.fill(0)
        return np.zeros(k), codes
    kept = values[nonzero]
    centroids = _fit_or_exact(kept, None if weight is None else weight[nonzero], k - 1, config, rng)
    # A centroid that is 0 in the tensor's dtype (mean of a cluster straddling zero, or an underflow)
    # would turn its nonzeros into zeros: move it to the smallest normal number of that dtype.
    vanished = centroids.astype(values.dtype) == 0
    if vanished.any():
        centroids = np.sort(np.where(vanished, np.copysign(np.finfo(values.dtype).tiny, centroids), centroids))
    zero_slot = int(np.searchsorted(centroids, 0.0, side="left"))
    codebook = np.insert(centroids, zero_slot, 0.0)
    positions = assign_to_centroids(kept, centroids).astype(np.int64)
    codes[nonzero] = positions + (positions >= zero_slot)
    codes[~nonzero] = zero_slot
    return codebook, codes


def _fit_or_exact(values, weight, k, config: ClusterConfig, rng) -> np.ndarray:
    if weight is not None and not np.any(weight > 0):
        weight = None
    try:
        return fit_centroids(values, k, config.init, sample_weight=weight,
                             lloyd_iterations=config.lloyd_iterations, seed=rng)
    except InvalidClusterCountError:
        distinct = np.unique(values if weight is None else values[weight > 0]).astype(np.float64)
        if distinct.shape[0] >= k:
            raise
        return np.concatenate((distinct, np.full(k - distinct.shape[0], distinct[-1])))


@numba.njit(cache=True, nogil=True)
def _lookup(row, indices, out):
    for i in range(indices.shape[0]):
        out[i] = row[indices[i]]
