"""``x @ table[index]`` without forming the kernel: a look-up-table matrix product for numba (AVX-512, AVX2).

A clustered Dense kernel under fixed assignment is ``table[index]``: one byte per weight, 16 distinct values. A
framework computes ``x @ kernel`` by first writing the 4-byte kernel (a gather of the whole matrix) and then
multiplying, and at a small batch the product itself is slow as well: the BLAS packs the whole weight matrix
for every call (TensorFlow, 32 x 4096 by 4096 x 4096 on two cores: 8.9 ms for the gather, 20 ms for the product).
Here the kernel is never written: each row of 64 index bytes is loaded once per block of output rows, turned
into four vectors of 16 weights by ``vpermps`` on the table in a register (the lanes of a 32-bit load hold four
consecutive indices: byte j of each lane is read by shifting it down, so vector j holds columns ``4 m + j``), and
multiplied into 4 x R accumulator registers (R <= 6 rows of x, broadcast). Rows of the index are walked in chunks of
:data:`CHUNK` (a chunk's rows stay in L2 and in the TLB while every column block runs over them), the
accumulators kept between chunks in a buffer shaped as the output. The same product: 9-10 ms on two cores.

Without AVX-512: :func:`._numba_lut_decoded.decoded_product`.

Served where numba's vector products run (:data:`._numba_avx512.VECTOR_PRODUCTS`), tables of at most 16 float32
entries, indices of one byte (uint8), C-contiguous arrays. Columns that fill no block take a scalar loop. The
products are summed over the inner axis in float32 in index order, as a BLAS would (not bit for bit the same).
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
    I32X16,
    VECTOR_PRODUCTS,
    vector_pointer,
    vpermps,
)
from weightzip.keras.clustering._numba_dense import OUTER_COLUMNS, broadcast_element
from weightzip.keras.clustering._numba_lut_decoded import byte_indexed_floats, columns_product, decoded_product

COLUMNS = 64  # output columns of one block: one 64-byte row of indices, four vectors
BLOCK_ROWS = 6  # rows of x per block: 4 x 6 accumulators + 4 weight vectors + 1 broadcast of 32 zmm registers
CHUNK = 128  # index rows walked by every column block before the next chunk (128 x 4096 bytes: in L2)
MAX_ENTRIES = 16
_BYTES = ir.VectorType(ir.IntType(8), 64)


def serves(entries: int) -> bool:
    """Whether :func:`lut_product` runs here for a table of `entries` entries."""
    return VECTOR_PRODUCTS and 1 <= entries <= MAX_ENTRIES


def _block_intrinsic(rows: int):
    """An intrinsic adding the products of `rows` rows of x (from `row`) and index rows first:last of one block of
    64 columns into ``sums[at:at + rows * 64]`` (each row's 64 sums in the interleaved order above); returns the
    largest index byte it read."""

    @intrinsic
    def block(typingctx, x, table, index, sums, row, column, inner, columns, first, last, at):
        if not byte_indexed_floats(index, x, table, sums):
            return None

        def codegen(context, builder, signature, args):
            def pointer(position, offset, vector):
                return vector_pointer(context, builder, signature, args, position, offset, vector)

            i64 = ir.IntType(64)
            row_at, column_at, inner_size, column_count, first_at, last_at, sums_at = args[4:]
            permute = vpermps(builder)
            fma = builder.module.declare_intrinsic("llvm.fma.v16f32", fnty=ir.FunctionType(F32X16, [F32X16] * 3))
            umax = builder.module.declare_intrinsic("llvm.umax.v64i8", fnty=ir.FunctionType(_BYTES, [_BYTES] * 2))
            table16 = builder.load(pointer(1, ir.Constant(i64, 0), F32X16), align=4)
            accumulators = [cgutils.alloca_once_value(
                builder, builder.load(pointer(3, builder.add(sums_at, ir.Constant(i64, 16 * q)), F32X16), align=4))
                for q in range(4 * rows)]
            largest = cgutils.alloca_once_value(builder, ir.Constant(_BYTES, [0] * 64))
            x_data = context.make_array(signature.args[0])(context, builder, args[0]).data
            with cgutils.for_range_slice(builder, first_at, last_at, ir.Constant(i64, 1)) as (i, _):
                packed = builder.load(pointer(2, builder.add(builder.mul(i, column_count), column_at), I32X16),
                                      align=1)
                builder.store(builder.call(umax, [builder.load(largest), builder.bitcast(packed, _BYTES)]), largest)
                weights = [builder.call(permute, [table16, packed if j == 0 else
                                                  builder.lshr(packed, ir.Constant(I32X16, [8 * j] * 16))])
                           for j in range(4)]
                for r in range(rows):
                    position = builder.add(builder.mul(builder.add(row_at, ir.Constant(i64, r)), inner_size), i)
                    broadcast = broadcast_element(builder, x_data, position)
                    for j in range(4):
                        slot = accumulators[4 * r + j]
                        builder.store(builder.call(fma, [broadcast, weights[j], builder.load(slot)]), slot)
            for q in range(4 * rows):
                builder.store(builder.load(accumulators[q]),
                              pointer(3, builder.add(sums_at, ir.Constant(i64, 16 * q)), F32X16), align=4)
            reduce = builder.module.declare_intrinsic("llvm.vector.reduce.umax.v64i8",
                                                      fnty=ir.FunctionType(ir.IntType(8), [_BYTES]))
            return builder.zext(builder.call(reduce, [builder.load(largest)]), i64)

        return types.int64(x, table, index, sums, row, column, inner, columns, first, last, at), codegen

    return block


_block6, _block5, _block4, _block3, _block2, _block1 = (_block_intrinsic(rows) for rows in (6, 5, 4, 3, 2, 1))


@numba.njit(cache=True, nogil=True)
def _blocks(x, table, index, sums, batch, inner, columns, first_block, last_block):
    """Column blocks first_block:last_block of the product into `sums`; the largest index read."""
    largest = 0
    for first in range(0, inner, CHUNK):
        last = min(inner, first + CHUNK)
        for block in range(first_block, last_block):
            column, base = block * COLUMNS, block * batch * COLUMNS
            row = 0
            while row + BLOCK_ROWS <= batch:
                at = base + row * COLUMNS
                largest = max(largest, _block6(x, table, index, sums, row, column, inner, columns, first, last, at))
                row += BLOCK_ROWS
            left, at = batch - row, base + row * COLUMNS
            if left == 5:
                largest = max(largest, _block5(x, table, index, sums, row, column, inner, columns, first, last, at))
            elif left == 4:
                largest = max(largest, _block4(x, table, index, sums, row, column, inner, columns, first, last, at))
            elif left == 3:
                largest = max(largest, _block3(x, table, index, sums, row, column, inner, columns, first, last, at))
            elif left == 2:
                largest = max(largest, _block2(x, table, index, sums, row, column, inner, columns, first, last, at))
            elif left == 1:
                largest = max(largest, _block1(x, table, index, sums, row, column, inner, columns, first, last, at))
    return largest


@numba.njit(parallel=True, cache=True, nogil=True)
def _product(x, table, index, out, parts):
    batch, inner = x.shape
    columns = index.shape[1]
    blocks = columns // COLUMNS
    sums = np.zeros(blocks * batch * COLUMNS, np.float32)
    largest = np.zeros(parts, np.int64)
    flat_x, flat_index = x.reshape(-1), index.reshape(-1)
    step = -(-blocks // parts)
    for part in numba.prange(parts):
        largest[part] = _blocks(flat_x, table, flat_index, sums, batch, inner, columns,
                                min(blocks, part * step), min(blocks, (part + 1) * step))
    for block in range(blocks):  # the interleaved sums to their columns
        for b in range(batch):
            at = (block * batch + b) * COLUMNS
            for j in range(4):
                for m in range(16):
                    out[b, block * COLUMNS + 4 * m + j] = sums[at + 16 * j + m]
    return max(largest.max(), columns_product(x, table, index, out, blocks * COLUMNS))


def lut_product(x: np.ndarray, table: np.ndarray, index: np.ndarray, out: np.ndarray) -> int:
    """``out = x @ table[index]`` for x ``(batch, inner)`` float32, table float32 of at most 16 entries, index
    ``(inner, columns)`` uint8, out ``(batch, columns)`` float32, all C-contiguous; returns the largest index
    read (the caller checks it against the table: the product used its low 4 bits). With AVX-512 the look-up in
    registers above, else :func:`._numba_lut_decoded.decoded_product`. Only where :func:`serves`."""
    return int(lut_product_parts(x, table, index, out, numba.get_num_threads()))


@numba.njit(cache=True, nogil=True)
def lut_product_parts(x, table, index, out, parts):
    """:func:`lut_product` with the columns split in at most `parts` parts for numba's threads (numba's thread count
    read inside would make a caller uncacheable: :mod:`._jax_dense`'s FFI target passes it)."""
    padded = np.zeros(MAX_ENTRIES, np.float32)
    padded[:table.shape[0]] = table
    if AVX512:
        return _product(x, padded, index, out, max(1, min(parts, index.shape[1] // COLUMNS)))
    return decoded_product(x, padded, index, out, max(1, min(parts, index.shape[1] // OUTER_COLUMNS)))
