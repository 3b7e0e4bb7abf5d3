"""``x @ table[index]`` without forming the kernel where numba compiles without AVX-512 (AVX2 has 16 vector
registers of 8 lanes: too few to hold :mod:`._numba_lut`'s codebook, weights and accumulators together).

For each chunk of :data:`CHUNK` index rows and each block of :data:`._numba_dense.OUTER_COLUMNS` columns, the weights
are looked up into a small buffer in L1 (:func:`_decode_rows`, 8 lanes at a time: ``vpermps`` on each half of the
codebook with AVX2, else a tree of selects), then multiplied in 4 rows of x at a time by
:func:`._numba_dense.outer_block`: 32 x 4096 by 4096 x 4096 in 11-12 ms on two AMD EPYC cores (AVX2), against
25-31 ms for XLA's ``x @ kernel`` after a 7 ms look-up. Rows of x and columns that fill no block take scalar loops.
The products are summed over the inner axis in float32 in index order, as a BLAS would.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from weightzip.keras.clustering._numba_avx512 import AVX2, AVX512, c_vectors, vector_pointer
from weightzip.keras.clustering._numba_dense import OUTER_COLUMNS, OUTER_ROWS, broadcast_element, outer_block

CHUNK = 128  # index rows of one decoded buffer (128 x 16 floats with AVX2: 8 KB, in L1)
MAX_ENTRIES = 16
_F32X8 = ir.VectorType(ir.FloatType(), 8)
_I32X8 = ir.VectorType(ir.IntType(32), 8)


def byte_indexed_floats(index, *floats) -> bool:
    """Whether numba types these as the look-up kernels' operands: C-contiguous 1-D arrays, `index` of one-byte
    indices and `floats` float32 (here and in :mod:`._numba_lut`)."""
    return c_vectors(index, *floats) and index.dtype == types.uint8 and all(a.dtype == types.float32 for a in floats)


@intrinsic
def _decode_rows(typingctx, table, index, at, stride, rows, buffer):
    """``buffer[r * OUTER_COLUMNS + c] = table[index[at + r * stride + c] & 15]`` for r < rows, c < OUTER_COLUMNS, 8 at
    a time (a table look-up in numba does not vectorise): with AVX2 ``vpermps`` on each half of the table in a
    register, else a tree of 15 selects on the index bits; returns the largest index byte read. table: 16 float32
    entries; C-contiguous 1-D arrays."""
    if not byte_indexed_floats(index, table, buffer):
        return None

    def codegen(context, builder, signature, args):
        def pointer(position, offset, vector):
            return vector_pointer(context, builder, signature, args, position, offset, vector)

        i64 = ir.IntType(64)
        at_start, stride_at, row_count = args[2:5]
        table_data = context.make_array(signature.args[0])(context, builder, args[0]).data

        def bit_set(codes, bit):
            return builder.icmp_unsigned("!=", builder.and_(codes, ir.Constant(_I32X8, [1 << bit] * 8)),
                                         ir.Constant(_I32X8, [0] * 8))

        if AVX2:  # vpermps on each half of the table (the low 3 bits), bit 3 chooses
            permute = builder.module.declare_intrinsic("llvm.x86.avx2.permps",
                                                       fnty=ir.FunctionType(_F32X8, [_F32X8, _I32X8]))
            halves = [builder.load(pointer(0, ir.Constant(i64, 8 * h), _F32X8), align=4) for h in range(2)]

            def look_up(codes):
                low, high = (builder.call(permute, [half, codes]) for half in halves)
                return builder.select(bit_set(codes, 3), high, low)
        else:
            entries = [broadcast_element(builder, table_data, ir.Constant(i64, c), _F32X8) for c in range(MAX_ENTRIES)]

            def look_up(codes):
                level = entries
                for bit in range(4):
                    mask = bit_set(codes, bit)
                    level = [builder.select(mask, level[2 * n + 1], level[2 * n]) for n in range(len(level) // 2)]
                return level[0]

        largest = cgutils.alloca_once_value(builder, ir.Constant(_I32X8, [0] * 8))
        with cgutils.for_range(builder, row_count) as loop:
            row_at = builder.add(at_start, builder.mul(loop.index, stride_at))
            out_at = builder.mul(loop.index, ir.Constant(i64, OUTER_COLUMNS))
            for v in range(OUTER_COLUMNS // 8):
                offset = builder.add(row_at, ir.Constant(i64, 8 * v))
                codes = builder.zext(builder.load(pointer(1, offset, ir.VectorType(ir.IntType(8), 8)), align=1),
                                     _I32X8)
                most = builder.load(largest)
                builder.store(builder.select(builder.icmp_unsigned(">", codes, most), codes, most), largest)
                builder.store(look_up(codes), pointer(5, builder.add(out_at, ir.Constant(i64, 8 * v)), _F32X8),
                              align=4)
        reduce = builder.module.declare_intrinsic("llvm.vector.reduce.umax.v8i32",
                                                  fnty=ir.FunctionType(ir.IntType(32), [_I32X8]))
        return builder.zext(builder.call(reduce, [builder.load(largest)]), i64)

    return types.int64(table, index, at, stride, rows, buffer), codegen


@numba.njit(cache=True, nogil=True)
def _decoded_blocks(x, table, index, out, first_block, last_block):
    """Column blocks first_block:last_block (of OUTER_COLUMNS) of ``out = x @ table[index]`` (out zeroed): per
    chunk of index rows and block, the chunk's weights are looked up into a buffer in L1, then multiplied in
    by :func:`._numba_dense.outer_block` 4 rows of x at a time; the largest index read."""
    batch, inner = x.shape
    columns = index.shape[1]
    flat_x, flat_out, flat_index = x.reshape(-1), out.reshape(-1), index.reshape(-1)
    buffer = np.empty(CHUNK * OUTER_COLUMNS, np.float32)
    largest = 0
    whole_batch = batch - batch % OUTER_ROWS
    for first in range(0, inner, CHUNK):
        last = min(inner, first + CHUNK)
        for block in range(first_block, last_block):
            column = block * OUTER_COLUMNS
            found = _decode_rows(table, flat_index, first * columns + column, columns, last - first, buffer)
            largest = max(largest, found)
            for row in range(0, whole_batch, OUTER_ROWS):
                outer_block(flat_x, buffer, flat_out, row, 0, last - first, inner, first, OUTER_COLUMNS, columns,
                            row * columns + column, True)
            for b in range(whole_batch, batch):  # rows of x that fill no block
                for i in range(first, last):
                    at = (i - first) * OUTER_COLUMNS
                    for c in range(OUTER_COLUMNS):
                        out[b, column + c] += x[b, i] * buffer[at + c]
    return largest


@numba.njit(parallel=True, cache=True, nogil=True)
def decoded_product(x, table, index, out, parts):
    """``out = x @ table[index]`` (table: 16 float32 entries, index uint8: its low 4 bits are used), the column blocks
    split in `parts` parts for numba's threads; returns the largest index read."""
    batch, inner = x.shape
    columns = index.shape[1]
    blocks = columns // OUTER_COLUMNS
    out[:] = 0
    largest = np.zeros(parts, np.int64)
    step = -(-blocks // parts)
    for part in numba.prange(parts):
        largest[part] = _decoded_blocks(x, table, index, out, min(blocks, part * step), min(blocks, (part + 1) * step))
    return max(largest.max(), columns_product(x, table, index, out, blocks * OUTER_COLUMNS))


@numba.njit(cache=True, nogil=True)
def columns_product(x, table, index, out, first):
    """``out[:, first:] = x @ table[index[:, first:] & 15]`` by scalar loops (the columns that fill no block, here
    and in :mod:`._numba_lut`); returns the largest index read there (0 for none)."""
    batch, inner = x.shape
    high = 0
    for o in range(first, index.shape[1]):
        for i in range(inner):
            high = max(high, np.int64(index[i, o]))
        for b in range(batch):
            total = np.float32(0)
            for i in range(inner):
                total += x[b, i] * table[index[i, o] & 15]
            out[b, o] = total
    return high


LOOK_UP_ROWS = 16  # rows of OUTER_COLUMNS weights that one look_up_decoded step writes (256 weights with AVX2)


def look_up_decoded(table16, index, out, first, last, size):
    """out[first:end] = table16[index[first:end]], :data:`LOOK_UP_ROWS` x OUTER_COLUMNS at a time by
    :func:`_decode_rows`, where numba compiles for AVX2 without AVX-512 (which has its own form) on one-byte indices
    and float32; returns `end` as :func:`._numba_avx512.look_up_checked_vector` does (`first` where not served).
    `size` <= 16. 235k weights in 40 us on an AMD EPYC core, 118 us by the scalar loop."""
    raise NotImplementedError  # only called from numba: see the overload below


@overload(look_up_decoded, jit_options={"cache": True, "nogil": True})
def _look_up_decoded_overload(table16, index, out, first, last, size):
    if not (AVX2 and not AVX512 and byte_indexed_floats(index, table16, out)):
        return lambda table16, index, out, first, last, size: first

    def vector(table16, index, out, first, last, size):
        block = LOOK_UP_ROWS * OUTER_COLUMNS
        i = first
        while i + block <= last:
            if _decode_rows(table16, index, i, OUTER_COLUMNS, LOOK_UP_ROWS, out[i:]) >= size:
                return i
            i += block
        return i

    return vector
