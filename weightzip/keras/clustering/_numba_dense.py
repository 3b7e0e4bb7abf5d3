"""The centroid gradient of a clustered Dense kernel under fixed assignment, without its weight gradient.

A Dense layer ``y = x @ W`` with ``W = table[index]`` has the centroid gradient
``dtable[c] = sum over (i, o) with index[i, o] == c of (x^T g)[i, o]``. Autograd computes it by materialising the
weight gradient ``x^T g`` (a kernel-sized tensor, 67 MB for 4096 x 4096, freshly allocated each step by PyTorch:
its page faults cost more than the product) and summing it by index. At a small batch the product has few
multiply-adds per weight (one per batch row), so :func:`outer_product_segment_sums` computes it tile by tile,
4 rows x 64 columns in 16 AVX-512 registers (:func:`outer_block`, reading g from a copy stored
block by block, :func:`_panels`), and sums each tile by index while it is in L1
(:func:`._numba_avx512.segment_sums_vector`): nothing kernel-sized is written, and the kernel's index bytes are
the only large array read. 32 x 4096 by 4096 x 4096 on two cores: 17 ms, against 33 ms for PyTorch's
``x.T @ g`` into a new tensor plus 7.5 ms for the sum. Without AVX-512 (AVX2 has 16 vector registers of 8 lanes)
a block is 4 rows x 16 columns in 8 registers and each tile row is summed by index in four interleaved rows of
scalar sums: 20-22 ms on two AMD EPYC cores (AVX2), against 40-47 ms for XLA's ``x.T @ g`` alone.

Served where numba's vector products run (:data:`._numba_avx512.VECTOR_PRODUCTS`: AVX-512, or AVX2 with FMA),
tables of at most 16 entries, float32; rows and columns that do not fill a tile take a scalar loop.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from weightzip.keras.clustering._numba_avx512 import (
    AVX512,
    F32X16,
    VECTOR_PRODUCTS,
    c_vectors,
    segment_sums_vector,
    vector_pointer,
)
from weightzip.keras.clustering._numba_kernels import _MAX_CHUNKS, add_lane_sums, fold_lanes

OUTER_ROWS = 4
# The lanes of the vectors :func:`outer_block` accumulates in, and their count per row: 4 rows x 64 columns in 16
# zmm registers with AVX-512; else 4 rows x 16 columns in 8 ymm registers (AVX2 has 16 of them, not 32).
LANES = 16 if AVX512 else 8
ROW_VECTORS = 4 if AVX512 else 2
OUTER_COLUMNS = LANES * ROW_VECTORS
"""The columns of the block of a rank-`batch` product that :func:`outer_block` holds in registers."""
_VECTOR = ir.VectorType(ir.FloatType(), LANES)


def broadcast_element(builder, data, offset, vector=F32X16):
    """The float32 at element `offset` of `data` (an array's data pointer) in every lane of a `vector`."""
    value = builder.load(builder.gep(data, [offset]))
    lane = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lane, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vector.count), [0] * vector.count))


@intrinsic
def outer_block(typingctx, xt, g, tile, row, column, count, x_stride, x_offset, g_stride, tile_stride, tile_column,
                accumulate):
    """``tile[r * tile_stride + tile_column + c] (+)= sum over b < count of xt[(row + r) * x_stride + x_offset + b] *
    g[b * g_stride + column + c]`` for r < 4, c < OUTER_COLUMNS: a block of ``xt @ g`` (xt: rows x inner, g: inner x
    columns, both flat, C order), its 4 x ROW_VECTORS vectors accumulated in registers by fused multiply-adds from
    zero or, with `accumulate`, from the tile's values, each step one load of ROW_VECTORS vectors of g and 4
    broadcasts of xt. count >= 1; float32 C-contiguous 1-D arrays. Compiled for any CPU by LLVM (its vectors fit
    AVX-512's registers or AVX2's, as :data:`LANES`). Also :mod:`._numba_lut`'s product by a decoded kernel."""
    if not (c_vectors(xt, g, tile) and xt.dtype == g.dtype == tile.dtype == types.float32
            and isinstance(accumulate, types.Boolean)):
        return None

    def codegen(context, builder, signature, args):
        def pointer(position, offset):
            return vector_pointer(context, builder, signature, args, position, offset, _VECTOR)

        row_at, column_at, count_at, x_stride_at, x_offset_at, g_stride_at, tile_stride_at, tile_column_at = args[3:11]
        i64 = ir.IntType(64)
        fma = builder.module.declare_intrinsic(f"llvm.fma.v{LANES}f32", fnty=ir.FunctionType(_VECTOR, [_VECTOR] * 3))

        def tile_pointer(r, v):
            row_start = builder.add(builder.mul(ir.Constant(i64, r), tile_stride_at), tile_column_at)
            return pointer(2, builder.add(row_start, ir.Constant(i64, LANES * v)))

        zero = ir.Constant(_VECTOR, [0.0] * LANES)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(OUTER_ROWS * ROW_VECTORS)]
        with builder.if_then(args[11]):
            for r in range(OUTER_ROWS):
                for v in range(ROW_VECTORS):
                    builder.store(builder.load(tile_pointer(r, v), align=4), sums[r * ROW_VECTORS + v])
        xt_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        with cgutils.for_range(builder, count_at) as loop:
            b = loop.index
            g_row = builder.add(builder.mul(b, g_stride_at), column_at)
            g_vectors = [builder.load(pointer(1, builder.add(g_row, ir.Constant(i64, LANES * v))), align=4)
                         for v in range(ROW_VECTORS)]
            for r in range(OUTER_ROWS):
                x_row = builder.mul(builder.add(row_at, ir.Constant(i64, r)), x_stride_at)
                x_at = builder.add(builder.add(x_row, x_offset_at), b)
                x_vector = broadcast_element(builder, xt_data, x_at, _VECTOR)
                for v, g_vector in enumerate(g_vectors):
                    total = sums[r * len(g_vectors) + v]
                    builder.store(builder.call(fma, [x_vector, g_vector, builder.load(total)]), total)
        for r in range(OUTER_ROWS):
            for v in range(ROW_VECTORS):
                builder.store(builder.load(sums[r * ROW_VECTORS + v]), tile_pointer(r, v), align=4)
        return context.get_dummy_value()

    signature = types.void(xt, g, tile, row, column, count, x_stride, x_offset, g_stride, tile_stride, tile_column,
                           accumulate)
    return signature, codegen


# Tables of at most this many entries (the vector sums compare each value with 16 indices).
MAX_ENTRIES = 16
# Columns of a tile (several outer blocks), one call of the vector sums per tile row.
_TILE_COLUMNS = 256
_LANES = 16 * MAX_ENTRIES
# Without AVX-512, a tile row is summed by index into this many interleaved rows of float64 sums (breaks the
# add latency chain on a repeated index).
_SCALAR_ROWS = 4


def serves(entries: int) -> bool:
    """Whether :func:`outer_product_segment_sums` runs here for a table of `entries` entries."""
    return VECTOR_PRODUCTS and 1 <= entries <= MAX_ENTRIES


@numba.njit(cache=True, nogil=True)
def _panels(g):
    """g's blocks of OUTER_COLUMNS columns, each stored contiguously (batch x OUTER_COLUMNS; the last block padded
    with zeros): the rows of one block in g are a row of g apart (16 KB at 4096 columns, all in one L1 set), in a
    panel 256 bytes."""
    batch, columns = g.shape
    blocks = -(-columns // OUTER_COLUMNS)
    panels = np.zeros(blocks * batch * OUTER_COLUMNS, np.float32)
    for block in range(blocks):
        first = block * OUTER_COLUMNS
        width = min(OUTER_COLUMNS, columns - first)
        for b in range(batch):
            start = (block * batch + b) * OUTER_COLUMNS
            panels[start:start + width] = g[b, first:first + width]
    return panels


@numba.njit(cache=True, nogil=True)
def _rows(xt, g, panels, index, first, last, sums):
    """Adds the products of rows first:last (a multiple of OUTER_ROWS long) into sums[index] (float64); the columns
    that fill no block take the zero-padded last panel."""
    batch, columns = g.shape
    size = sums.shape[0]
    flat_xt = xt.reshape(-1)
    tile = np.empty((OUTER_ROWS, _TILE_COLUMNS), np.float32)
    flat_tile = tile.reshape(-1)
    lanes = np.zeros(_LANES, np.float32)
    wide_lanes = np.zeros(_LANES, np.float64)
    partial = np.zeros(_SCALAR_ROWS * (size + 1), np.float64)
    padded_columns = -(-columns // OUTER_COLUMNS) * OUTER_COLUMNS
    for i0 in range(first, last, OUTER_ROWS):
        for o0 in range(0, padded_columns, _TILE_COLUMNS):
            width = min(_TILE_COLUMNS, padded_columns - o0)
            for c in range(0, width, OUTER_COLUMNS):
                panel = (o0 + c) // OUTER_COLUMNS * batch * OUTER_COLUMNS
                outer_block(flat_xt, panels, flat_tile, i0, panel, batch, batch, 0, OUTER_COLUMNS, _TILE_COLUMNS, c,
                            False)
            width = min(width, columns - o0)  # (the padding's products are zero, and not summed)
            for r in range(OUTER_ROWS):
                row_index = index[i0 + r, o0:o0 + width]
                done = segment_sums_vector(tile[r], row_index, lanes, 0, width)
                if done < width:
                    _scalar_sums(tile[r], row_index, done, width, partial)
        fold_lanes(lanes, wide_lanes)
    add_lane_sums(wide_lanes, sums)
    for j in range(size):
        for row in range(_SCALAR_ROWS):
            sums[j] += partial[row * (size + 1) + j]


@numba.njit(cache=True, nogil=True, inline="always")
def _scalar_sums(values, index, first, last, partial):
    """Adds values[o] to the sum of index[o] for first <= o < last, into _SCALAR_ROWS interleaved rows of `partial`
    (flat, each row the table's entries and one more where an index outside the table adds)."""
    stride = partial.shape[0] // _SCALAR_ROWS
    size = stride - 1
    o = first
    while o + _SCALAR_ROWS <= last:
        for row in range(_SCALAR_ROWS):  # (unrolled by LLVM: independent adds)
            position = index[o + row]
            partial[row * stride + (position if 0 <= position < size else size)] += values[o + row]
        o += _SCALAR_ROWS
    for o in range(o, last):
        position = index[o]
        partial[position if 0 <= position < size else size] += values[o]


@numba.njit(cache=True, nogil=True, inline="always")
def _add_product(xt, g, index, i, o, sums):
    position = index[i, o]
    if 0 <= position < sums.shape[0]:
        total = np.float32(0)
        for b in range(g.shape[0]):
            total += xt[i, b] * g[b, o]
        sums[position] += total


@numba.njit(parallel=True, cache=True, nogil=True)
def _rows_parallel(xt, g, panels, index, chunks, step, sums):
    rows = xt.shape[0] - xt.shape[0] % OUTER_ROWS
    for chunk in numba.prange(chunks):
        _rows(xt, g, panels, index, min(rows, chunk * step), min(rows, (chunk + 1) * step), sums[chunk])


@numba.njit(cache=True, nogil=True)
def outer_product_segment_sums(xt, g, index, out):
    """``out[c] = sum((xt @ g)[index == c])``: xt ``(rows, batch)`` and g ``(batch, columns)`` float32 C-contiguous
    (batch >= 1), index ``(rows, columns)`` C-contiguous integers (others than 0..len(out) - 1 add nowhere), out
    float32 of at most :data:`MAX_ENTRIES` entries. Each product is summed over the batch in float32, the sums
    by index in float64. Rows are split into chunks (at least 16 rows, at most :data:`._numba_kernels._MAX_CHUNKS`
    chunks) that numba's threads take in turn. Also called from XLA (:mod:`._jax_dense`'s FFI target)."""
    whole_rows = xt.shape[0] - xt.shape[0] % OUTER_ROWS
    chunks = max(1, min(_MAX_CHUNKS, whole_rows // (4 * OUTER_ROWS)))
    rows = xt.shape[0]
    step = -(-(whole_rows // OUTER_ROWS) // chunks) * OUTER_ROWS
    sums = np.zeros((chunks, out.shape[0]), np.float64)
    panels = _panels(g)
    if chunks == 1:
        _rows(xt, g, panels, index, 0, whole_rows, sums[0])
    else:
        _rows_parallel(xt, g, panels, index, chunks, step, sums)
    for i in range(whole_rows, rows):  # rows that fill no block
        for o in range(g.shape[1]):
            _add_product(xt, g, index, i, o, sums[0])
    for j in range(out.shape[0]):
        out[j] = sums[:, j].sum()
