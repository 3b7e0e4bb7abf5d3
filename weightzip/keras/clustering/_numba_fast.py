"""Faster forms of :mod:`._numba_kernels` for the jitted JAX step (same results; the PyTorch path may adopt them).

- :func:`search_and_look_up` = :func:`._numba_kernels.assign_and_look_up`. One codebook of at most 16 entries (k = 16
  is TFMOT's default) is searched with its midpoints and centroids in registers: per weight, 15 compare-and-select
  steps that LLVM vectorises, the centroid chosen by the same selects (no gather, no count buffer). With AVX-512, 16
  weights at a time by a binary search whose probes and centroids are ``vpermps`` lookups in registers
  (:mod:`._numba_avx512`): 16.8M weights, one thread, 25-28 -> 14-17 ms (the memory traffic). Without `out`, the
  indices alone (two AMD EPYC cores, AVX2: 25 -> 11-18 ms).
- :func:`look_up_checked` = :func:`._numba_kernels.look_up`: the table range is checked per block of 512 indices, then
  the block is gathered without a per-index branch (a block with an index outside: the NaN-marking loop). With
  AVX-512, a table of at most 16 entries and indices of up to 32 bits, 16 at a time by one ``vpermps``, the largest
  index checked every 256 (from 256 that hold one outside, the checked blocks take over): 16.8M one-byte indices,
  one thread 17 -> 10-13 ms, two 9-12 -> 6-7 ms (checked first) -> 5.5-6 ms (checked on the way).
- :func:`segment_sums` = :func:`._numba_kernels.segment_sums_into`: four interleaved accumulator rows per chunk (breaks
  the add latency chain on a repeated index), range checked per block. With AVX-512 and a table of at most 16
  entries, 256 values a call per index and lane in 16 registers (a compare and a masked add per index and 16
  values), folded into float64 every :data:`LANE_BLOCK` values, no range check (an index outside adds nowhere):
  16.8M values, one-byte indices, two threads 11.1 -> 5-5.7 ms (a float32 sum of the values: 3.7 ms).

Each runs serially on the calling thread below 2^20 weights (:data:`SERIAL_BELOW`): a numba parallel region costs
a thread wake-up and a barrier per call, and its threads compete with XLA's own for the cores; that dominates small
layers (all of LeNet-300-100's kernels, the largest 235k weights), more so on a loaded machine.
"""

from __future__ import annotations

import numba
import numpy as np

from weightzip.keras.clustering._numba_avx512 import (
    look_up_checked_vector,
    look_up_vector,
    search_vector,
    segment_sums_vector,
)
from weightzip.keras.clustering._numba_kernels import (
    _BLOCK,
    _chunking,
    add_lane_sums,
    assign_and_look_up,
    fold_lanes,
    selects_are_counts,
)
from weightzip.keras.clustering._numba_lut_decoded import look_up_decoded

# Codebook rows of at most this many entries take the register search (padded with +inf midpoints).
REGISTER_TABLE = 16
_ACCUMULATORS = 4
# Passes over fewer weights than this run on the calling thread (at 2^20 one pass is ~1 ms single-threaded).
SERIAL_BELOW = 1 << 20
# The vector segment sums fold their float32 lane sums into float64 every this many values (256 a lane).
LANE_BLOCK = 4096


@numba.njit(inline="always")
def _passes(n, accumulator_size=0):
    """(chunks, chunk length): one chunk below SERIAL_BELOW weights, else :func:`._numba_kernels._chunking`."""
    if n < SERIAL_BELOW:
        return 1, n
    return _chunking(n, accumulator_size)


@numba.njit(cache=True, nogil=True)
def _register_search_chain(weights, midpoints, table, out, index, first, last):
    """weights[first:last] searched among 15 midpoints / 16 centroids (padded: +inf midpoints); `out` None: indices."""
    m0, m1, m2, m3, m4 = midpoints[0], midpoints[1], midpoints[2], midpoints[3], midpoints[4]
    m5, m6, m7, m8, m9 = midpoints[5], midpoints[6], midpoints[7], midpoints[8], midpoints[9]
    m10, m11, m12, m13, m14 = midpoints[10], midpoints[11], midpoints[12], midpoints[13], midpoints[14]
    t0, t1, t2, t3 = table[0], table[1], table[2], table[3]
    t4, t5, t6, t7 = table[4], table[5], table[6], table[7]
    t8, t9, t10, t11 = table[8], table[9], table[10], table[11]
    t12, t13, t14, t15 = table[12], table[13], table[14], table[15]
    part, part_index = weights[first:last], index[first:last]
    part_out = out[first:last] if out is not None else None  # (numba prunes the branches on out's type)
    for i in range(last - first):  # from 0: no negative-index wraparound to check, so LLVM vectorises
        value = part[i]
        position = np.int32(0)
        centroid = t0
        above = value > m0
        position += np.int32(above)
        centroid = t1 if above else centroid
        above = value > m1
        position += np.int32(above)
        centroid = t2 if above else centroid
        above = value > m2
        position += np.int32(above)
        centroid = t3 if above else centroid
        above = value > m3
        position += np.int32(above)
        centroid = t4 if above else centroid
        above = value > m4
        position += np.int32(above)
        centroid = t5 if above else centroid
        above = value > m5
        position += np.int32(above)
        centroid = t6 if above else centroid
        above = value > m6
        position += np.int32(above)
        centroid = t7 if above else centroid
        above = value > m7
        position += np.int32(above)
        centroid = t8 if above else centroid
        above = value > m8
        position += np.int32(above)
        centroid = t9 if above else centroid
        above = value > m9
        position += np.int32(above)
        centroid = t10 if above else centroid
        above = value > m10
        position += np.int32(above)
        centroid = t11 if above else centroid
        above = value > m11
        position += np.int32(above)
        centroid = t12 if above else centroid
        above = value > m12
        position += np.int32(above)
        centroid = t13 if above else centroid
        above = value > m13
        position += np.int32(above)
        centroid = t14 if above else centroid
        above = value > m14
        position += np.int32(above)
        centroid = t15 if above else centroid
        part_index[i] = position
        if out is not None:
            part_out[i] = centroid


@numba.njit(cache=True, nogil=True)
def _register_search(weights, midpoints, table, out, index, first, last):
    """weights[first:last] searched among 15 midpoints / 16 centroids (16 padded midpoints: +inf): 16 at a time
    with AVX-512 (:func:`._numba_avx512.search_vector`), the rest by :func:`_register_search_chain`."""
    done = search_vector(weights, midpoints, table, out, index, first, last)
    if done < last:
        _register_search_chain(weights, midpoints, table, out, index, done, last)


@numba.njit(parallel=True, cache=True, nogil=True)
def _register_search_parallel(weights, midpoints, table, out, index, chunks, step):
    n = weights.shape[0]
    for chunk in numba.prange(chunks):
        _register_search(weights, midpoints, table, out, index, chunk * step, min(n, (chunk + 1) * step))


@numba.njit(cache=True, nogil=True)
def search_and_look_up(weights, midpoints, table, inner, out, index):
    """:func:`._numba_kernels.assign_and_look_up` (same arguments and results), faster for one row of <= 16."""
    groups, m = midpoints.shape
    if groups != 1 or m + 1 > REGISTER_TABLE or not selects_are_counts(midpoints[0]):
        assign_and_look_up(weights, midpoints, table, inner, np.empty_like(weights) if out is None else out, index)
        return
    padded_midpoints = np.full(REGISTER_TABLE, np.inf, np.float32)  # (the chain reads the first 15)
    padded_table = np.full(REGISTER_TABLE, table[0], np.float32)  # entries past k are never selected
    for j in range(m):
        padded_midpoints[j] = midpoints[0, j]
    for j in range(m + 1):
        padded_table[j] = table[j]
    n = weights.shape[0]
    chunks, step = _passes(n)
    if chunks == 1:
        _register_search(weights, padded_midpoints, padded_table, out, index, 0, n)
    else:
        _register_search_parallel(weights, padded_midpoints, padded_table, out, index, chunks, step)


@numba.njit(cache=True, nogil=True)
def _inside(block, size) -> bool:
    """Whether every index of the block is in [0, size): its min and max (a vectorised reduction)."""
    low = high = block[0]
    for i in range(block.shape[0]):
        low = min(low, block[i])
        high = max(high, block[i])
    return low >= 0 and high < size


@numba.njit(cache=True, nogil=True)
def _look_up_range(table, table16, index, out, first, last):
    """table16: the table padded to 16 entries where it has at most 16 (the AVX-512 look-up), else the table."""
    size = table.shape[0]
    if size <= REGISTER_TABLE:  # 256 at a time, checked per 256; from 256 holding an index outside on: the blocks
        first = look_up_checked_vector(table16, index, out, first, last, size)
        first = look_up_decoded(table16, index, out, first, last, size)  # (AVX2)
    outside = 0
    for start in range(first, last, _BLOCK):
        stop = min(last, start + _BLOCK)
        block, block_out = index[start:stop], out[start:stop]
        inside = _inside(block, size)
        if inside and size <= 16 and look_up_vector(table16, index, out, start, stop):
            pass
        elif inside:
            for i in range(stop - start):
                block_out[i] = table[np.uintp(block[i])]
        else:
            for i in range(stop - start):
                position = block[i]
                if 0 <= position < size:
                    block_out[i] = table[position]
                else:
                    block_out[i] = np.nan
                    outside += 1
    return outside


@numba.njit(parallel=True, cache=True, nogil=True)
def _look_up_parallel(table, table16, index, out, chunks, step):
    n = index.shape[0]
    outside = np.zeros(chunks, np.int64)
    for chunk in numba.prange(chunks):
        outside[chunk] = _look_up_range(table, table16, index, out, chunk * step, min(n, (chunk + 1) * step))
    return outside.sum()


@numba.njit(cache=True, nogil=True)
def look_up_checked(table, index, out):
    """:func:`._numba_kernels.look_up`: out[i] = table[index[i]], NaN outside the table; returns how many were."""
    n = index.shape[0]
    table16 = np.zeros(max(16, table.shape[0]), table.dtype)
    table16[: table.shape[0]] = table
    chunks, step = _passes(n)
    if chunks == 1:
        return _look_up_range(table, table16, index, out, 0, n)
    return _look_up_parallel(table, table16, index, out, chunks, step)


@numba.njit(cache=True, nogil=True)
def _segment_sums_range(values, index, average, sums, counts, first, last):
    """Adds values[first:last] into sums[r, index] (r = i % 4), and 1 into counts[r, index] when `average`."""
    size = sums.shape[1]
    vector_sums = size <= REGISTER_TABLE
    lanes = np.zeros(16 * REGISTER_TABLE, values.dtype)  # the vector form's sums by index and lane
    wide_lanes = np.zeros(16 * REGISTER_TABLE, np.float64)
    if vector_sums and not average:
        # Indices outside [0, size) add nowhere in the vector form, so it needs no check; what it leaves (under
        # 256 values at the end) takes the loops below.
        while first < last:
            end = segment_sums_vector(values, index, lanes, first, min(last, first + LANE_BLOCK))
            if end == first:  # not served, or under 256 values left
                break
            fold_lanes(lanes, wide_lanes)
            first = end
    for start in range(first, last, _BLOCK):
        stop = min(last, start + _BLOCK)
        block, block_values = index[start:stop], values[start:stop]
        length = stop - start
        if not average and _inside(block, size):
            whole = length - length % _ACCUMULATORS
            for i in range(0, whole, _ACCUMULATORS):
                sums[0, np.uintp(block[i])] += block_values[i]
                sums[1, np.uintp(block[i + 1])] += block_values[i + 1]
                sums[2, np.uintp(block[i + 2])] += block_values[i + 2]
                sums[3, np.uintp(block[i + 3])] += block_values[i + 3]
            for i in range(whole, length):
                sums[0, np.uintp(block[i])] += block_values[i]
        else:
            for i in range(length):
                position = block[i]
                if 0 <= position < size:
                    sums[i % _ACCUMULATORS, position] += block_values[i]
                    if average:
                        counts[i % _ACCUMULATORS, position] += 1
    if vector_sums:
        add_lane_sums(wide_lanes, sums[0])


@numba.njit(parallel=True, cache=True, nogil=True)
def _segment_sums_parallel(values, index, average, sums, counts, chunks, step):
    n = values.shape[0]
    for chunk in numba.prange(chunks):
        _segment_sums_range(values, index, average, sums[chunk], counts[chunk], chunk * step,
                            min(n, (chunk + 1) * step))


@numba.njit(cache=True, nogil=True)
def segment_sums(values, index, average, out):
    """:func:`._numba_kernels.segment_sums_into`: ``out[j] = sum(values[index == j])`` (mean when `average`),
    other indices ignored; float64 accumulators."""
    n = values.shape[0]
    size = out.shape[0]
    chunks, step = _passes(n, _ACCUMULATORS * size)
    sums = np.zeros((chunks, _ACCUMULATORS, size), np.float64)
    counts = np.zeros((chunks, _ACCUMULATORS, size if average else 1), np.int64)
    if chunks == 1:
        _segment_sums_range(values, index, average, sums[0], counts[0], 0, n)
    else:
        _segment_sums_parallel(values, index, average, sums, counts, chunks, step)
    for j in range(size):
        total = 0.0
        members = 0
        for chunk in range(chunks):
            for row in range(_ACCUMULATORS):
                total += sums[chunk, row, j]
                if average:
                    members += counts[chunk, row, j]
        out[j] = total / max(members, 1) if average else total
