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
    shape = tuple(int(s) for s in clustered.shape)
    if len(shape) < 2:
        raise WeightzipError(f"a palettized weight has at least 2 dimensions, got shape {shape}")
    k = clustered.number_of_clusters
    bits = max(1, bit_width(k))
    if bits > MAX_BITS:
        raise WeightzipError(f"a palettized weight holds at most {1 << MAX_BITS} clusters, got {k}")
    rows, cols = shape[0], math.prod(shape[1:])
    axis = clustered.axis
    if axis is not None and axis < 0:
        axis += len(shape)
    col_offsets = None
    if axis is None:
        rows_per_group = 0
    elif axis == 0:
        rows_per_group = int(clustered.group_size)
    else:
        rows_per_group = 0
        groups = np.broadcast_to(clustered.group_of_each_weight()[0], shape[1:]).ravel()
        col_offsets = (groups * k).astype(np.int32)
    return PackedLayout(bits, rows, cols, k, rows_per_group), col_offsets


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
