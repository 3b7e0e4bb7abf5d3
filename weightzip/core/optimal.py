"""Optimal 1-D k-means (weighted), by dynamic programming with monotone divide and conquer.

In 1-D the clusters of an optimal solution are contiguous runs of the sorted values, so the optimum over
n sorted *atoms* follows from the recurrence D[j][i] = min_m D[j-1][m] + cost(m, i), where cost is the
squared error of one run (an O(1) prefix-sum query). The best split m is non-decreasing in i, which the
divide-and-conquer scheme of Grønlund et al. (2017) exploits: O(k · n log n) time. It is also
non-decreasing in j (one more run ends the last one later), which narrows each search further.

What the atoms are decides what "optimal" means (:attr:`OptimalPartition.exact` says which case ran):

- **Exact** (the optimum over every partition of the values): the atoms are the distinct values with their
  total weight. This is the case when there are at most `max_atoms` weights, when `max_atoms` is None, and
  whatever the size for 16-bit data (float16 arrays, and float32 arrays holding bfloat16 values, as
  checkpoints trained in bf16 do): their at most 65,536 distinct values are counted in O(n) by bit pattern.
- **Binned** (more than `max_atoms` weights of wider data): the atoms are the occupied bins of a
  `max_atoms`-bin equal-width histogram, with each bin's exact weight, mean and inner scatter, so the
  reported SSE is that of the partition found, and the partition is optimal among those that cut only
  between bins. It is exact when no bin holds two distinct values. Measured on 2^20 normally
  distributed float32 weights (1,041,106 distinct) with 65,536 bins (the default up to k = 128), its
  SSE is 7.5e-8 (k = 16), 1.1e-6 (k = 64) and 1.5e-5 (k = 256) above the exact optimum (`benchmarks/bench_core_clustering.py --n
  1048576`); by default k = 256 uses 32,768 bins (:func:`default_atoms`). Memory is one pass over the
  data plus k × bins int32 split points (32 MiB at k = 256).

Numerics: run costs Σw·(x − mean)² come from prefix sums of Σw, Σw·y, Σw·y² with y = x − c, c the data's
weighted mean, summed with compensation (Neumaier). Raw moments of offset data (LayerNorm gains near 1.0,
spread 1e-5) lose every significant digit to cancellation; centred ones keep the cost of every run to
about 1e-16 of the total scatter Σw·(x − c)², far below the gaps between partitions the DP compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from weightzip.core.errors import InvalidArgumentError
from weightzip.core.validation import as_sample_weight, as_weight_array, check_cluster_count, require_some_weight

MOST_ATOMS = 1 << 16
DP_CELLS = 1 << 23  # k × histogram bins of the default ("auto") histogram: 65,536 bins up to k = 128
DEFAULT_MAX_ATOMS = "auto"  # MOST_ATOMS bins, fewer above k = 128 (see default_atoms)
MAX_EXACT_SPLIT_BYTES = 1 << 30  # exact mode keeps k × atoms int32 split points


@dataclass(frozen=True)
class OptimalPartition:
    """The k runs of sorted values that the optimal 1-D k-means found.

    centroids: (k,) sorted float64, the weighted mean of each run.
    upper_bounds: (k − 1,) the largest value in each run but the last: a value v lies in run
        ``np.searchsorted(upper_bounds, v, side="left")``.
    sse: Σ w·(x − mean of x's run)² of this partition, summed run by run about each run's own mean.
    exact: True when this is the optimum over every partition of the values (see the module doc); False
        when it is optimal only among partitions that cut between the bins of a histogram.
    """

    centroids: np.ndarray
    upper_bounds: np.ndarray
    sse: float
    exact: bool


def default_atoms(k: int) -> int:
    """The histogram size of ``max_atoms="auto"``: 65,536 bins up to k = 128, then DP_CELLS / k (32,768 at
    k = 256). The DP's time grows with k × occupied bins, its SSE excess over the exact optimum with about
    (k / bins)²: at k = 256 on 4 M N(0, 0.02²) weights, 32,768 bins instead of 65,536 took the DP from 1.3 s
    to 0.2 s, the SSE up by 2.7e-5 (relative), the ANS-coded indices 8 bytes smaller (4,036,856)."""
    return max(2, min(MOST_ATOMS, DP_CELLS // max(1, k)))


def optimal_centroids(values, k: int, *, sample_weight=None,
                      max_atoms: int | str | None = DEFAULT_MAX_ATOMS) -> np.ndarray:
    """Sorted centroids of :func:`optimal_partition` (exact, or optimal over a histogram: see module doc)."""
    return optimal_partition(values, k, sample_weight=sample_weight, max_atoms=max_atoms).centroids


def optimal_partition(values, k: int, *, sample_weight=None,
                      max_atoms: int | str | None = DEFAULT_MAX_ATOMS) -> OptimalPartition:
    """The partition of `values` into k runs minimising Σ w·(x − c(x))² (see module doc for when it is exact).

    max_atoms: above this many weights (of data wider than 16 bits), solve over a histogram of this many bins;
        "auto": :func:`default_atoms` (65,536 up to k = 128, fewer above); None always solves exactly, on the distinct values, which costs O(k · d log d) time for d distinct
        values and k × d int32 split points (refused above 1 GiB).
    """
    array = as_weight_array(values).ravel()
    importance = as_sample_weight(sample_weight, np.shape(values))
    importance = None if importance is None else importance.ravel()
    require_some_weight(importance)
    k = check_cluster_count(k)
    if max_atoms == "auto":
        max_atoms = default_atoms(k)
    if max_atoms is not None and (isinstance(max_atoms, str) or max_atoms < 2):
        raise InvalidArgumentError(f"max_atoms must be >= 2 or None, got {max_atoms}")
    atoms = _sixteen_bit_atoms(array, importance)
    if atoms is None and max_atoms is not None and array.shape[0] > max_atoms:
        atoms = _histogram_atoms(array, importance, max_atoms)
        if atoms.size < k:  # too few occupied bins: fall back to distinct values
            atoms = None
    if atoms is None:
        atoms = _distinct_atoms(array, importance)
    k = check_cluster_count(k, atoms.size, what="distinct values" if importance is None
                            else "distinct values of positive sample_weight")
    if max_atoms is None and 4 * k * (atoms.size + 1) > MAX_EXACT_SPLIT_BYTES:
        raise InvalidArgumentError(f"the exact optimum over {atoms.size} distinct values at k={k} needs "
                         f"{4 * k * (atoms.size + 1) / 2**30:.1f} GiB of split points (limit "
                         f"{MAX_EXACT_SPLIT_BYTES / 2**30:.0f} GiB); pass max_atoms to solve over a histogram")
    starts = _optimal_run_starts(*atoms.prefix_sums(), k)
    return atoms.partition(starts)


def optimal_partitions(values, ks, *, sample_weight=None) -> dict[int, OptimalPartition]:
    """:func:`optimal_partition` of `values` for each k in `ks` (default histogram, every k <= 128) from ONE
    dynamic programme: the table for the largest k holds the best splits into every smaller number of runs
    too, so each k is a backtrack (a rate-distortion curve tries ten k: ~2.7x less DP work than ten runs).
    The k above the number of atoms (distinct values, or occupied bins) are left out of the result."""
    array = as_weight_array(values).ravel()
    importance = as_sample_weight(sample_weight, np.shape(values))
    importance = None if importance is None else importance.ravel()
    require_some_weight(importance)
    ks = sorted({check_cluster_count(k) for k in ks})
    if ks[-1] > 128:
        raise InvalidArgumentError(f"optimal_partitions solves k <= 128, got {ks[-1]}")
    max_atoms = default_atoms(ks[-1])  # the same histogram for every k <= 128
    atoms = _sixteen_bit_atoms(array, importance)
    if atoms is None and array.shape[0] > max_atoms:
        atoms = _histogram_atoms(array, importance, max_atoms)
        if atoms.size < ks[-1]:  # as optimal_partition: too few occupied bins, the distinct values instead
            atoms = None
    if atoms is None:
        atoms = _distinct_atoms(array, importance)
    ks = [k for k in ks if k <= atoms.size]
    if not ks:
        return {}
    split = _optimal_splits(*atoms.prefix_sums(), ks[-1])
    found = {}
    for k in ks:
        starts = np.zeros(k, dtype=np.int64)
        end = atoms.size
        for j in range(k - 1, 0, -1):
            starts[j] = split[j, end]
            end = starts[j]
        found[k] = atoms.partition(starts)
    return found


@dataclass
class _Atoms:
    """Sorted atoms: total weight, weighted mean (as an offset from `centre`), inner scatter, largest value."""

    weight: np.ndarray
    offset: np.ndarray  # mean − centre
    scatter: np.ndarray  # Σ w·(x − mean)² inside the atom (0 for a distinct value)
    largest: np.ndarray
    centre: float
    exact: bool

    @property
    def size(self) -> int:
        return int(self.weight.shape[0])

    def prefix_sums(self):
        first = self.weight * self.offset
        second = first * self.offset + self.scatter
        return _compensated_prefix(self.weight), _compensated_prefix(first), _compensated_prefix(second)

    def partition(self, starts: np.ndarray) -> OptimalPartition:
        """Centroids, bounds and SSE of the runs starting at `starts`.

        Run means are summed run by run, not taken from the prefix sums: there an atom whose weight is
        tiny next to the weight before it vanishes (1 + 1e-20 == 1). Each mean is kept inside its run.
        """
        last = np.append(starts[1:], self.size) - 1
        run_weight = np.add.reduceat(self.weight, starts)
        run_offset = np.add.reduceat(self.weight * self.offset, starts) / run_weight
        run_offset = np.clip(run_offset, self.offset[starts], self.offset[last])
        run_of_atom = np.repeat(np.arange(starts.shape[0]), np.diff(np.append(starts, self.size)))
        deviation = self.offset - run_offset[run_of_atom]
        sse = float(np.sum(self.weight * deviation * deviation) + np.sum(self.scatter))
        return OptimalPartition(run_offset + self.centre, self.largest[last[:-1]].astype(np.float64), sse,
                                self.exact)


def _compensated_prefix(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.shape[0] + 1)
    _neumaier_prefix(np.ascontiguousarray(values, dtype=np.float64), out)
    return out


@numba.njit(cache=True, nogil=True)
def _neumaier_prefix(values, out):
    """out[i] = Σ values[:i], each partial sum compensated (Neumaier) before it is rounded."""
    total = 0.0
    compensation = 0.0
    out[0] = 0.0
    for i in range(values.shape[0]):
        x = values[i]
        t = total + x
        if abs(total) >= abs(x):
            compensation += (total - t) + x
        else:
            compensation += (x - t) + total
        total = t
        out[i + 1] = total + compensation


def _atoms_of_distinct(distinct: np.ndarray, weight: np.ndarray) -> _Atoms:
    keep = weight > 0
    wide = distinct[keep].astype(np.float64)
    weight = weight[keep].astype(np.float64)
    centre = float(np.sum(weight * wide) / np.sum(weight))
    centre = min(max(centre, wide[0]), wide[-1])
    return _Atoms(weight, wide - centre, np.zeros_like(wide), wide, centre, True)


def _distinct_atoms(array: np.ndarray, importance: np.ndarray | None) -> _Atoms:
    """One atom per distinct value with positive weight."""
    if importance is None:
        distinct, count = np.unique(array, return_counts=True)
        return _atoms_of_distinct(distinct, count.astype(np.float64))
    distinct, inverse = np.unique(array, return_inverse=True)
    return _atoms_of_distinct(distinct, np.bincount(inverse.ravel(), weights=importance, minlength=distinct.shape[0]))


def _sixteen_bit_atoms(array: np.ndarray, importance: np.ndarray | None) -> _Atoms | None:
    """Distinct-value atoms of float16 data, or of float32 data holding bfloat16 values, in O(n); else None."""
    if array.dtype == np.float16:
        patterns = array.view(np.uint16)
        to_value = lambda bits: bits.astype(np.uint16).view(np.float16)  # noqa: E731
    elif array.dtype == np.float32 and array.shape[0] > 1 << 12:
        words = array.view(np.uint32)
        if _any_low_half(words):  # stops at the first value that is not bfloat16 (no temporary array)
            return None
        patterns = words >> np.uint32(16)
        to_value = lambda bits: (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)  # noqa: E731
    else:
        return None
    weight = np.bincount(patterns, weights=importance, minlength=1 << 16)
    used = np.flatnonzero(weight)
    values = to_value(used)
    negative_zero = values == 0  # +0.0 and -0.0 are one value
    if np.count_nonzero(negative_zero) > 1:
        zeros = used[negative_zero]
        weight[zeros[0]] = weight[zeros].sum()
        used = used[~negative_zero | (used == zeros[0])]
        values = to_value(used)
    order = np.argsort(values, kind="stable")
    return _atoms_of_distinct(values[order], weight[used[order]])


@numba.njit(cache=True, nogil=True)
def _any_low_half(words):
    for i in range(words.shape[0]):
        if words[i] & 0xFFFF:
            return True
    return False


def _histogram_atoms(array: np.ndarray, importance: np.ndarray | None, bins: int) -> _Atoms:
    """Occupied bins of an equal-width histogram, each with its exact weight, mean and inner scatter."""
    low, high = float(array.min()), float(array.max())
    weight, local_first, local_second, smallest, largest = _bin_moments(
        array, importance if importance is not None else np.empty(0), low, high, bins)
    keep = weight > 0
    weight, local_first, local_second = weight[keep], local_first[keep], local_second[keep]
    smallest, largest = smallest[keep], largest[keep]
    edge = low + np.flatnonzero(keep) * ((high - low) / bins)
    local_mean = local_first / weight
    scatter = np.maximum(local_second - local_first * local_mean, 0.0)
    mean = edge + local_mean
    centre = float(np.sum(weight * mean) / np.sum(weight))
    centre = min(max(centre, low), high)
    exact = bool(np.all(smallest == largest))
    if exact:
        scatter[:] = 0.0
        mean = largest
    return _Atoms(weight, mean - centre, scatter, largest, centre, exact)


@numba.njit(cache=True, nogil=True)
def _bin_moments(array, importance, low, high, bins):
    """Per bin: Σw, Σw·u, Σw·u² with u = x − the bin's left edge (scatter-stable), min and max of x."""
    weight = np.zeros(bins)
    first = np.zeros(bins)
    second = np.zeros(bins)
    smallest = np.full(bins, np.inf)
    largest = np.full(bins, -np.inf)
    width = (high - low) / bins
    scale = bins / (high - low) if high > low else 0.0
    if importance.shape[0] == 0:  # unweighted (a checkpoint's tensors): no weight to read, min/max without branches
        for i in range(array.shape[0]):
            x = np.float64(array[i])
            b = min(int((x - low) * scale), bins - 1)
            u = x - (low + b * width)
            weight[b] += 1.0
            first[b] += u
            second[b] += u * u
            low_so_far, high_so_far = smallest[b], largest[b]
            smallest[b] = x if x < low_so_far else low_so_far  # selects: replaced only by a strictly smaller x
            largest[b] = x if x > high_so_far else high_so_far
        return weight, first, second, smallest, largest
    for i in range(array.shape[0]):
        x = np.float64(array[i])
        b = int((x - low) * scale)
        if b >= bins:
            b = bins - 1
        w = importance[i]
        if w == 0.0:
            continue
        u = x - (low + b * width)
        weight[b] += w
        first[b] += w * u
        second[b] += w * u * u
        if x < smallest[b]:
            smallest[b] = x
        if x > largest[b]:
            largest[b] = x
    return weight, first, second, smallest, largest


@numba.njit(cache=True, nogil=True, inline="always")
def run_cost(cum_count, cum_first, cum_second, start, end):
    """Weighted squared error of the run of atoms [start, end) from prefix sums of weight, weight·x and
    weight·x² of centred values (also the cost of :mod:`weightzip.core.rowwise`'s rows)."""
    weight = cum_count[end] - cum_count[start]
    if weight <= 0.0:
        return 0.0
    total = cum_first[end] - cum_first[start]
    cost = (cum_second[end] - cum_second[start]) - total * total / weight
    return cost if cost > 0.0 else 0.0


@numba.njit(cache=True, nogil=True, inline="always")
def _best_start(cum_count, cum_first, adjusted, i, low, high):
    """(min over m in [low, high] of adjusted[m] − (Σw·y of atoms [m, i))² / Σw of them, the first m attaining
    it): the best start of the last run of the first i atoms. One division and three loads per candidate."""
    first_total = cum_first[i]
    weight_total = cum_count[i]
    best = np.inf
    best_m = low
    for m in range(low, high + 1):
        weight = weight_total - cum_count[m]
        value = adjusted[m]
        if weight > 0.0:  # a run of atoms whose weights vanished in the prefix sums costs 0
            total = first_total - cum_first[m]
            value -= total * total / weight
        if value < best:
            best = value
            best_m = m
    return best, best_m


@numba.njit(cache=True, nogil=True)
def _optimal_run_starts(cum_count, cum_first, cum_second, k):
    """Start atom of each of the k runs of an optimal partition of the n atoms (:func:`_optimal_splits`)."""
    split = _optimal_splits(cum_count, cum_first, cum_second, k)
    n = cum_count.shape[0] - 1
    starts = np.zeros(k, dtype=np.int64)
    end = n
    for j in range(k - 1, 0, -1):
        starts[j] = split[j, end]
        end = starts[j]
    return starts


@numba.njit(cache=True, nogil=True)
def _optimal_splits(cum_count, cum_first, cum_second, k):
    """split[j, i]: start atom of the last run of an optimal partition of the first i atoms into j + 1 runs,
    for every j < k (backtracking from split[j, n] gives the optimal partition into j + 1 runs).

    Layer j (the first i atoms in j+1 runs) minimises previous[m] + cost(m, i) over the last run's start m.
    The best m is non-decreasing in i, and never below the best m of the layer before (one run fewer ends
    earlier). Early layers are solved level by level of an implicit binary tree over i (the divide and
    conquer of Grønlund et al. without a stack): each i searches only between the best m of its nearest
    solved neighbours. Once j² ≥ n/8, the runs are short and the best m moves little from one layer to the
    next: then i goes down from n and searches [best m of layer j−1 at i, best m of layer j at i+1] (Knuth's
    bounds), about 1 + n/j² candidates each against ~log n for the tree (k = 256 on 23,596 occupied bins:
    35.4 M candidates -> 25.3 M, same splits). cost's term Σw·y²(i) does not depend on m, so it is added
    once per i, and previous[m] − Σw·y²(m) is precomputed per layer.
    """
    n = cum_count.shape[0] - 1
    previous = np.empty(n + 1)
    current = np.empty(n + 1)
    adjusted = np.empty(n + 1)
    previous[0] = 0.0
    for i in range(1, n + 1):
        previous[i] = run_cost(cum_count, cum_first, cum_second, 0, i)
    split = np.zeros((k, n + 1), dtype=np.int32)
    top = 1
    while top < n + 1:
        top <<= 1
    for j in range(1, k):
        for m in range(n + 1):
            adjusted[m] = previous[m] - cum_second[m]
        before = split[j - 1]  # best splits with one run fewer (all 0 for j = 1)
        best_split = split[j]
        if 8 * j * j >= n:  # Knuth's order: i from n down, bounded by layer j−1 at i and layer j at i + 1
            upper = n - 1
            for i in range(n, j, -1):
                low = before[i] if before[i] > j else j
                high = upper if upper < i - 1 else i - 1
                if low > high:  # only through rounding noise in near-ties
                    low = high
                best, best_m = _best_start(cum_count, cum_first, adjusted, i, low, high)
                current[i] = best + cum_second[i]
                best_split[i] = best_m
                upper = best_m
        else:
            base = j + 1  # i = base + t for t in [0, size): at least one atom per run
            size = n - j
            step = top
            while step >= 1:
                t = step - 1
                while t < size:  # the points of this level; their neighbours t ± step are solved
                    i = base + t
                    low = before[i] if before[i] > j else j
                    if t >= step and best_split[i - step] > low:
                        low = best_split[i - step]
                    high = i - 1
                    if t + step < size and best_split[i + step] < high:
                        high = best_split[i + step]
                    if low > high:  # only through rounding noise in near-ties
                        low = high
                    best, best_m = _best_start(cum_count, cum_first, adjusted, i, low, high)
                    current[i] = best + cum_second[i]
                    best_split[i] = best_m
                    t += 2 * step
                step >>= 1
        for i in range(j + 1):
            current[i] = np.inf
        previous, current = current, previous
    return split
