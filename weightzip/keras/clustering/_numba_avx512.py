"""AVX-512 forms of the register search, the look-up and the segment sums of :mod:`._numba_fast` as LLVM
intrinsics for numba (and the helpers the product blocks of :mod:`._numba_dense` and :mod:`._numba_lut` use).

A codebook row of at most 16 float32 entries fits one zmm register, and ``vpermps`` looks 16 lanes up in it by the
low 4 bits of each lane's index. numba cannot emit that instruction from Python code (LLVM does not turn table
lookups into variable permutes), so :func:`_search16`, :func:`_look_up16` and :func:`_look_up256` build it in LLVM
IR through ``numba.extending.intrinsic``; :func:`_segment_sums16` keeps 16 accumulator vectors in registers across
256 values (numba's arrays would live in memory). They are reached through numba overloads (:func:`search_vector`,
:func:`look_up_vector`, :func:`look_up_checked_vector`, :func:`segment_sums_vector`) that serve float32
C-contiguous arrays where numba compiles for an AVX-512 CPU (:data:`AVX512`) and hand every other case back to
the portable loops, so nothing here is ever compiled for a CPU without AVX-512. The search and the look-up give
the portable loops' results exactly; the segment sums add at most 256 values per lane in float32 before the
portable loop's float64 sums take them (a relative difference of the order of 1e-7).
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


def _compiles_for(feature: str) -> bool:
    """Whether numba compiles for this CPU (no NUMBA_CPU_NAME / NUMBA_CPU_FEATURES override) and it has `feature`."""
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        return False
    try:
        return bool(llvm.get_host_cpu_features().get(feature, False))
    except RuntimeError:  # features unknown on this host
        return False


AVX512 = _compiles_for("avx512f")
"""Whether numba compiles for an AVX-512 CPU here: the register search and the look-up then take their ``vpermps``
forms (:func:`_search16`, :func:`_look_up16`) on the types those serve."""
AVX2 = _compiles_for("avx2")  # (:mod:`._numba_lut_decoded` then looks up by ``vpermps`` on 8 lanes)
VECTOR_PRODUCTS = AVX512 or (AVX2 and _compiles_for("fma"))
"""Whether the register-blocked products of :mod:`._numba_dense` and :mod:`._numba_lut` run here: with AVX-512, or
AVX2 with FMA (without, their fused multiply-adds would be library calls)."""


def c_vectors(*arrays) -> bool:
    """Whether numba types these are all C-contiguous 1-D arrays (what the vector intrinsics load from)."""
    return all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in arrays)


def vector_pointer(context, builder, signature, args, position, offset, vector):
    """A pointer to a `vector` at element `offset` of the array argument `position` of an intrinsic."""
    data = context.make_array(signature.args[position])(context, builder, args[position]).data
    return builder.bitcast(builder.gep(data, [offset]), vector.as_pointer())


F32X16 = ir.VectorType(ir.FloatType(), 16)
I32X16 = ir.VectorType(ir.IntType(32), 16)


def vpermps(builder):
    """``vpermps`` on 16 floats: result lane i = table[index lane i, low 4 bits]."""
    return builder.module.declare_intrinsic("llvm.x86.avx512.permvar.sf.512",
                                            fnty=ir.FunctionType(F32X16, [F32X16, I32X16]))


def _load_indices16(builder, pointer, position, offset, index_type):
    """The 16 indices of any integer type at element `offset` of array argument `position`, as 16 int32."""
    code = builder.load(pointer(position, offset, ir.VectorType(ir.IntType(index_type.bitwidth), 16)), align=1)
    if index_type.bitwidth < 32:
        return builder.sext(code, I32X16) if index_type.signed else builder.zext(code, I32X16)
    if index_type.bitwidth > 32:
        return builder.trunc(code, I32X16)
    return code


@intrinsic
def _search16(typingctx, weights, midpoints, table, out, index, start):
    """weights[start:start + 16] searched in registers: a 4-step binary search over the 16 (padded) midpoints,
    each step one ``vpermps`` fetching every lane's probe, then one more for the centroids; out and index
    (any integer type) written at the same positions. The count of midpoints below each weight, as the select
    chain: the comparison is ``>`` (a tie stays below), and ascending midpoints are true for a prefix, which
    the search finds exactly (a NaN weight compares false everywhere: position 0). C-contiguous 1-D arrays."""
    if not (c_vectors(weights, midpoints, table, out, index) and isinstance(index.dtype, types.Integer)
            and weights.dtype == midpoints.dtype == table.dtype == out.dtype == types.float32):
        return None

    def codegen(context, builder, signature, args):
        def pointer(position, offset, vector):
            return vector_pointer(context, builder, signature, args, position, offset, vector)

        permute = vpermps(builder)
        start_at, zero = args[5], ir.Constant(ir.IntType(64), 0)
        value = builder.load(pointer(0, start_at, F32X16), align=4)
        midpoints16 = builder.load(pointer(1, zero, F32X16), align=4)
        table16 = builder.load(pointer(2, zero, F32X16), align=4)
        position = ir.Constant(I32X16, [0] * 16)
        for step in (8, 4, 2, 1):
            probe = builder.call(permute, [midpoints16, builder.add(position, ir.Constant(I32X16, [step - 1] * 16))])
            above = builder.fcmp_ordered(">", value, probe)
            position = builder.add(position, builder.select(above, ir.Constant(I32X16, [step] * 16),
                                                            ir.Constant(I32X16, [0] * 16)))
        builder.store(builder.call(permute, [table16, position]), pointer(3, start_at, F32X16), align=4)
        bits = signature.args[4].dtype.bitwidth
        index_vector = ir.VectorType(ir.IntType(bits), 16)
        if bits < 32:
            position = builder.trunc(position, index_vector)
        elif bits > 32:
            position = builder.zext(position, index_vector)
        builder.store(position, pointer(4, start_at, index_vector), align=1)
        return context.get_dummy_value()

    return types.void(weights, midpoints, table, out, index, start), codegen


@intrinsic
def _look_up16(typingctx, table, index, out, start):
    """out[start:start + 16] = table[index[start:start + 16]] by one ``vpermps`` (table: >= 16 float32 entries,
    indices known to be inside its first 16; C-contiguous 1-D arrays)."""
    if not (c_vectors(table, index, out) and table.dtype == out.dtype == types.float32
            and isinstance(index.dtype, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        def pointer(position, offset, vector):
            return vector_pointer(context, builder, signature, args, position, offset, vector)

        table16 = builder.load(pointer(0, ir.Constant(ir.IntType(64), 0), F32X16), align=4)
        _emit_look_up16(builder, pointer, table16, args[3], signature.args[1].dtype)
        return context.get_dummy_value()

    return types.void(table, index, out, start), codegen


def _emit_look_up16(builder, pointer, table16, offset, index_type):
    """out[offset:offset + 16] = table16[index[offset:offset + 16]] (index and out: array arguments 1 and 2) by one
    ``vpermps``; returns the 16 indices as int32."""
    code = _load_indices16(builder, pointer, 1, offset, index_type)
    builder.store(builder.call(vpermps(builder), [table16, code]), pointer(2, offset, F32X16), align=4)
    return code


LOOK_UP_VECTORS = 16
"""Vectors of 16 indices that one :func:`_look_up256` call looks up (256 values)."""


@intrinsic
def _look_up256(typingctx, table, index, out, start):
    """:func:`_look_up16` on index[start:start + 256] (:func:`_emit_look_up16` 16 times); returns the largest
    index read, as an unsigned 32-bit value (a negative index reads as a large one), so that the caller checks the
    range once per call instead of in a pass before it. Integer indices of at most 32 bits only (wider ones would
    be truncated)."""
    if not (c_vectors(table, index, out) and table.dtype == out.dtype == types.float32
            and isinstance(index.dtype, types.Integer) and index.dtype.bitwidth <= 32):
        return None

    def codegen(context, builder, signature, args):
        def pointer(position, offset, vector):
            return vector_pointer(context, builder, signature, args, position, offset, vector)

        start_at, i64 = args[3], ir.IntType(64)
        table16 = builder.load(pointer(0, ir.Constant(i64, 0), F32X16), align=4)
        highest = ir.Constant(I32X16, [0] * 16)
        for v in range(LOOK_UP_VECTORS):
            code = _emit_look_up16(builder, pointer, table16, builder.add(start_at, ir.Constant(i64, 16 * v)),
                                   signature.args[1].dtype)
            highest = builder.select(builder.icmp_unsigned(">", code, highest), code, highest)
        reduce_max = builder.module.declare_intrinsic("llvm.vector.reduce.umax.v16i32",
                                                      fnty=ir.FunctionType(ir.IntType(32), [I32X16]))
        return builder.zext(builder.call(reduce_max, [highest]), i64)

    return types.int64(table, index, out, start), codegen


def look_up_checked_vector(table16, index, out, first, last, size):
    """out[first:end] = table16[index[first:end]] 256 at a time where the AVX-512 form serves these types; returns
    `end`: the end of the last whole call, or the start of the first call that read an index outside [0, size)
    (its values are to be overwritten: the caller's checked loop goes on from there), or `first` where not served
    (indices of more than 32 bits, other types, no AVX-512). `size` <= 16."""
    raise NotImplementedError  # only called from numba: see the overload below


@overload(look_up_checked_vector, jit_options={"cache": True, "nogil": True})
def _look_up_checked_vector_overload(table16, index, out, first, last, size):
    if not (AVX512 and c_vectors(table16, index, out) and table16.dtype == out.dtype == types.float32
            and isinstance(index.dtype, types.Integer) and index.dtype.bitwidth <= 32):
        return lambda table16, index, out, first, last, size: first

    def vector(table16, index, out, first, last, size):
        i = first
        while i + 16 * LOOK_UP_VECTORS <= last:
            if _look_up256(table16, index, out, i) >= size:
                return i
            i += 16 * LOOK_UP_VECTORS
        return i

    return vector


SEGMENT_VECTORS = 16
"""Vectors of 16 values that one :func:`_segment_sums16` call adds up (256 values)."""


@intrinsic
def _segment_sums16(typingctx, values, index, partial, start):
    """partial[16 c + lane] += each value of values[start:start + 256] whose index is c, by lane (value i in lane
    i % 16), for c in 0..15: per vector of 16 values and per c, one compare and one masked add, with the 16
    accumulator vectors in registers. Indices must be in [0, 16) (others add nowhere); C-contiguous 1-D arrays,
    float32 values and partial (>= 256 entries)."""
    if not (c_vectors(values, index, partial) and values.dtype == partial.dtype == types.float32
            and isinstance(index.dtype, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        def pointer(position, offset, vector):
            return vector_pointer(context, builder, signature, args, position, offset, vector)

        start_at = args[3]
        i64 = ir.IntType(64)
        sums = [builder.load(pointer(2, ir.Constant(i64, 16 * c), F32X16), align=4) for c in range(16)]
        for v in range(SEGMENT_VECTORS):
            at = builder.add(start_at, ir.Constant(i64, 16 * v))
            value = builder.load(pointer(0, at, F32X16), align=4)
            code = _load_indices16(builder, pointer, 1, at, signature.args[1].dtype)
            for c in range(16):
                member = builder.icmp_unsigned("==", code, ir.Constant(I32X16, [c] * 16))
                sums[c] = builder.select(member, builder.fadd(sums[c], value), sums[c])
        for c in range(16):
            builder.store(sums[c], pointer(2, ir.Constant(i64, 16 * c), F32X16), align=4)
        return context.get_dummy_value()

    return types.void(values, index, partial, start), codegen


def segment_sums_vector(values, index, partial, first, last):
    """Adds values[first:end] into `partial` by index and lane as :func:`_segment_sums16`, 256 at a time, where
    the AVX-512 form serves these types; returns `end`, the first value left to the scalar loop (`first` where
    not served). Indices must be in [0, 16)."""
    raise NotImplementedError  # only called from numba: see the overload below


@overload(segment_sums_vector, jit_options={"cache": True, "nogil": True})
def _segment_sums_vector_overload(values, index, partial, first, last):
    if not (AVX512 and c_vectors(values, index, partial) and values.dtype == partial.dtype == types.float32
            and isinstance(index.dtype, types.Integer)):
        return lambda values, index, partial, first, last: first

    def vector(values, index, partial, first, last):
        i = first
        while i + 16 * SEGMENT_VECTORS <= last:
            _segment_sums16(values, index, partial, i)
            i += 16 * SEGMENT_VECTORS
        return i

    return vector


def look_up_vector(table16, index, out, first, last):
    """out[first:last] = table16[index[first:last]] 16 at a time where the AVX-512 look-up serves these types
    (returns True), else nothing (returns False). Indices must be inside the table's first 16 entries."""
    raise NotImplementedError  # only called from numba: see the overload below


@overload(look_up_vector, jit_options={"cache": True, "nogil": True})
def _look_up_vector_overload(table16, index, out, first, last):
    if not (AVX512 and c_vectors(table16, index, out) and table16.dtype == out.dtype == types.float32
            and isinstance(index.dtype, types.Integer)):
        return lambda table16, index, out, first, last: False

    def vector(table16, index, out, first, last):
        i = first
        while i + 16 <= last:
            _look_up16(table16, index, out, i)
            i += 16
        for j in range(i, last):
            out[j] = table16[np.uintp(index[j])]
        return True

    return vector


def search_vector(weights, midpoints, table, out, index, first, last):
    """weights[first:end] searched 16 at a time where the AVX-512 search serves these types (16 padded
    midpoints); returns `end`, the first weight left to the chain (`first` where not served)."""
    raise NotImplementedError  # only called from numba: see the overload below


@overload(search_vector, jit_options={"cache": True, "nogil": True})
def _search_vector_overload(weights, midpoints, table, out, index, first, last):
    if not (AVX512 and c_vectors(weights, midpoints, table, out, index) and isinstance(index.dtype, types.Integer)
            and weights.dtype == midpoints.dtype == table.dtype == out.dtype == types.float32):
        return lambda weights, midpoints, table, out, index, first, last: first

    def vector(weights, midpoints, table, out, index, first, last):
        i = first
        while i + 16 <= last:
            _search16(weights, midpoints, table, out, index, i)
            i += 16
        return i

    return vector
