"""The clustered kernel's three CPU loops, as parallel numba kernels shared by the PyTorch and JAX paths.

- :func:`assign_and_look_up`: each weight placed among its codebook row's midpoints (the count of
  midpoints strictly below it: an exact tie goes to the lower centroid, as
  :func:`weightzip.core.assign_to_centroids`), its centroid written out and its table position kept.
- :func:`look_up`: ``out = table[index]`` for a stored assignment.
- :func:`segment_sums_into`: the centroid gradient, ``out[j] = sum(values[index == j])`` (or the mean),
  one private accumulator per chunk of the kernel, no n x k tensor.
- :func:`fold_lanes`, :func:`add_lane_sums`: the float64 totals of the AVX-512 segment sums' per-lane partial
  sums (:mod:`._numba_fast`'s segment sums and :mod:`._numba_dense`'s product sums both use them).

Each is one pass over the kernel split into contiguous chunks across numba's threads (eager
``searchsorted``/``take``/scatter-add run one pass per op, and XLA's CPU scatter is serial).
"""

from __future__ import annotations

import numba
import numpy as np

# Above this many midpoints per row, a binary search beats counting the midpoints below each weight one at a
# time (one codebook row per channel).
MAX_COUNTED_MIDPOINTS = 31
# With one codebook row, up to this many midpoints (k = 256) are counted a block of weights at a time, one
# vectorised sweep per midpoint: 16.8M weights on 2 AVX-512 cores, k = 64 / 256: 118 / 340 ms against 724 /
# 935 ms for the binary search, whose scalar steps mispredict on random weights.
MAX_SWEPT_MIDPOINTS = 255
# Weights per chunk at least: below this, splitting over threads costs more than it gains.
_MIN_CHUNK = 65536
# Chunks per pass at most (numba's threads take them in turn). A fixed number, not one derived from
# numba.get_num_threads(): that call would make the kernels uncacheable.
_MAX_CHUNKS = 32
# Weights counted together by the per-tensor search (its counts stay in L1).
_BLOCK = 512


@numba.njit(inline="always")
def _chunking(n, accumulator_size=0):
    """(chunks, chunk length) for a pass over n weights; with per-chunk accumulators of
    `accumulator_size` entries, no more chunks than keep their total under n / 4."""
    chunks = min(_MAX_CHUNKS, n // _MIN_CHUNK)
    if accumulator_size > 0:
        chunks = min(chunks, n // (4 * accumulator_size))
    chunks = max(1, chunks)
    return chunks, (n + chunks - 1) // chunks


@numba.njit(parallel=True, cache=True, nogil=True)
def assign_and_look_up(weights, midpoints, table, inner, out, index):
    """For each weight i: p = count of its row's midpoints < weights[i]; index[i] = row * k + p; out[i] = table[that].

    weights: flat kernel; midpoints: ``(groups, k - 1)``, each row ascending; table: ``(groups * k,)``.
    The row of weight i is ``(i // inner) % groups`` (the channel of a C-ordered kernel whose channel
    axis has `groups` entries and `inner` elements after it).
    """
    groups, m = midpoints.shape
    k = m + 1
    n = weights.shape[0]
    chunks, step = _chunking(n)
    for chunk in numba.prange(chunks):
        first, last = chunk * step, min(n, (chunk + 1) * step)
        if groups == 1 and m <= MAX_SWEPT_MIDPOINTS:
            # The common case, counted a block at a time, one midpoint per sweep: loops over slices (no
            # negative-index checks) that LLVM vectorises, about twice as fast as a count per weight.
            row_midpoints = midpoints[0]
            counts = np.empty(_BLOCK, np.int32)
            for start in range(first, last, _BLOCK):
                stop = min(last, start + _BLOCK)
                block, block_out, block_index = weights[start:stop], out[start:stop], index[start:stop]
                for i in range(stop - start):
                    counts[i] = 0
                for j in range(m):
                    bound = row_midpoints[j]
                    for i in range(stop - start):
                        counts[i] += np.int32(block[i] > bound)
                for i in range(stop - start):
                    block_index[i] = counts[i]
                    block_out[i] = table[counts[i]]
        else:
            for i in range(first, last):
                row = (i // inner) % groups
                value = weights[i]
                position = 0
                if m <= MAX_COUNTED_MIDPOINTS:
                    for j in range(m):
                        position += midpoints[row, j] < value
                else:
                    low, high = 0, m
                    while low < high:
                        middle = (low + high) >> 1
                        if midpoints[row, middle] < value:
                            low = middle + 1
                        else:
                            high = middle
                    position = low
                flat = row * k + position
                index[i] = flat
                out[i] = table[flat]


@numba.njit(parallel=True, cache=True, nogil=True)
def look_up(table, index, out):
    """out[i] = table[index[i]]; an index outside the table gives NaN. Returns how many were outside."""
    size = table.shape[0]
    n = index.shape[0]
    chunks, step = _chunking(n)
    outside = np.zeros(chunks, np.int64)
    for chunk in numba.prange(chunks):
        for i in range(chunk * step, min(n, (chunk + 1) * step)):
            position = index[i]
            if position < 0 or position >= size:
                outside[chunk] += 1
                out[i] = np.nan
            else:
                out[i] = table[position]
    return outside.sum()


@numba.njit(parallel=True, cache=True, nogil=True)
def segment_sums_into(values, index, average, out):
    """``out[j] = sum(values[index == j])`` for j < len(out) (their mean when `average`); other indices are ignored.

    Sums are accumulated in float64, one accumulator row per chunk.
    """
    n = values.shape[0]
    size = out.shape[0]
    chunks, step = _chunking(n, size)
    sums = np.zeros((chunks, size), np.float64)
    counts = np.zeros((chunks, size), np.int64)
    for chunk in numba.prange(chunks):
        for i in range(chunk * step, min(n, (chunk + 1) * step)):
            position = index[i]
            if 0 <= position < size:
                sums[chunk, position] += values[i]
                if average:
                    counts[chunk, position] += 1
    for j in range(size):
        total = 0.0
        members = 0
        for chunk in range(chunks):
            total += sums[chunk, j]
            members += counts[chunk, j]
        out[j] = total / max(members, 1) if average else total


@numba.njit(cache=True, nogil=True)
def fold_lanes(lanes, wide_lanes):
    """Moves the float32 sums of :func:`._numba_avx512.segment_sums_vector` (per index and lane) into their float64
    totals and zeroes them; callers fold often (every ``_numba_fast.LANE_BLOCK`` values, every tile in
    ``_numba_dense``), so that few values are summed in float32."""
    for j in range(lanes.shape[0]):
        wide_lanes[j] += lanes[j]
        lanes[j] = 0


@numba.njit(cache=True, nogil=True)
def add_lane_sums(wide_lanes, sums):
    """sums[j] += the 16 lanes' totals of index j, for each index of `sums`."""
    for j in range(sums.shape[0]):
        for lane in range(16):
            sums[j] += wide_lanes[16 * j + lane]


@numba.njit(cache=True, nogil=True)
def selects_are_counts(row) -> bool:
    """Whether picking the centroid after the last midpoint below a weight equals counting the midpoints
    below it: true when the midpoints ascend (NaN only at the end, where no comparison is true). (The
    condition of :mod:`._numba_fast`'s register search.)"""
    seen_nan = False
    previous = -np.inf
    for j in range(row.shape[0]):
        value = row[j]
        if np.isnan(value):
            seen_nan = True
        elif seen_nan or value < previous:
            return False
        else:
            previous = value
    return True
