"""Sequential error compensation of a clustered tensor (GPTQ with a non-uniform, clustered grid).

Clustering each weight to its nearest centroid minimises the weight error, but what matters is the layer's
output ``W x``. With the calibration inputs' second-moment matrix ``H = E[x xᵀ]`` of a layer (im2col patches
for a convolution), the output error of one output row ``w`` is ``δᵀ H δ`` with ``δ = w − ŵ``. GPTQ
(Frantar et al. 2023, the OBS update of Hassibi & Stork) quantises the input columns one after another and
pushes each column's rounding error onto the columns not yet quantised, through the inverse Hessian:

    q_i = nearest centroid of w_i;   w_j -= (w_i − q_i) · [H⁻¹]_ij / [H⁻¹]_ii   for j > i

(with the upper Cholesky factor U of H⁻¹, row i of U holds exactly these ratios). Errors on later columns
then cancel, in the output, the errors made earlier. The codebook (from the sensitivity-weighted k-means)
keeps its layout and k, so sizes barely move (the indices' entropy may); given the new assignments, its
entries are then re-solved by least squares for the output error (GPTVQ's codebook update). Columns are
taken in descending ``H_ii`` (the "act-order" heuristic: the most used inputs first, while every later
column can still absorb their errors); H is damped by a fraction of its mean diagonal, as GPTQ does. Blocks
of 128 columns are updated lazily (the rank-128 trailing update is a BLAS product).

Layers are described by :class:`InputHessian`: ``H`` per group of output rows (a grouped/depthwise
convolution has one small H per group) and the permutation of the weight's axes that gives its
(rows, columns) matrix, columns in the order of H. This module is framework-neutral: the front ends
measure H (:func:`weightzip.torch.calibration.input_hessians`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numba
import numpy as np

from weightzip.core.assign import index_dtype
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.errors import WeightzipError
from weightzip.core.threads import threaded_map

BLOCK = 128
DAMPING = 0.01  # fraction of the mean diagonal added to H (GPTQ's default percdamp)
MAX_COLUMNS = 8192  # larger inputs: the n x n inverse costs more than the compensation gains
MIN_SAMPLES_PER_COLUMN = 2  # fewer input vectors than this per column: H is too poorly known and GPTQ
# overfits the fit inputs (measured: a 64-input Dense on 30 samples got worse on held-out inputs)
REFIT_MAX_WORK = 4e8  # rows x columns² multiply-adds at most for the codebook refit (about a second)


@dataclass(frozen=True)
class InputHessian:
    """``E[x xᵀ]`` of a layer's inputs, for the layer's weight viewed as a matrix.

    matrix: (groups, n, n), the second moments of each group's n inputs (one group unless the layer is a
        grouped / depthwise convolution).
    axes: the permutation of the weight's axes after which ``reshape(rows, n)`` gives the (rows, columns)
        matrix the layer computes ``rows @ x`` with, rows of group g contiguous (rows // (rows / groups)).
    samples: how many input vectors were averaged.
    """

    matrix: np.ndarray
    axes: tuple[int, ...]
    samples: int
    _factors: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # damping -> factors

    def ordered_factors(self, damping: float) -> tuple[np.ndarray, np.ndarray]:
        """:func:`_ordered_factors` of this matrix, computed once per damping (a plan is compensated several
        times while its size goal is met, always with the same Hessians)."""
        if damping not in self._factors:
            self._factors[damping] = _ordered_factors(self.matrix, damping)
        return self._factors[damping]

    @property
    def groups(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def columns(self) -> int:
        return int(self.matrix.shape[-1])

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a weight of `shape` matches this matrix (columns, groups) and is worth compensating (at least
        MIN_SAMPLES_PER_COLUMN input vectors per column were measured)."""
        if sorted(self.axes) != list(range(len(shape))) or self.matrix.ndim != 3 or not shape:
            return False
        permuted = [shape[a] for a in self.axes]
        suffixes = {int(np.prod(permuted[j:])) for j in range(1, len(permuted))}
        rows = int(np.prod(shape)) // self.columns if self.columns else 0
        return (self.columns in suffixes and rows % self.groups == 0 and 1 < self.columns <= MAX_COLUMNS
                and self.samples >= MIN_SAMPLES_PER_COLUMN * self.columns and bool(np.all(np.isfinite(self.matrix))))

    def as_matrix(self, array: np.ndarray) -> np.ndarray:
        return np.transpose(array, self.axes).reshape(-1, self.columns)

    def from_matrix(self, matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        permuted = tuple(shape[a] for a in self.axes)
        return np.transpose(matrix.reshape(permuted), np.argsort(self.axes))


def output_error(weights: np.ndarray, approximation: np.ndarray, hessian: InputHessian) -> float:
    """``Σ_rows δᵀ H δ``: the summed squared output error of the layer, per calibration input."""
    delta = hessian.as_matrix(np.asarray(weights, np.float64) - np.asarray(approximation, np.float64))
    per_group = delta.reshape(hessian.groups, -1, hessian.columns)
    return float(np.einsum("gri,gij,grj->", per_group, hessian.matrix, per_group))


def compensate(clustered: ClusteredTensor, weights: np.ndarray, hessian: InputHessian, *,
               damping: float = DAMPING, refit: bool = True) -> ClusteredTensor:
    """`clustered` with its indices re-chosen by GPTQ (module doc), same codebook layout; with `refit` (and a
    layer small enough: rows · columns² <= REFIT_MAX_WORK), each codebook row then re-solved by least squares
    for the output error given those assignments (the codebook update of GPTVQ).

    Raises WeightzipError when `hessian` does not match the weight or a codebook row changes along a
    matrix row (codebooks must follow output rows: per tensor, per output channel or groups of them).
    """
    weights = np.asarray(weights)
    shape = weights.shape
    if tuple(clustered.shape) != shape or not hessian.fits(shape):
        raise WeightzipError(f"input Hessian of {hessian.matrix.shape} does not fit a weight of shape {shape}")
    codebook_of = hessian.as_matrix(np.broadcast_to(clustered.group_of_each_weight(), shape))
    row_codebook = np.ascontiguousarray(codebook_of[:, 0]).astype(np.int64)
    if np.any(codebook_of != row_codebook[:, None]):
        raise WeightzipError("compensation needs one codebook per output row")
    matrix = hessian.as_matrix(weights).astype(np.float64)  # a copy: updated in place
    codebooks = np.asarray(clustered.codebook, np.float64)
    rows, columns = matrix.shape
    per_group = rows // hessian.groups
    chosen = np.empty((rows, columns), np.int64)
    orders, factors = hessian.ordered_factors(damping)
    for group in range(hessian.groups):
        lower, upper = group * per_group, (group + 1) * per_group
        order, factor = orders[group], factors[group]
        block = np.ascontiguousarray(matrix[lower:upper][:, order])
        chosen[lower:upper][:, order] = _quantise_in_order(block, factor, codebooks, row_codebook[lower:upper])
    codebook = np.asarray(clustered.codebook)
    if refit and rows * columns * columns <= REFIT_MAX_WORK:
        refitted = _refitted_codebooks(hessian.as_matrix(weights).astype(np.float64), chosen, hessian, codebooks,
                                       row_codebook)
        codebook, chosen = _sorted(refitted.astype(codebook.dtype), chosen, row_codebook)
    indices = hessian.from_matrix(chosen, shape).astype(index_dtype(codebooks.shape[1]))
    return ClusteredTensor(codebook, indices, clustered.axis, clustered.group_size)


def _refitted_codebooks(matrix, chosen, hessian: InputHessian, codebooks, row_codebook) -> np.ndarray:
    """The codebooks minimising the output error ``Σ_rows δᵀ H δ`` for the given assignments: per codebook
    row, the k normal equations ``(Σ_r A_rᵀ H A_r) c = Σ_r A_rᵀ H w_r`` (A_r: the row's one-hot
    assignments), solved by least squares; entries no weight uses keep their value."""
    rows = matrix.shape[0]
    group_of_row = np.arange(rows) // (rows // hessian.groups)
    gram, right = _normal_equations(matrix, chosen, hessian.matrix, group_of_row, row_codebook,
                                    codebooks.shape[0], codebooks.shape[1])
    refitted = codebooks.copy()
    for c in range(codebooks.shape[0]):
        used = np.flatnonzero(np.diag(gram[c]) > 0)
        if used.size == 0:
            continue
        system = gram[c][np.ix_(used, used)]
        system[np.diag_indices_from(system)] *= 1.0 + 1e-9
        solution = np.linalg.lstsq(system, right[c][used], rcond=None)[0]
        if np.all(np.isfinite(solution)):
            refitted[c, used] = solution
    return refitted


def _sorted(codebook: np.ndarray, chosen: np.ndarray, row_codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codebook rows sorted ascending again (as ClusteredTensor requires), indices remapped."""
    order = np.argsort(codebook, axis=1, kind="stable")
    rank = np.argsort(order, axis=1)
    return np.take_along_axis(codebook, order, axis=1), rank[row_codebook[:, None], chosen]


@numba.njit(cache=True, nogil=True)
def _normal_equations(matrix, chosen, h, group_of_row, row_codebook, count, k):
    gram = np.zeros((count, k, k))
    right = np.zeros((count, k))
    rows, columns = matrix.shape
    for r in range(rows):
        g = group_of_row[r]
        c = row_codebook[r]
        for i in range(columns):
            a = chosen[r, i]
            product = 0.0
            for j in range(columns):
                value = h[g, i, j]
                gram[c, a, chosen[r, j]] += value
                product += value * matrix[r, j]
            right[c, a] += product
    return gram, right


def _ordered_factors(h: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """Per group: (column order, upper Cholesky factor U of the damped H⁻¹ in that order: H⁻¹ = Uᵀ U), all
    groups at once (a depthwise layer has hundreds of small H)."""
    h = np.array(h, dtype=np.float64)
    groups, n, _ = h.shape
    diagonal = np.diagonal(h, axis1=1, axis2=2).copy()
    dead = diagonal <= 0
    index = np.arange(n)
    h[:, index, index] = np.where(dead, 1.0, diagonal)  # always-zero inputs: nothing to compensate
    diagonal[dead] = 0.0
    orders = np.argsort(-diagonal, axis=1, kind="stable")
    h = np.take_along_axis(np.take_along_axis(h, orders[:, :, None], axis=1), orders[:, None, :], axis=2)
    base = damping * np.mean(np.diagonal(h, axis1=1, axis2=2), axis=1)
    factors = np.empty_like(h)
    pending = np.arange(groups)
    for attempt in range(6):
        if pending.size == 0:
            break
        trial = h[pending].copy()
        trial[:, index, index] += (10.0 ** attempt if attempt else 1.0) * base[pending, None]
        ok = np.zeros(pending.size, bool)
        try:
            inverse = np.linalg.inv(trial)
            factor = np.swapaxes(np.linalg.cholesky((inverse + np.swapaxes(inverse, 1, 2)) / 2), 1, 2)
            ok = np.all(np.isfinite(factor), axis=(1, 2))
            factors[pending[ok]] = factor[ok]
        except np.linalg.LinAlgError:
            if pending.size > 1:  # find the failing groups one by one
                for position, group in enumerate(pending):
                    try:
                        single = np.linalg.inv(trial[position])
                        factor = np.linalg.cholesky((single + single.T) / 2).T
                        if np.all(np.isfinite(factor)):
                            factors[group], ok[position] = factor, True
                    except np.linalg.LinAlgError:
                        pass
        pending = pending[~ok]
    for group in pending:  # no correlation usable: plain nearest rounding
        factors[group] = np.diag(1.0 / np.sqrt(np.diagonal(h[group]) + base[group]))
    return orders, factors


def _quantise_in_order(matrix: np.ndarray, factor: np.ndarray, codebooks: np.ndarray,
                       row_codebook: np.ndarray) -> np.ndarray:
    """GPTQ over the columns of `matrix` (updated in place), lazily in blocks; the chosen indices."""
    rows, columns = matrix.shape
    chosen = np.empty((rows, columns), np.int64)
    for start in range(0, columns, BLOCK):
        stop = min(start + BLOCK, columns)
        block = np.ascontiguousarray(matrix[:, start:stop])
        errors = np.empty((rows, stop - start))
        _quantise_block(block, np.ascontiguousarray(factor[start:stop, start:stop]), codebooks, row_codebook,
                        chosen[:, start:stop], errors)
        if stop < columns:
            matrix[:, stop:] -= errors @ factor[start:stop, stop:]
    return chosen


@numba.njit(cache=True, nogil=True)
def _quantise_block(block, factor, codebooks, row_codebook, chosen, errors):
    rows, width = block.shape
    k = codebooks.shape[1]
    for i in range(width):
        d = factor[i, i]
        for r in range(rows):
            entries = codebooks[row_codebook[r]]
            w = block[r, i]
            low, high = 0, k - 1  # first entry >= w (entries sorted ascending)
            while low < high:
                middle = (low + high) // 2
                if entries[middle] < w:
                    low = middle + 1
                else:
                    high = middle
            best = low
            if low > 0 and w - entries[low - 1] <= entries[low] - w:
                best = low - 1
            chosen[r, i] = best
            error = (w - entries[best]) / d
            errors[r, i] = error
            for j in range(i + 1, width):
                block[r, j] -= error * factor[i, j]


def compensate_plan(plan, tensors: dict, hessians: dict[str, InputHessian], *, damping: float = DAMPING,
                    cache: dict | None = None):
    """`plan` (an :class:`~weightzip.core.allocation.AllocationPlan`) with every clustered tensor that has a
    fitting input Hessian compensated (:func:`compensate`); sizes re-measured with the plan's writer options,
    weighted errors re-measured with the tensors' importances (`tensors`: name -> TensorToCompress).
    cache: a dict kept across calls with the same tensors and Hessians: a choice already compensated (the
    same stored clustering, as the plans a size goal tries share most of their choices) is not redone.
    Returns (plan, names of the tensors compensated)."""
    from weightzip.core.allocation import AllocationPlan, as_written, stored_bytes, weighted_error

    choices, done = dict(plan.choices), []
    cache = {} if cache is None else cache
    pending = []
    for name, choice in plan.choices.items():
        hessian = hessians.get(name)
        if choice.clusters == 0 or choice.sparsity > 0 or choice.insensitive or hessian is None or not hessian.fits(choice.stored.shape):
            continue
        known = cache.get((name, id(choice.stored)))
        if known is not None and known[0] is choice.stored:  # (the stored object kept: its id is not reused)
            choices[name] = known[1]
            done.append(name)
        else:
            pending.append((name, choice, hessian))

    def compensated_choice(item):
        name, choice, hessian = item
        try:
            tensor = tensors[name]
            clustered = as_written(compensate(choice.stored, tensor.weights, hessian, damping=damping),
                                   plan.write_options)
        except WeightzipError:
            return None
        return dataclasses.replace(
            choice, stored=clustered, stored_bytes=stored_bytes(name, clustered, plan.write_options),
            weighted_error=weighted_error(tensor.weights, clustered.decode(), tensor.importance), compensated=True)

    for (name, choice, _), result in zip(pending, threaded_map(compensated_choice, pending, os.cpu_count() or 1)):
        if result is not None:
            choices[name] = result
            cache[(name, id(choice.stored))] = (choice.stored, result)
            done.append(name)
    position = {name: i for i, name in enumerate(plan.choices)}
    done.sort(key=position.__getitem__)  # (plan order, as before)
    return AllocationPlan(choices, plan.write_options), done


def compensation_notes(plan) -> list[str]:
    """The report line saying how many of `plan`'s tensors were compensated (none when none were)."""
    count = sum(choice.compensated for choice in plan.choices.values())
    return [f"error compensation (GPTQ on the clustered grid): {count} tensors' indices and codebooks chosen for "
            "their layers' output error on the fit inputs"] if count else []


def output_error_ratio(clustered: ClusteredTensor, weights: np.ndarray, hessian: InputHessian, *,
                       damping: float = DAMPING) -> float:
    """How much compensation (:func:`compensate`, GPTQ without the codebook refit) shrinks the layer's output
    error ``Σ_rows δᵀ H δ`` of `clustered` (nearest-centroid): compensated / plain, in [0, 1] (1 when the plain
    error is zero or compensation does not help)."""
    return _compensated_ratio(clustered, weights, hessian, damping)[0]


def _compensated_ratio(clustered: ClusteredTensor, weights: np.ndarray, hessian: InputHessian,
                       damping: float) -> tuple[float, ClusteredTensor | None]:
    """(:func:`output_error_ratio`, the compensated clustering it measured; None when the plain error is zero)."""
    plain = _output_error_fast(weights, clustered.decode(), hessian)
    if not plain > 0:
        return 1.0, None
    compensated = compensate(clustered, weights, hessian, damping=damping, refit=False)
    return float(min(1.0, max(0.0, _output_error_fast(weights, compensated.decode(), hessian) / plain))), compensated


def _output_error_fast(weights: np.ndarray, approximation: np.ndarray, hessian: InputHessian) -> float:
    """:func:`output_error` with one matrix product per group (BLAS) instead of an einsum."""
    delta = hessian.as_matrix(np.asarray(weights, np.float64) - np.asarray(approximation, np.float64))
    per_group = delta.reshape(hessian.groups, -1, hessian.columns)
    return float(sum(np.sum((per_group[g] @ hessian.matrix[g]) * per_group[g]) for g in range(hessian.groups)))


RESCORE_WINDOW_BITS = 2.0  # choices this far from the target's bits per weight are rescored (others: far off)


class PlanCompensation:
    """The refining step of post-training plans (a plan -> plan callable: :func:`compensate_plan`, memoised) that
    can also score a tensor's candidates *after* compensation, for the allocation.

    The rate–distortion curves measure each candidate's error with nearest-centroid assignment, but the chosen
    plan is then compensated, which shrinks some tensors' errors far more than others' (a layer with strongly
    correlated inputs gains most; a tensor with no input Hessian, like an embedding table, gains nothing): an
    allocation by plain errors spends bytes where compensation would have made them unnecessary.
    :meth:`rescored` multiplies each compensable candidate's sensitivity-weighted error by the ratio by which
    compensation shrinks its layer's output error (:func:`output_error_ratio`), so that the allocation weighs
    what the refined plan will hold. With `rescore` (the default), :func:`weightzip.core.post_training.choose_plan`
    allocates both ways and keeps the plan with the smaller output error on the fit inputs. It costs a GPTQ pass
    per candidate near the goal, a second refined plan and its measurement, and pays on both front ends (output
    error of allocated / uniform k at the same size, `bench_post_training.py --methods allocated`): MLPerf-Tiny
    ResNet-8 0.483 -> 0.423, DS-CNN unchanged within its calibration-draw spread; MobileNetV2 0.519 -> 0.499 on
    calibration draw 1 and 0.597 -> 0.486 on draw 0, and at 3 bits per weight its evaluation top-1 agreement
    0.688 -> 0.750 (draw 1) and 0.792 -> 0.865 (draw 0), 9 s more compress time on 2 cores (47 -> 56 s).
    all-MiniLM-L6-v2: 4 bits 0.9961 -> 0.9960 mean cosine, 3 bits 0.9827 -> 0.9802: there the plan measured better on
    the fit sentences generalises a little worse."""

    def __init__(self, tensors: dict, hessians: dict[str, InputHessian], *, damping: float = DAMPING,
                 rescore: bool = True):
        self.tensors, self.hessians, self.damping, self.rescore = tensors, hessians, damping, rescore
        self.cache: dict = {}

    def __call__(self, plan):
        return compensate_plan(plan, self.tensors, self.hessians, damping=self.damping, cache=self.cache)[0]

    def rescored(self, curves: dict, bits_per_weight: float | None = None, *, workers: int | None = None) -> dict:
        """`curves` (name -> RateDistortionCurve) with each clustered candidate of a compensable tensor (a fitting
        Hessian, not pruned, not insensitive; within RESCORE_WINDOW_BITS of `bits_per_weight` when given) scored
        by its expected error after compensation and by the bytes its compensated indices take (GPTQ's choices
        entropy-code differently from nearest-centroid ones); the curves' Pareto fronts recomputed. Same stored
        values: the refining step compensates whichever candidates are chosen."""
        from weightzip.core.allocation import RateDistortionCurve, _pareto, as_written, stored_bytes

        def rescored_curve(curve):
            hessian, tensor = self.hessians.get(curve.name), self.tensors.get(curve.name)
            if hessian is None or tensor is None or not hessian.fits(np.shape(tensor.weights)):
                return curve
            choices = []
            for choice in curve.choices:
                near = bits_per_weight is None or abs(choice.bits_per_weight - bits_per_weight) <= RESCORE_WINDOW_BITS
                if choice.clusters == 0 or choice.sparsity > 0 or choice.insensitive or not near:
                    choices.append(choice)
                    continue
                try:
                    ratio, compensated = _compensated_ratio(choice.stored, tensor.weights, hessian, self.damping)
                except WeightzipError:
                    ratio, compensated = 1.0, None
                # the bytes too: compensated indices entropy-code differently (an entropy-constrained codebook's
                # skewed index histogram flattens: MLPerf-Tiny ResNet-8, 2.63 -> 2.80 bits per weight)
                size = choice.stored_bytes if compensated is None else \
                    stored_bytes(curve.name, as_written(compensated, curve.write_options), curve.write_options)
                choices.append(dataclasses.replace(choice, weighted_error=choice.weighted_error * ratio,
                                                   stored_bytes=size))
            return RateDistortionCurve(curve.name, curve.weights, tuple(_pareto(choices)), curve.write_options)

        rescored = dict(zip(curves, threaded_map(rescored_curve, list(curves.values()),
                                                  workers or min(4, os.cpu_count() or 1))))
        return rescored
