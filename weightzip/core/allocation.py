"""Per-tensor bit allocation: each tensor's k, codebook granularity and pruning, chosen to meet a size target.

Every tensor gets a *rate–distortion curve*: for each candidate setting (k shared values, one codebook per
tensor / per output channel / per group of G channels, a pruned fraction) the exact optimal weighted 1-D
k-means (:func:`~weightzip.core.cluster_array` with OPTIMAL init and the tensor's importances as sample
weights), its **rate** — the bytes its `.wz` record's sections take, measured with the `.wz` writer's own
encoder (codebook, entropy-coded or packed indices, sparse positions), so sizes are exact, not estimates —
and its **distortion** ``Σ_i s_i (w_i − ŵ_i)²``, the sensitivity-weighted squared error. With s_i the
diagonal Fisher information of weight i, this is the second-order estimate of how much the model's
outputs move (the expected KL to the float model); summed over tensors it estimates the whole model's
output error (the diagonal approximation ignores interactions between tensors). Storing the tensor as
plain floats is always a candidate (distortion 0), so no record is ever larger than its float storage.

Allocation then minimises Σ distortion subject to Σ rate ≤ budget, a multiple-choice knapsack. It is
solved the classic way for rate–distortion allocation (Shoham & Gersho 1988): for a Lagrange multiplier
λ each tensor independently takes the candidate minimising D + λ·R; bisection on λ finds the smallest
λ whose plan fits the budget. That optimum is exact for points on the lower convex hull of the curves;
the budget left over (a gap between hull points) is then spent greedily on the upgrades with the best
distortion saved per byte. It is fast (a few hundred candidates in total, no re-encoding per λ) and
needs no tuning, unlike a global search. `--min-fidelity` walks the same family of plans:
:func:`smallest_plan` bisects over λ with a callback that measures the model.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from weightzip.core.assign import assign_to_centroids, index_dtype
from weightzip.core.centroid_init import CentroidInitialization
from weightzip.core.cluster import ClusterConfig, ClusteredTensor, cluster_array
from weightzip.core.entropy_constrained import DEFAULT_RATES as ENTROPY_RATES
from weightzip.core.entropy_constrained import entropy_constrained
from weightzip.core.errors import WeightzipError
from weightzip.core.optimal import optimal_partitions
from weightzip.core.palette import drop_unused_centroids
from weightzip.core.rowwise import cluster_rows
from weightzip.core.threads import threaded_map

MAX_WORKERS = 4  # threads measuring rate-distortion curves (at most the CPU count)
ROWWISE_MAX_ROW = 4096  # codebook rows up to this many weights go to the all-rows-at-once solver

GRANULARITIES = ("tensor", "channel", "group")
DEFAULT_CLUSTERS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class TargetUnreachableError(WeightzipError):
    """A size target below the smallest size the candidates allow (e.g. smaller than the codebooks alone)."""


@dataclass(frozen=True)
class TensorToCompress:
    """One weight tensor offered for compression.

    importance: same shape, >= 0, the per-weight sensitivity (diagonal Fisher and/or E[x²] of the input
        channel); None means plain, unweighted squared error.
    channel_axis: the output-channel axis for per-channel / grouped codebooks (None: per tensor only).
    """

    name: str
    weights: np.ndarray
    importance: np.ndarray | None = None
    channel_axis: int | None = None
    is_convolution: bool = False

    @property
    def size(self) -> int:
        return int(np.asarray(self.weights).size)


@dataclass(frozen=True)
class Candidates:
    """The settings tried per tensor.

    clusters: the k values (2..256). granularities: any of "tensor", "channel", "group". Per-channel and
    grouped codebooks are only tried where a codebook row covers at least `min_row_weights` weights (a
    grouped row takes ceil(min_row_weights / weights per channel) channels), as smaller rows spend more
    bits on codebooks than they save. sparsities: fractions pruned (lowest saliency s_i·w_i² first, the
    Optimal Brain Damage rule), kept exactly zero by the clustering. codebook_dtype: the dtype codebooks
    are stored in ("float16" halves their cost; centroids are rounded to it before errors are measured,
    so the stored model is exactly the measured one); None keeps the weights' dtype. float16 is only used
    when every tensor's values lie well inside its range. entropy_rates: with "tensor" among the granularities,
    per-tensor codebooks chosen for entropy-coded indices at about these bits per weight are tried too
    (:mod:`weightzip.core.entropy_constrained`; their k, up to 256, follows from the rate); () leaves them out.
    """

    clusters: tuple[int, ...] = DEFAULT_CLUSTERS
    granularities: tuple[str, ...] = GRANULARITIES
    min_row_weights: int = 64
    sparsities: tuple[float, ...] = (0.0,)
    codebook_dtype: str | None = "float16"
    entropy_rates: tuple[float, ...] = ENTROPY_RATES

    def __post_init__(self):
        if not self.clusters or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= 256
                                    for k in self.clusters):
            raise WeightzipError(f"candidate clusters must be integers in [2, 256], got {self.clusters!r}")
        unknown = [g for g in self.granularities if g not in GRANULARITIES]
        if unknown or not self.granularities:
            raise WeightzipError(f"granularities must be among {GRANULARITIES}, got {self.granularities!r}")
        if any(not 0.0 <= s < 1.0 for s in self.sparsities) or not self.sparsities:
            raise WeightzipError(f"sparsities must lie in [0, 1), got {self.sparsities!r}")
        if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 8 for r in self.entropy_rates):
            raise WeightzipError(f"entropy_rates must be numbers in (0, 8], got {self.entropy_rates!r}")


@dataclass(frozen=True)
class TensorChoice:
    """One setting of one tensor: what it stores, its exact size and its estimated output error."""

    name: str
    clusters: int  # 0: stored as plain floats
    granularity: str  # "tensor" | "channel" | "group" | "float"
    group_size: int
    sparsity: float
    stored_bytes: int
    weights: int
    weighted_error: float
    stored: ClusteredTensor | np.ndarray = field(repr=False, compare=False)
    outliers: float = 0.0
    compensated: bool = False  # indices re-chosen for the layer's output error (weightzip.core.compensation)
    insensitive: bool = False  # zero sensitivity everywhere: no effect on the measured outputs (is_insensitive)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.stored_bytes / self.weights

    def row(self) -> dict:
        return {"tensor": self.name, "k": self.clusters or None, "granularity": self.granularity,
                "group_size": self.group_size, "sparsity": self.sparsity, "outliers": self.outliers,
                "bits_per_weight": round(self.bits_per_weight, 4), "bytes": self.stored_bytes,
                "weighted_error": float(self.weighted_error), "compensated": self.compensated}


@dataclass(frozen=True)
class RateDistortionCurve:
    """A tensor's candidate choices that are Pareto-efficient (no other is both smaller and more exact)."""

    name: str
    weights: int
    choices: tuple[TensorChoice, ...]  # ascending bytes, descending error
    write_options: object = field(default=None, repr=False, compare=False)  # what the rates were measured with

    def smallest(self) -> TensorChoice:
        return self.choices[0]

    def best_for(self, lam: float) -> TensorChoice:
        return min(self.choices, key=lambda c: (c.weighted_error + lam * c.stored_bytes, c.stored_bytes))


@dataclass(frozen=True)
class AllocationPlan:
    """One choice per tensor; sizes are the exact bytes of the tensors' `.wz` record sections when the file is
    written with `write_options` (a :class:`weightzip.format.WriteOptions`)."""

    choices: dict[str, TensorChoice]
    write_options: object = field(default=None, repr=False, compare=False)

    @property
    def total_bytes(self) -> int:
        return sum(c.stored_bytes for c in self.choices.values())

    @property
    def weights(self) -> int:
        return sum(c.weights for c in self.choices.values())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.total_bytes / self.weights if self.weights else 0.0

    @property
    def estimated_error(self) -> float:
        return float(sum(c.weighted_error for c in self.choices.values()))

    def stored(self) -> dict[str, ClusteredTensor | np.ndarray]:
        """name -> what the `.wz` writer stores (ClusteredTensor, or the float array)."""
        return {name: c.stored for name, c in self.choices.items()}

    def report_rows(self) -> list[dict]:
        """Per tensor: k, granularity, bits/weight, sensitivity-weighted error (JSON-ready)."""
        return [c.row() for c in self.choices.values()]

    def worst_tensors(self, count: int = 3) -> list[str]:
        """Names of the tensors with the largest estimated (sensitivity-weighted) error."""
        ranked = sorted(self.choices.values(), key=lambda c: c.weighted_error, reverse=True)
        return [c.name for c in ranked[:count] if c.weighted_error > 0]


# ---------------------------------------------------------------- rates and distortions


def write_options_for(candidates: Candidates | None = None, write_options=None):
    """The :class:`weightzip.format.WriteOptions` a plan is measured and must be written with.

    Unless given: the dense layout when nothing is pruned (the sparse layout only pays for pruned tensors,
    and trying it for every candidate would double the time), the writer's defaults otherwise.
    """
    if write_options is not None:
        return write_options
    from weightzip.format.writer import WriteOptions  # the format builds on the core: import at use

    pruned = candidates is not None and any(s > 0 for s in candidates.sparsities)
    codebook_dtype = None if candidates is None else candidates.codebook_dtype
    return WriteOptions(layout="auto" if pruned else "dense", codebook_dtype=codebook_dtype)


_FLOAT16_SAFE = 6e4  # |values| below this round to finite float16 (max 65504)


def _codebook_dtype_fits(tensors: list[TensorToCompress], candidates: Candidates) -> Candidates:
    """`candidates` with codebook_dtype None when some tensor's values would overflow it."""
    if candidates.codebook_dtype == "float16" and any(float(np.max(np.abs(t.weights))) >= _FLOAT16_SAFE
                                                      for t in tensors):
        return Candidates(candidates.clusters, candidates.granularities, candidates.min_row_weights,
                          candidates.sparsities, None)
    return candidates


def as_written(clustered: ClusteredTensor, write_options) -> ClusteredTensor:
    """`clustered` with its codebook rounded to the dtype the writer stores it in (what a reader decodes)."""
    dtype = getattr(write_options, "codebook_dtype", None)
    if dtype is None:
        return clustered
    codebook = np.asarray(clustered.codebook)
    return ClusteredTensor(codebook.astype(dtype).astype(codebook.dtype), clustered.indices, clustered.axis,
                           clustered.group_size)


def stored_bytes(name: str, tensor, options=None) -> int:
    """Exact bytes of the payload sections the `.wz` writer stores for `tensor` (its real encoder).

    options: the :class:`weightzip.format.WriteOptions` the file will be written with
    (default: :func:`write_options_for`).
    """
    from weightzip.format.records import encode_tensor  # the format builds on the core: import at use
    from weightzip.format.streams import PayloadBuilder

    payload = PayloadBuilder()
    # The clustered cost itself (the plan compares it with float storage and says which it chose).
    encode_options = dataclasses.replace(write_options_for(None, options).encode_options(), keep_clustered=True)
    encode_tensor(name, tensor, encode_options, payload)
    return payload.length


def weighted_error(weights: np.ndarray, approximation: np.ndarray, importance: np.ndarray | None) -> float:
    """Σ s_i (w_i − ŵ_i)², with s_i = 1 when `importance` is None."""
    squared = np.subtract(weights, approximation, dtype=np.float64)  # one float64 array, squared in place
    np.multiply(squared, squared, out=squared)
    return float(squared.sum() if importance is None else np.dot(squared.ravel(), np.asarray(importance).ravel()))


def is_insensitive(tensor: TensorToCompress) -> bool:
    """Whether `tensor` was given a sensitivity that is zero everywhere: on the calibration inputs it does not
    affect the measured outputs at all (e.g. a pooler whose output the model's mean-pooled embedding never
    uses). Its distortion is zero whatever it stores, so allocation gives it the fewest bytes, and the report
    says so; None (no sensitivity asked for) is plain squared error, not this."""
    return tensor.importance is not None and not np.any(np.asarray(tensor.importance) > 0)


def _checked(tensor: TensorToCompress) -> tuple[np.ndarray, np.ndarray | None]:
    """(weights, importance) checked; an all-zero importance comes back as None (the clustering then weighs
    every weight alike: with no information, plain k-means; :func:`is_insensitive` says it was all zero)."""
    weights = np.asarray(tensor.weights)
    if not np.issubdtype(weights.dtype, np.floating) or weights.size == 0 or not np.all(np.isfinite(weights)):
        raise WeightzipError(f"tensor {tensor.name!r}: weights must be a non-empty finite float array")
    importance = None
    if tensor.importance is not None:
        importance = np.asarray(tensor.importance, dtype=np.float64)
        if importance.shape != weights.shape or not np.all(np.isfinite(importance)) or np.any(importance < 0):
            raise WeightzipError(f"tensor {tensor.name!r}: importance must be finite, >= 0 and of shape "
                                 f"{weights.shape}, got {importance.shape}")
        if not np.any(importance > 0):
            importance = None  # no information: cluster by plain squared error (distortion: is_insensitive)
    return weights, importance


def _settings(tensor: TensorToCompress, weights: np.ndarray, candidates: Candidates) -> list[tuple[str, int | None, int]]:
    """(granularity, axis, group_size) settings worth trying for this tensor.

    Per channel where a channel holds at least `min_row_weights` weights; groups of channels holding about
    `min_row_weights` and 8x that many (two points between per-channel and per-tensor codebooks)."""
    settings = [("tensor", None, 1)] if "tensor" in candidates.granularities else []
    axis = tensor.channel_axis
    if axis is None or weights.ndim < 2:
        return settings or [("tensor", None, 1)]
    channels = weights.shape[axis]
    per_channel = weights.size // channels
    if "channel" in candidates.granularities and per_channel >= candidates.min_row_weights and channels > 1:
        settings.append(("channel", axis, 1))
    if "group" in candidates.granularities:
        for row_weights in (candidates.min_row_weights, 8 * candidates.min_row_weights):
            group_size = -(-row_weights // per_channel)
            if 1 < group_size < channels and ("group", axis, group_size) not in settings:
                settings.append(("group", axis, group_size))
    return settings or [("tensor", None, 1)]


def _pruned(weights: np.ndarray, importance: np.ndarray | None, sparsity: float) -> np.ndarray:
    if sparsity == 0.0:
        return weights
    saliency = weights.astype(np.float64) ** 2 * (1.0 if importance is None else importance)
    count = int(math.floor(sparsity * weights.size))
    pruned = weights.copy()
    if count:
        pruned.ravel()[np.argpartition(saliency.ravel(), count - 1)[:count]] = 0
    return pruned


def rate_distortion_curve(tensor: TensorToCompress, candidates: Candidates = Candidates(), *,
                          write_options=None) -> RateDistortionCurve:
    """Every candidate setting of `tensor`, clustered (exact optimal weighted k-means) and measured; the
    Pareto-efficient ones (the plain float storage always among the candidates)."""
    weights, importance = _checked(tensor)
    write_options = write_options_for(candidates, write_options)
    n = weights.size
    raw = TensorChoice(tensor.name, 0, "float", 1, 0.0, stored_bytes(tensor.name, weights, write_options), n, 0.0,
                       weights)
    found = [raw]
    if is_insensitive(tensor):  # no candidate changes the measured outputs: only the smallest one matters
        candidates = dataclasses.replace(candidates, clusters=(min(candidates.clusters),), sparsities=(0.0,),
                                         granularities=("tensor",))
    for sparsity in candidates.sparsities:
        values = _pruned(weights, importance, sparsity)
        base_error = weighted_error(weights, values, importance) if sparsity else 0.0
        distinct = np.unique(values).size
        for granularity, axis, group_size in _settings(tensor, weights, candidates):
            for k, clustered in _clusterings(values, importance, granularity, axis, group_size, candidates.clusters,
                                             distinct, sparsity):
                clustered = as_written(drop_unused_centroids(clustered), write_options)
                error = 0.0 if is_insensitive(tensor) else weighted_error(weights, clustered.decode(), importance)
                found.append(TensorChoice(tensor.name, k, granularity, group_size, float(sparsity),
                                          stored_bytes(tensor.name, clustered, write_options), n,
                                          max(error, base_error), clustered, insensitive=is_insensitive(tensor)))
    if candidates.entropy_rates and "tensor" in candidates.granularities and not is_insensitive(tensor):
        found += _entropy_constrained_choices(tensor, weights, importance, candidates, write_options)
    return RateDistortionCurve(tensor.name, n, tuple(_pareto(found)), write_options)


def _entropy_constrained_choices(tensor: TensorToCompress, weights: np.ndarray, importance, candidates: Candidates,
                                 write_options) -> list[TensorChoice]:
    """Per-tensor codebooks for entropy-coded indices at `candidates.entropy_rates` (nothing pruned)."""
    dtype = getattr(write_options, "codebook_dtype", None) or weights.dtype
    found = []
    for clustered in entropy_constrained(weights, candidates.entropy_rates, sample_weight=importance,
                                         max_clusters=256,
                                         codebook_bits=8.0 * np.dtype(dtype).itemsize).values():
        clustered = as_written(clustered, write_options)
        found.append(TensorChoice(tensor.name, int(clustered.codebook.shape[1]), "tensor", 1, 0.0,
                                  stored_bytes(tensor.name, clustered, write_options), weights.size,
                                  weighted_error(weights, clustered.decode(), importance), clustered))
    return found


def _clusterings(values, importance, granularity, axis, group_size, clusters, distinct, sparsity):
    """(k, ClusteredTensor) for each k worth trying: exact optimal weighted k-means; codebook rows of a few
    thousand weights at most (per channel, groups) all at once by :func:`~weightzip.core.rowwise.cluster_rows`."""
    ks = sorted(set(clusters))
    if granularity != "tensor" and sparsity == 0.0:
        row_length = values.size // values.shape[axis] * group_size
        if row_length <= ROWWISE_MAX_ROW:
            # a codebook row spends 16-32 bits per entry: k beyond a quarter of the row never pays
            ks = [k for k in ks if k <= max(2, row_length // 4)]
            return [(k, clustered) for k, (clustered, _) in
                    cluster_rows(values, axis, group_size, ks, sample_weight=importance).items()]
    if granularity == "tensor" and sparsity == 0.0 and ks[-1] <= 128:
        ks = [k for k in ks if k < distinct or k == ks[0]]  # more entries than values: no better than fewer
        try:
            return _tensor_clusterings(values, importance, ks)
        except WeightzipError:
            pass  # e.g. fewer distinct values than the smallest k: the general path below says what it can do
    found = []
    for k in ks:
        if k >= distinct and granularity == "tensor" and sparsity == 0.0 and k > ks[0]:
            break  # more entries than values: no better than the previous k
        config = ClusterConfig(k, CentroidInitialization.OPTIMAL, axis=axis, group_size=group_size,
                               preserve_sparsity=sparsity > 0)
        try:
            found.append((k, cluster_array(values, config, sample_weight=importance)))
        except WeightzipError:
            continue  # e.g. too few distinct values for this k: other candidates remain
    return found


def _tensor_clusterings(values: np.ndarray, importance, ks) -> list[tuple[int, ClusteredTensor]]:
    """(k, per-tensor ClusteredTensor) for each k, as :func:`cluster_array` with OPTIMAL init gives them, from
    one dynamic programme for all k (:func:`~weightzip.core.optimal.optimal_partitions`)."""
    partitions = optimal_partitions(values, ks, sample_weight=importance)
    if len(partitions) < len(ks):
        raise WeightzipError("fewer distinct values than some k")
    flat = values.ravel()
    found = []
    for k, partition in partitions.items():
        codes = assign_to_centroids(flat, partition.centroids)
        found.append((k, ClusteredTensor(partition.centroids.astype(values.dtype)[None, :],
                                         codes.reshape(values.shape).astype(index_dtype(k)), None, 1)))
    return found


def _pareto(choices: list[TensorChoice]) -> list[TensorChoice]:
    ordered = sorted(choices, key=lambda c: (c.stored_bytes, c.weighted_error))
    kept: list[TensorChoice] = []
    for choice in ordered:
        if not kept or choice.weighted_error < kept[-1].weighted_error:
            kept.append(choice)
    return kept


def rate_distortion_curves(tensors: Iterable[TensorToCompress], candidates: Candidates = Candidates(), *,
                           write_options=None) -> dict[str, RateDistortionCurve]:
    """:func:`rate_distortion_curve` of each tensor, by name (compute once, allocate many times)."""
    tensors = list(tensors)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise WeightzipError(f"tensor {twice!r} given twice")
    candidates = _codebook_dtype_fits(tensors, candidates)
    write_options = write_options_for(candidates, write_options)
    # The clustering and encoding kernels release the GIL: tensors in threads, largest first (load balance).
    largest_first = sorted(tensors, key=lambda t: -t.size)
    curves = threaded_map(lambda t: rate_distortion_curve(t, candidates, write_options=write_options), largest_first,
                          min(os.cpu_count() or 1, MAX_WORKERS))
    by_name = {t.name: curve for t, curve in zip(largest_first, curves)}
    return {name: by_name[name] for name in names}


# ---------------------------------------------------------------- plans


def uniform_plan(tensors: Iterable[TensorToCompress], *, clusters: int, granularity: str = "tensor",
                 group_size: int | None = None, weighted: bool = False, write_options=None) -> AllocationPlan:
    """Every tensor at the same k and granularity (today's behaviour), exact optimal k-means, weighted by the
    tensors' importances only with `weighted=True`; a tensor whose record would exceed its float storage
    is stored as floats. Errors are always reported sensitivity-weighted, to compare with :func:`allocate`."""
    if granularity not in GRANULARITIES:
        raise WeightzipError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    choices = {}
    write_options = write_options_for(None, write_options)
    for tensor in tensors:
        weights, importance = _checked(tensor)
        axis = None if granularity == "tensor" or tensor.channel_axis is None or weights.ndim < 2 \
            else tensor.channel_axis
        size = 1 if granularity != "group" or axis is None else int(group_size or 1)
        sample_weight = importance if weighted else None
        if axis is not None and weights.size // weights.shape[axis] * size <= ROWWISE_MAX_ROW:
            clustered = cluster_rows(weights, axis, size, [clusters], sample_weight=sample_weight)[clusters][0]
        else:
            config = ClusterConfig(clusters, CentroidInitialization.OPTIMAL, axis=axis, group_size=size)
            clustered = cluster_array(weights, config, sample_weight=sample_weight)
        clustered = as_written(drop_unused_centroids(clustered), write_options)
        insensitive = is_insensitive(tensor)
        error = 0.0 if insensitive else weighted_error(weights, clustered.decode(), importance)
        choice = TensorChoice(tensor.name, clusters, granularity if axis is not None else "tensor", size, 0.0,
                              stored_bytes(tensor.name, clustered, write_options), weights.size, error, clustered,
                              insensitive=insensitive)
        raw_bytes = stored_bytes(tensor.name, weights, write_options)
        if raw_bytes < choice.stored_bytes:
            choice = TensorChoice(tensor.name, 0, "float", 1, 0.0, raw_bytes, weights.size, 0.0, weights)
        choices[tensor.name] = choice
    return AllocationPlan(choices, write_options)


def _as_curves(tensors, candidates, write_options) -> dict[str, RateDistortionCurve]:
    if isinstance(tensors, dict) and all(isinstance(c, RateDistortionCurve) for c in tensors.values()):
        return tensors
    return rate_distortion_curves(tensors, candidates or Candidates(), write_options=write_options)


def plan_for(curves: dict[str, RateDistortionCurve], lam: float) -> AllocationPlan:
    """Each tensor's choice minimising distortion + λ·bytes."""
    return AllocationPlan({name: curve.best_for(lam) for name, curve in curves.items()}, _options_of(curves))


def _options_of(curves: dict[str, RateDistortionCurve]):
    return next(iter(curves.values())).write_options if curves else None


def minimum_bytes(curves: dict[str, RateDistortionCurve]) -> int:
    return sum(curve.smallest().stored_bytes for curve in curves.values())


def allocate(tensors, *, bits_per_weight: float | None = None, target_bytes: int | None = None,
             candidates: Candidates | None = None, write_options=None) -> AllocationPlan:
    """The plan of least estimated output error whose compressed tensors take at most the target.

    tensors: :class:`TensorToCompress` objects, or curves from :func:`rate_distortion_curves` (reused).
    bits_per_weight: average over these tensors' weights, counting every byte of their records;
    target_bytes: total bytes of their records. Exactly one is given. Raises
    :class:`TargetUnreachableError` when even the smallest candidates exceed it.
    """
    if (bits_per_weight is None) == (target_bytes is None):
        raise WeightzipError("give exactly one of bits_per_weight and target_bytes")
    curves = _as_curves(tensors, candidates, write_options)
    if not curves:
        raise WeightzipError("no tensors to allocate bits to")
    weights = sum(curve.weights for curve in curves.values())
    if bits_per_weight is not None:
        if not isinstance(bits_per_weight, (int, float)) or isinstance(bits_per_weight, bool) or bits_per_weight <= 0:
            raise WeightzipError(f"bits_per_weight must be a positive number, got {bits_per_weight!r}")
        budget = int(math.floor(bits_per_weight * weights / 8.0))
        what = f"{bits_per_weight} bits per weight ({budget:,} bytes for {weights:,} weights)"
    else:
        if isinstance(target_bytes, bool) or not isinstance(target_bytes, (int, np.integer)) or target_bytes <= 0:
            raise WeightzipError(f"target_bytes must be a positive integer, got {target_bytes!r}")
        budget = int(target_bytes)
        what = f"{budget:,} bytes"
    smallest = minimum_bytes(curves)
    if smallest > budget:
        raise TargetUnreachableError(
            f"target of {what} cannot be met: the compressed tensors need at least {smallest:,} bytes "
            f"({8.0 * smallest / weights:.3f} bits per weight) with the smallest codebooks and indices")
    return _fill(curves, _lagrangian(curves, budget), budget)


def _lagrangian(curves: dict[str, RateDistortionCurve], budget: int) -> AllocationPlan:
    """Bisection on λ (log scale) for the lowest-error hull plan within `budget`."""
    low, high = 1e-30, 1.0
    while plan_for(curves, high).total_bytes > budget and high < 1e300:
        high *= 1e3
    if plan_for(curves, low).total_bytes <= budget:
        return plan_for(curves, low)
    for _ in range(200):
        middle = math.sqrt(low * high)
        if plan_for(curves, middle).total_bytes > budget:
            low = middle
        else:
            high = middle
        if high / low < 1 + 1e-9:
            break
    return plan_for(curves, high)


def _fill(curves: dict[str, RateDistortionCurve], plan: AllocationPlan, budget: int) -> AllocationPlan:
    """Spend the budget left after the Lagrangian plan on the upgrades saving most error per byte."""
    choices = dict(plan.choices)
    spare = budget - sum(c.stored_bytes for c in choices.values())
    while True:
        best, best_gain = None, 0.0
        for name, curve in curves.items():
            current = choices[name]
            for option in curve.choices:
                extra = option.stored_bytes - current.stored_bytes
                saved = current.weighted_error - option.weighted_error
                if 0 < extra <= spare and saved > 0 and saved / extra > best_gain:
                    best, best_gain = option, saved / extra
        if best is None:
            return AllocationPlan(choices, plan.write_options)
        spare -= best.stored_bytes - choices[best.name].stored_bytes
        choices[best.name] = best


def lagrangian_plans(curves: dict[str, RateDistortionCurve]) -> list[AllocationPlan]:
    """The distinct Lagrangian plans from largest (λ → 0) to smallest (λ → ∞), for walking the size axis."""
    low = 1e-30
    high = 1.0
    while plan_for(curves, high).total_bytes > minimum_bytes(curves) and high < 1e300:
        high *= 1e3
    plans, seen = [], set()
    for lam in np.geomspace(low, high, 400):
        plan = plan_for(curves, float(lam))
        if plan.total_bytes not in seen:
            seen.add(plan.total_bytes)
            plans.append(plan)
    return plans


def smallest_plan(curves: dict[str, RateDistortionCurve], accept: Callable[[AllocationPlan], bool]) -> AllocationPlan:
    """The smallest Lagrangian plan that `accept` (e.g. measured fidelity >= the floor) takes, by bisection
    over plans ordered by size (assumes a larger plan is never worse). Raises TargetUnreachableError when
    even the largest plan (every tensor at its most exact candidate) is refused."""
    plans = sorted(lagrangian_plans(curves), key=lambda p: p.total_bytes)
    if not accept(plans[-1]):
        raise TargetUnreachableError("the fidelity asked for is not reached even by the largest plan")
    low, high = -1, len(plans) - 1  # plans[high] is accepted
    while high - low > 1:
        middle = (low + high) // 2
        if accept(plans[middle]):
            high = middle
        else:
            low = middle
    return plans[high]
