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

Encoding is two numba passes over the mask (count the entries, then write them), and choosing the
gap width one more (the filler count of every width at once); decoding is a `cumsum` and a scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
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
    keep = np.ascontiguousarray(np.asarray(keep, dtype=bool).ravel())
    kept, fillers = _count_entries(keep.view(np.uint8))
    total_fillers = int(fillers[gap_bits])
    entries = int(kept) + total_fillers
    gaps = np.empty(entries, dtype=unsigned_dtype(gap_bits))
    positions = np.empty(entries, dtype=np.int64)
    _write_entries(keep.view(np.uint8), gap_bits, gaps, positions)
    return RelativeIndexStream(gaps, positions, gap_bits, keep.size, total_fillers)


@numba.njit(cache=True, nogil=True)
def _count_entries(keep):
    """(kept positions, fillers[w] = fillers needed at gap width w for w in 0..MAX_GAP_BITS)."""
    fillers = np.zeros(MAX_GAP_BITS + 1, dtype=np.int64)
    kept = 0
    last = -1
    for position in range(keep.shape[0]):
        if keep[position]:
            gap = position - last - 1
            if gap > 1:
                for width in range(1, MAX_GAP_BITS + 1):
                    fillers[width] += gap >> width
            kept += 1
            last = position
    return kept, fillers


@numba.njit(cache=True, nogil=True)
def _write_entries(keep, gap_bits, gaps, positions):
    span = 1 << gap_bits  # positions one maximal filler entry advances by
    entry = 0
    last = -1
    for position in range(keep.shape[0]):
        if keep[position]:
            gap = position - last - 1
            while gap >= span:  # fillers, each on a position that was not kept
                last += span
                gaps[entry] = span - 1
                positions[entry] = last
                entry += 1
                gap -= span
            gaps[entry] = gap
            positions[entry] = position
            entry += 1
            last = position


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
    keep = np.ascontiguousarray(np.asarray(keep, dtype=bool).ravel())
    kept, fillers = _count_entries(keep.view(np.uint8))
    best, best_cost = None, None
    for gap_bits in candidates:
        gap_bits = _check_gap_bits(gap_bits)
        cost = (int(kept) + int(fillers[gap_bits])) * (gap_bits + value_bits)
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
