"""Magnitude pruning masks (unstructured, per-channel, block and N:M), NumPy only.

Deep Compression's first stage: weights of small magnitude are set to zero and kept at zero while the rest
retrain. Every front end computes its masks here and only converts tensors.

Masks are boolean arrays of the weights' shape, ``True`` where the weight is kept. Ties in magnitude are
broken deterministically: among equal magnitudes the weight with the lower (row-major) index is kept, so a
mask depends only on the values, never on sort internals.

The schedules that say *how much* to prune *when* live in :mod:`weightzip.core.schedules` and are re-exported
here.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import numpy as np

from weightzip.core.errors import WeightzipError
from weightzip.core.schedules import (
    ConstantSparsity,
    InvalidScheduleError,
    PolynomialDecay,
    PruningSchedule,
    schedule_from_config,
)
from weightzip.core.validation import as_weight_array, check_fraction

__all__ = [
    "BlockPooling",
    "ConstantSparsity",
    "InvalidScheduleError",
    "InvalidSparsityError",
    "PolynomialDecay",
    "PruningSchedule",
    "apply_mask",
    "is_n_m_sparse",
    "magnitude_mask",
    "measured_sparsity",
    "n_m_mask",
    "pruned_count",
    "schedule_from_config",
]

BlockPooling = Literal["avg", "max"]  # how a block's magnitudes are summarised (TFMOT's block_pooling_type)
_POOLINGS = ("avg", "max")


class InvalidSparsityError(WeightzipError):
    """A sparsity, block shape or N:M pattern that cannot be applied to the given weights."""


def pruned_count(size: int, sparsity: float) -> int:
    """How many of `size` weights a `sparsity` zeroes: ``round(sparsity * size)`` (halves round up).

    At least one weight is always kept (as TFMOT does), so a tiny tensor at high sparsity is never
    emptied entirely.
    """
    sparsity = _check_sparsity(sparsity)
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise InvalidSparsityError(f"size must be a non-negative integer, got {size!r}")
    if size == 0:
        return 0
    return min(int(math.floor(sparsity * size + 0.5)), int(size) - 1)


def magnitude_mask(weights, sparsity: float, *, axis: int | None = None,
                   block_shape: tuple[int, ...] | None = None, pooling: BlockPooling = "avg") -> np.ndarray:
    """Keep-mask that zeroes the `sparsity` fraction of `weights` with the smallest magnitude.

    axis: None ranks the whole tensor together (TFMOT's behaviour); an integer prunes every slice along that
      axis (e.g. every output channel) to the same sparsity, so no channel is emptied.
    block_shape: prune whole blocks instead of single weights (one entry per weight dimension, e.g. ``(1, 4)``
      for a Dense kernel). A block's score is the mean (``pooling="avg"``) or max (``"max"``) magnitude of
      the weights in it; edge blocks that overhang the tensor are scored on the weights they hold. The
      sparsity then counts blocks.

    Exactly :func:`pruned_count` weights (or blocks, per slice when `axis` is given) are zeroed.
    """
    array = as_weight_array(weights)
    sparsity = _check_sparsity(sparsity)
    if block_shape is None:
        return _magnitude_mask_unblocked(np.abs(array), sparsity, axis)
    blocks = _check_block_shape(block_shape, array.shape)
    if pooling not in _POOLINGS:
        raise InvalidSparsityError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
    scores = _pool_blocks(np.abs(array).astype(np.float64), blocks, pooling)
    block_mask = _magnitude_mask_unblocked(scores, sparsity, axis)
    for dim, size in enumerate(blocks):
        block_mask = np.repeat(block_mask, size, axis=dim)
    return block_mask[tuple(slice(0, extent) for extent in array.shape)]


def n_m_mask(weights, n: int = 2, m: int = 4, *, axis: int) -> np.ndarray:
    """Structured N:M keep-mask: in every run of `m` consecutive weights along `axis`, keep the `n` largest.

    `axis` is the layer's input axis (0 for a Keras Dense kernel ``(in, out)``, -2 for a Keras Conv2D kernel
    ``(h, w, in, out)``, -1 for a PyTorch Linear weight ``(out, in)``): 2:4 along it is the pattern sparse
    tensor cores accelerate. The axis length must be a multiple of `m`.
    """
    array = as_weight_array(weights)
    n = _check_positive_int(n, "n")
    m = _check_positive_int(m, "m")
    if n > m:
        raise InvalidSparsityError(f"N:M sparsity needs n <= m, got n={n}, m={m}")
    axis = _normalised_axis(axis, array.ndim)
    length = array.shape[axis]
    if length % m:
        raise InvalidSparsityError(
            f"{n}:{m} sparsity needs the length of axis {axis} to be a multiple of {m}; "
            f"the weights have shape {array.shape} (axis length {length})"
        )
    moved = np.moveaxis(np.abs(array), axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (length // m, m))
    rank = np.argsort(np.argsort(-groups, axis=-1, kind="stable"), axis=-1, kind="stable")
    keep = (rank < n).reshape(moved.shape)
    return np.moveaxis(keep, -1, axis)


def is_n_m_sparse(weights, n: int = 2, m: int = 4, *, axis: int) -> bool:
    """True when every run of `m` weights along `axis` has at most `n` nonzeros."""
    array = np.asarray(weights)
    axis = _normalised_axis(axis, array.ndim)
    if array.shape[axis] % m:
        return False
    moved = np.moveaxis(array != 0, axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
    return bool(np.all(groups.sum(axis=-1) <= n))


def apply_mask(weights, mask) -> np.ndarray:
    """`weights` with the weights where `mask` is False set to exactly zero (same dtype)."""
    array = np.asarray(weights)
    keep = np.asarray(mask)
    if keep.shape != array.shape:
        raise InvalidSparsityError(f"mask shape {keep.shape} does not match weights shape {array.shape}")
    return np.where(keep.astype(bool), array, np.zeros((), dtype=array.dtype))


def measured_sparsity(weights) -> float:
    """Fraction of entries that are exactly zero."""
    array = np.asarray(weights)
    if array.size == 0:
        raise InvalidSparsityError("cannot measure the sparsity of an empty array")
    return float(np.count_nonzero(array == 0)) / array.size


def _magnitude_mask_unblocked(magnitude: np.ndarray, sparsity: float, axis: int | None) -> np.ndarray:
    if axis is None:
        rows = magnitude.reshape(1, -1)
    else:
        axis = _normalised_axis(axis, magnitude.ndim)
        rows = np.moveaxis(magnitude, axis, 0).reshape(magnitude.shape[axis], -1)
    zeros = pruned_count(rows.shape[1], sparsity)
    keep = _keep_largest(rows, rows.shape[1] - zeros)
    if axis is None:
        return keep.reshape(magnitude.shape)
    moved_shape = (magnitude.shape[axis],) + tuple(np.delete(magnitude.shape, axis))
    return np.moveaxis(keep.reshape(moved_shape), 0, axis)


def _keep_largest(rows: np.ndarray, keep: int) -> np.ndarray:
    """Per row, True at its `keep` largest entries; among equal entries the lower index is kept.

    O(n) selection, no sort: the smallest kept value of each row (`np.partition`) is the threshold;
    everything above it is kept, and of the entries equal to it, the first ones in index order.
    """
    size = rows.shape[1]
    if keep >= size:
        return np.ones(rows.shape, dtype=bool)
    threshold = np.partition(rows, size - keep, axis=1)[:, size - keep: size - keep + 1]
    above = rows > threshold
    tied = rows == threshold
    room = keep - np.count_nonzero(above, axis=1)  # how many tied entries fit
    crowded = np.flatnonzero(np.count_nonzero(tied, axis=1) > room)
    keep_mask = above | tied
    for row in crowded:  # more ties than room: only the first ones in index order
        keep_mask[row] = above[row] | (tied[row] & (np.cumsum(tied[row]) <= room[row]))
    return keep_mask


def _pool_blocks(magnitude: np.ndarray, blocks: tuple[int, ...], pooling: str) -> np.ndarray:
    padded_shape = tuple(-(-extent // size) * size for extent, size in zip(magnitude.shape, blocks))
    padded = np.full(padded_shape, np.nan)
    padded[tuple(slice(0, extent) for extent in magnitude.shape)] = magnitude
    split = []
    for extent, size in zip(padded_shape, blocks):
        split += [extent // size, size]
    tiles = padded.reshape(split)
    block_axes = tuple(range(1, len(split), 2))
    return np.nanmean(tiles, axis=block_axes) if pooling == "avg" else np.nanmax(tiles, axis=block_axes)


def _check_sparsity(sparsity) -> float:
    return check_fraction(sparsity, "sparsity", InvalidSparsityError)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidSparsityError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_block_shape(block_shape, shape: tuple[int, ...]) -> tuple[int, ...]:
    blocks = tuple(block_shape)
    if len(blocks) != len(shape):
        raise InvalidSparsityError(
            f"block_shape {blocks} must have one entry per weight dimension; the weights have shape {shape}"
        )
    return tuple(_check_positive_int(size, "every block_shape entry") for size in blocks)


def _normalised_axis(axis, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise InvalidSparsityError(f"axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise InvalidSparsityError(f"axis {axis} is out of range for weights of rank {ndim}")
    return int(axis) % ndim
