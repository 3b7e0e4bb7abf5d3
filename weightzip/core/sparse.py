"""Sparse storage with relative indices (Deep Compression §2, Fig. 2).

A pruned tensor, flattened in C order, is stored as a list of *entries*: for each kept position the
number of positions skipped since the previous entry (the *gap*, stored at a fixed `gap_bits` width)
and the value there. A gap larger than ``2**gap_bits - 1`` is bridged by *filler* entries: an entry
with the maximal gap placed on a position that was not kept, holding whatever value that position has
(the background value, e.g. the zero or the pruned weights' cluster index). A filler therefore writes
back the value that was already there, and decoding needs no special case:

    position of entry i = Σ_{j <= i} (gap_j + 1) - 1.

Positions after the last kept one need no entries: the dense length is known. The paper uses 8-bit
gaps for conv layers and 5-bit gaps for fully connected layers; :func:`best_gap_bits` picks the width
minimising the total size for a given value width.

Everything is vectorised: encoding is a `flatnonzero`, a `diff` and a `repeat` for the fillers;
decoding is a `cumsum` and a scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weightzip.core.bitpack import unsigned_dtype
from weightzip.core.errors import WeightzipError

MAX_GAP_BITS = 16


@dataclass(frozen=True)
class RelativeIndexStream:
    """Entries of a sparse flat array: gaps (skipped positions before each entry) and positions.

    gaps: (entries,) unsigned, each < 2**gap_bits.
    positions: (entries,) int64 flat positions of the entries (kept positions and fillers).
    fillers: how many entries are fillers (entries - fillers = kept positions).
    """

    gaps: np.ndarray
    positions: np.ndarray
    gap_bits: int
    length: int
    fillers: int

    @property
    def entries(self) -> int:
        return int(self.gaps.shape[0])


def relative_positions(keep, gap_bits: int) -> RelativeIndexStream:
    """Gap stream (with fillers) for the True positions of the flat boolean mask `keep`."""
    gap_bits = _check_gap_bits(gap_bits)
    keep = np.asarray(keep, dtype=bool).ravel()
    kept = np.flatnonzero(keep).astype(np.int64)
    raw_gaps = np.diff(kept, prepend=np.int64(-1)) - 1
    span = np.int64(1) << gap_bits  # positions one maximal filler entry advances by
    fillers_before = raw_gaps // span
    total_fillers = int(fillers_before.sum())
    entries = kept.size + total_fillers
    gaps = np.empty(entries, dtype=unsigned_dtype(gap_bits))
    positions = np.empty(entries, dtype=np.int64)
    if total_fillers == 0:
        gaps[:] = raw_gaps
        positions[:] = kept
    else:
        # Slot of each kept entry once the fillers before it are inserted.
        kept_slot = np.arange(kept.size) + np.cumsum(fillers_before)
        is_filler = np.ones(entries, dtype=bool)
        is_filler[kept_slot] = False
        gaps[is_filler] = span - 1
        gaps[kept_slot] = raw_gaps - fillers_before * span
        positions[:] = np.cumsum(gaps.astype(np.int64) + 1) - 1
    return RelativeIndexStream(gaps, positions, gap_bits, keep.size, total_fillers)


def positions_from_gaps(gaps, length: int) -> np.ndarray:
    """Flat positions of the entries of a gap stream; raises if they run past `length`."""
    gaps = np.asarray(gaps)
    if gaps.ndim != 1 or (gaps.size and not np.issubdtype(gaps.dtype, np.integer)):
        raise WeightzipError("gaps must be a 1-D integer array")
    if gaps.size == 0:
        return np.zeros(0, dtype=np.int64)
    if gaps.min() < 0:
        raise WeightzipError("gaps must be non-negative")
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if positions[-1] >= length:
        raise WeightzipError(
            f"relative indices reach position {int(positions[-1])}, past the array's {length} entries"
        )
    return positions


def sparse_encode(flat, background, gap_bits: int) -> tuple[RelativeIndexStream, np.ndarray]:
    """Entries of the 1-D array `flat` that differ from `background` (a scalar or a same-shape array).

    Returns the gap stream and the values at its positions (fillers carry the background value).
    Floats are compared by bit pattern, so -0.0 against a 0.0 background is kept and NaN round-trips.
    """
    flat = np.asarray(flat).ravel()
    background = np.broadcast_to(np.asarray(background, dtype=flat.dtype), flat.shape)
    keep = _bits(flat) != _bits(background)
    stream = relative_positions(keep, gap_bits)
    return stream, flat[stream.positions]


def sparse_decode(gaps, values, background, length: int, dtype=None) -> np.ndarray:
    """Inverse of :func:`sparse_encode`: the dense flat array of `length` entries."""
    values = np.asarray(values).ravel()
    positions = positions_from_gaps(gaps, length)
    if positions.size != values.size:
        raise WeightzipError(f"sparse stream has {positions.size} gaps but {values.size} values")
    dtype = values.dtype if dtype is None else np.dtype(dtype)
    out = np.empty(length, dtype=dtype)
    out[:] = np.broadcast_to(np.asarray(background, dtype=dtype), (length,))
    out[positions] = values
    return out


def best_gap_bits(keep, value_bits: float, candidates=range(1, MAX_GAP_BITS + 1)) -> int:
    """Gap width minimising entries·(gap_bits + value_bits), the fillers' cost included."""
    keep = np.asarray(keep, dtype=bool).ravel()
    kept = np.flatnonzero(keep).astype(np.int64)
    raw_gaps = np.diff(kept, prepend=np.int64(-1)) - 1
    best, best_cost = None, None
    for gap_bits in candidates:
        gap_bits = _check_gap_bits(gap_bits)
        entries = kept.size + int(np.sum(raw_gaps >> gap_bits))
        cost = entries * (gap_bits + value_bits)
        if best_cost is None or cost < best_cost:
            best, best_cost = gap_bits, cost
    if best is None:
        raise WeightzipError("best_gap_bits needs at least one candidate width")
    return best


def _bits(array: np.ndarray) -> np.ndarray:
    """Integer view of `array` for exact comparison (bit patterns for floats)."""
    if np.issubdtype(array.dtype, np.floating):
        return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
    return array


def _check_gap_bits(gap_bits) -> int:
    if isinstance(gap_bits, bool) or not isinstance(gap_bits, (int, np.integer)) \
            or not 1 <= gap_bits <= MAX_GAP_BITS:
        raise WeightzipError(f"gap_bits must be an integer in [1, {MAX_GAP_BITS}], got {gap_bits!r}")
    return int(gap_bits)
