"""The in-memory layout of a palettized weight that the kernels read, and converting to and from it.

A weight of shape ``(rows, *rest)`` is viewed as a ``rows x cols`` matrix (``cols = prod(rest)``). Each row's
indices are bit-packed with the core's layout (:mod:`weightzip.core.bitpack`: value ``i`` at bits
``[i*b, (i+1)*b)``, LSB first) starting on a byte boundary: ``stride = ceil(cols * b / 8)`` bytes a row, so
rows can be decoded independently and in parallel. When ``cols * b`` is a multiple of 8 (almost every
layer) this is exactly the core's stream of the whole tensor. The buffer ends with 8 zero bytes that the
kernels may over-read.

Which codebook row a weight uses is given by the :class:`PackedLayout`'s `rows_per_group` (codebooks along
axis 0, or one codebook: 0) or by `col_offsets` (codebooks along another axis: the offset of each
column's codebook row in the flattened codebook).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from weightzip.core import ClusteredTensor
from weightzip.core.bitpack import bit_width, pack_bits, unpack_bits
from weightzip.core.errors import WeightzipError
from weightzip.torch.bitunpack import unpack

MAX_BITS = 8
TAIL_BYTES = 8


@dataclass(frozen=True)
class PackedLayout:
    """The shape of a packed weight: everything a kernel needs besides the tensors."""

    bits: int
    rows: int
    cols: int
    clusters: int
    rows_per_group: int  # codebook row of weight row r: r // rows_per_group; 0: one codebook (or col_offsets)

    @property
    def stride(self) -> int:
        return -(-self.cols * self.bits // 8)

    @property
    def packed_bytes(self) -> int:
        return self.rows * self.stride + TAIL_BYTES


def packed_layout(clustered: ClusteredTensor) -> tuple[PackedLayout, np.ndarray | None]:
    """The layout of `clustered` and its column offsets (None unless codebooks run along an axis > 0)."""
    return layout_for(clustered.shape, clustered.number_of_clusters, clustered.axis, clustered.group_size)


def layout_for(shape, k: int, axis: int | None, group_size: int) -> tuple[PackedLayout, np.ndarray | None]:
    """The layout of a weight of `shape` with `k` clusters whose codebooks run along `axis` (groups of
    `group_size`), and its column offsets (None unless codebooks run along an axis > 0); no indices needed."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise WeightzipError(f"a palettized weight has at least 2 dimensions, got shape {shape}")
    bits = max(1, bit_width(k))
    if bits > MAX_BITS:
        raise WeightzipError(f"a palettized weight holds at most {1 << MAX_BITS} clusters, got {k}")
    rows, cols = shape[0], math.prod(shape[1:])
    if axis is not None and axis < 0:
        axis += len(shape)
    col_offsets = None
    if axis is None:
        rows_per_group = 0
    elif axis == 0:
        rows_per_group = int(group_size)
    else:
        rows_per_group = 0
        stand_in = np.broadcast_to(np.zeros((), np.uint8), shape)  # the group layout only: nothing allocated
        codebook = np.zeros((-(-shape[axis] // group_size), k))
        groups = ClusteredTensor(codebook, stand_in, axis, group_size).group_of_each_weight()[0]
        col_offsets = (np.broadcast_to(groups, shape[1:]).ravel() * k).astype(np.int32)
    return PackedLayout(bits, rows, cols, k, rows_per_group), col_offsets


@dataclass(frozen=True)
class Palette:
    """Everything a palettized layer holds for its weight: layout, row-packed indices (uint8, with the tail
    bytes), codebook ``(groups, k)``, column offsets, and the weight's shape, codebook axis and group size.
    A layer keeps these arrays themselves (a float codebook is not copied): :meth:`from_clustered` copies the
    codebook it is given, :meth:`from_mapped` and :meth:`from_packed` take theirs as it is (the loader's are
    views of the mapped file)."""

    layout: PackedLayout
    packed: np.ndarray
    codebook: np.ndarray
    col_offsets: np.ndarray | None
    shape: tuple[int, ...]
    axis: int | None
    group_size: int

    @classmethod
    def from_clustered(cls, clustered: ClusteredTensor) -> "Palette":
        layout, col_offsets = packed_layout(clustered)
        return cls(layout, pack_rows(clustered.indices, layout), np.array(clustered.codebook), col_offsets,
                   tuple(int(s) for s in clustered.shape), clustered.axis, int(clustered.group_size))

    @classmethod
    def from_mapped(cls, codebook: np.ndarray, mapped: np.ndarray, length: int, bits: int, shape,
                    axis: int | None, group_size: int) -> "Palette | None":
        """The packed buffer `mapped` itself, nothing copied: `mapped` (uint8) is the memory-mapped file from
        the first byte of a `length`-byte stream of indices packed at `bits` bits (a `.wz` file's packed
        indices) to the file's end. None unless the stream already is this layout and every row holds whole
        groups of 8 values (then a kernel's reads past a group, which the layout allows up to 8 bytes, only
        meet bits it masks off: here the file's next bytes, which must exist)."""
        codebook = np.asarray(codebook)
        layout, col_offsets = layout_for(shape, codebook.shape[1], axis, group_size)
        if (bits != layout.bits or layout.cols % 8 or mapped.size < layout.packed_bytes
                or layout.rows * layout.stride != length):
            return None
        return cls(layout, mapped[: layout.packed_bytes], codebook, col_offsets, tuple(int(s) for s in shape),
                   axis, int(group_size))

    @classmethod
    def from_packed(cls, codebook: np.ndarray, data: bytes, bits: int, shape, axis: int | None,
                    group_size: int) -> "Palette":
        """From a stream of all indices packed at `bits` bits in C order (a `.wz` file's packed indices,
        :class:`weightzip.format.PackedIndices`): copied as it is when every row fills whole bytes, else
        re-packed row by row with NumPy bit operations (never one byte a weight for the whole tensor)."""
        codebook = np.asarray(codebook)
        layout, col_offsets = layout_for(shape, codebook.shape[1], axis, group_size)
        if bits == layout.bits and (layout.cols * bits) % 8 == 0:
            packed = np.zeros(layout.packed_bytes, dtype=np.uint8)
            packed[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        else:
            packed = _repack_rows(data, bits, layout)
        return cls(layout, packed, codebook, col_offsets, tuple(int(s) for s in shape), axis, int(group_size))


_REPACK_CHUNK_BITS = 1 << 23


def _repack_rows(data: bytes, bits: int, layout: PackedLayout) -> np.ndarray:
    """A C-order stream of `bits`-bit values re-packed at `layout.bits` bits, each row from a byte boundary."""
    out = np.zeros(layout.packed_bytes, dtype=np.uint8)
    body = out[: layout.rows * layout.stride].reshape(layout.rows, layout.stride)
    stream = np.frombuffer(data, dtype=np.uint8)
    row_bits = layout.cols * bits
    step = max(1, _REPACK_CHUNK_BITS // max(row_bits, 1))
    for first in range(0, layout.rows, step):
        last = min(layout.rows, first + step)
        start_bit, end_bit = first * row_bits, last * row_bits
        chunk = np.unpackbits(stream[start_bit // 8: -(-end_bit // 8)], bitorder="little")
        chunk = chunk[start_bit % 8: start_bit % 8 + end_bit - start_bit].reshape(last - first, layout.cols, bits)
        if bits != layout.bits:  # widen (or narrow: the high bits are zero) each value to the layout's width
            wide = np.zeros((last - first, layout.cols, layout.bits), dtype=np.uint8)
            keep = min(bits, layout.bits)
            wide[:, :, :keep] = chunk[:, :, :keep]
            chunk = wide
        padded = np.zeros((last - first, 8 * layout.stride), dtype=np.uint8)
        padded[:, : layout.cols * layout.bits] = chunk.reshape(last - first, -1)
        body[first:last] = np.packbits(padded, axis=1, bitorder="little")
    return out


def pack_rows(indices: np.ndarray, layout: PackedLayout) -> np.ndarray:
    """The indices (any shape with `rows` first) packed row by row, plus the tail bytes (uint8)."""
    matrix = np.asarray(indices).reshape(layout.rows, layout.cols)
    out = np.zeros(layout.packed_bytes, dtype=np.uint8)
    body = out[: layout.rows * layout.stride].reshape(layout.rows, layout.stride)
    if (layout.cols * layout.bits) % 8 == 0:
        body.reshape(-1)[:] = np.frombuffer(pack_bits(matrix, layout.bits), dtype=np.uint8)
        return out
    # Pad every row to a whole number of 8-value groups, pack all at once, keep each row's first bytes.
    groups = -(-layout.cols // 8)
    padded = np.zeros((layout.rows, 8 * groups), dtype=matrix.dtype)
    padded[:, : layout.cols] = matrix
    whole = np.frombuffer(pack_bits(padded, layout.bits), dtype=np.uint8).reshape(layout.rows, groups * layout.bits)
    body[:] = whole[:, : layout.stride]
    return out


def unpack_rows(packed: np.ndarray, layout: PackedLayout) -> np.ndarray:
    """Inverse of :func:`pack_rows`: the (rows, cols) indices as uint8."""
    body = np.asarray(packed)[: layout.rows * layout.stride].reshape(layout.rows, layout.stride)
    groups = -(-layout.cols // 8)
    whole = np.zeros((layout.rows, groups * layout.bits), dtype=np.uint8)
    whole[:, : layout.stride] = body
    values = unpack_bits(whole.tobytes(), layout.rows * groups * 8, layout.bits, dtype=np.uint8)
    return values.reshape(layout.rows, groups * 8)[:, : layout.cols]


def decode_rows_torch(packed: torch.Tensor, layout: PackedLayout, codebook: torch.Tensor, col_offsets: torch.Tensor | None,
                      rows: slice | torch.Tensor) -> torch.Tensor:
    """Rows of the weight decoded with torch ops only (the fallback when the kernels are not built), in
    the codebook's dtype, shape (n, cols)."""
    body = packed[: layout.rows * layout.stride].reshape(layout.rows, layout.stride)[rows]
    n = body.shape[0]
    groups = -(-layout.cols // 8)
    whole = torch.nn.functional.pad(body, (0, groups * layout.bits - layout.stride))
    codes = unpack(whole.reshape(-1), n * groups * 8, layout.bits).reshape(n, groups * 8)[:, : layout.cols]
    if col_offsets is not None:
        codes = codes + col_offsets
    elif layout.rows_per_group:
        row_ids = torch.arange(layout.rows)[rows]
        codes = codes + (row_ids // layout.rows_per_group * layout.clusters).to(torch.int32).unsqueeze(1)
    return torch.index_select(codebook.reshape(-1), 0, codes.reshape(-1)).reshape(n, layout.cols)


# ---------------------------------------------------------------- sparse (pruned) weights: CSR, relative indices

MAX_GAP = 255  # a gap (columns skipped) is one byte; longer ones are bridged by filler entries


@dataclass(frozen=True)
class SparsePalette:
    """A pruned palettized 2-D weight (rows x cols) in CSR with relative indices (Deep Compression's sparse
    layout, row by row so rows are independent): row r's entries are ``row_ptr[r] .. row_ptr[r + 1]``;
    entry e lies ``gaps[e] + 1`` columns after the previous one (a row's first at column ``gaps[e]``) and
    holds the codebook index ``values[e]``. Weights whose centroid is 0.0 (the pruned ones) have no entry.
    The codebook ``(groups, k + 1)`` ends with a 0.0 in every row: index k marks a *filler*, an entry that
    only bridges a gap longer than :data:`MAX_GAP` columns. Codebooks per tensor or along axis 0 only."""

    row_ptr: np.ndarray  # int64 (rows + 1,)
    gaps: np.ndarray  # uint8 (entries,)
    values: np.ndarray  # uint8 (entries,)
    codebook: np.ndarray  # (groups, k + 1)
    shape: tuple[int, ...]
    rows_per_group: int  # 0: one codebook
    axis: int | None
    group_size: int

    @property
    def entries(self) -> int:
        return int(self.gaps.size)

    @property
    def stored_bytes(self) -> int:
        return self.row_ptr.nbytes + self.gaps.nbytes + self.values.nbytes + self.codebook.nbytes


def sparse_palette(clustered: ClusteredTensor) -> SparsePalette:
    """`clustered` (at most 255 clusters, codebooks per tensor or along axis 0) as a :class:`SparsePalette`."""
    shape = tuple(int(s) for s in clustered.shape)
    k, axis = clustered.number_of_clusters, clustered.axis
    if axis is not None and axis < 0:
        axis += len(shape)
    if len(shape) < 2 or k > MAX_GAP or axis not in (None, 0):
        raise WeightzipError(f"a sparse palettized weight needs >= 2 dimensions, at most {MAX_GAP} clusters and "
                             f"codebooks per tensor or along axis 0; got shape {shape}, k={k}, axis={axis}")
    rows, cols = shape[0], math.prod(shape[1:])
    codebook = np.asarray(clustered.codebook)
    padded = np.zeros((codebook.shape[0], k + 1), dtype=codebook.dtype)
    padded[:, :k] = codebook
    indices = np.asarray(clustered.indices).reshape(rows, cols)
    rows_per_group = 0 if axis is None else int(clustered.group_size)
    group_of_row = np.zeros(rows, np.int64) if axis is None else np.arange(rows) // rows_per_group
    kept_rows, kept_cols = np.nonzero(codebook[group_of_row[:, None], indices] != 0)
    previous = np.empty_like(kept_cols)
    previous[1:] = kept_cols[:-1]
    if kept_rows.size:
        previous[np.r_[True, kept_rows[1:] != kept_rows[:-1]]] = -1  # each row starts before column 0
    gap = kept_cols - previous - 1
    fillers = gap // (MAX_GAP + 1)
    ends = np.cumsum(fillers + 1)
    gaps = np.full(int(ends[-1]) if ends.size else 0, MAX_GAP, dtype=np.uint8)  # fillers, then the kept entries
    values = np.full(gaps.size, k, dtype=np.uint8)
    gaps[ends - 1] = gap - (MAX_GAP + 1) * fillers
    values[ends - 1] = indices[kept_rows, kept_cols]
    row_ptr = np.zeros(rows + 1, dtype=np.int64)
    row_ptr[1:] = np.cumsum(np.bincount(kept_rows, weights=fillers + 1, minlength=rows).astype(np.int64))
    return SparsePalette(row_ptr, gaps, values, padded, shape, rows_per_group, axis, int(clustered.group_size))


def sparse_dense_torch(row_ptr: torch.Tensor, gaps: torch.Tensor, values: torch.Tensor, codebook: torch.Tensor,
                       rows: int, cols: int, rows_per_group: int) -> torch.Tensor:
    """The whole (rows, cols) weight of a sparse palette, with torch ops (the fallback without the kernels)."""
    counts = row_ptr[1:] - row_ptr[:-1]
    row_of_entry = torch.repeat_interleave(torch.arange(rows), counts)
    steps = gaps.to(torch.int64) + 1
    running = torch.cumsum(steps, 0)
    start = torch.cat([running.new_zeros(1), running])[row_ptr[:-1]]  # steps taken before each row
    cols_of_entry = running - torch.repeat_interleave(start, counts) - 1
    group = row_of_entry // rows_per_group if rows_per_group else torch.zeros_like(row_of_entry)
    dense = codebook.new_zeros(rows, cols)
    dense[row_of_entry, cols_of_entry] = codebook[group, values.to(torch.int64)]  # fillers write their 0.0
    return dense
