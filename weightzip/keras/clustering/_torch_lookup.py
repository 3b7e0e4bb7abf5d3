"""The clustered kernel on the PyTorch backend (CPU tensors): the search, the gather and the gradient's
segment sum as two parallel numba passes.

PyTorch trains eagerly, so the portable path of :func:`.ops.clustered_kernel` runs one full pass over
the kernel per op: ``searchsorted`` (about 6x a SGD update of the same kernel), the gather, and
the centroid gradient's scatter-add. Here one pass places every weight among its row's midpoints (a
count of the midpoints below it, as the portable path: an exact tie goes to the lower centroid), writes
its centroid and its index (one byte where the table has at most 256 entries); the backward pass sums
the upstream gradient per index in one more pass with a private accumulator per thread. The gradients
are those of :func:`.ops.shared_weight_lookup`: per table entry, the sum (or mean) of its members'
upstream gradients; to the original weights, the upstream gradient itself (straight-through).
"""

from __future__ import annotations

import functools

import keras
import numba
import numpy as np

from weightzip.core.errors import InvalidWeightsError

# Above this many midpoints per row, a binary search beats counting the midpoints below each weight.
_MAX_COUNTED_MIDPOINTS = 31


def applies(original, table) -> bool:
    """Whether these kernels serve the tensors: PyTorch backend, CPU float32/float64, outside torch.compile."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    if torch.compiler.is_compiling():
        return False
    return (
        original.device.type == "cpu"
        and table.device.type == "cpu"
        and original.dtype in (torch.float32, torch.float64)
        and table.dtype == original.dtype
    )


def searched_lookup(flat_table, sorted_keys, original, *, channel_axis, average_gradient):
    """Each weight of `original` replaced by its nearest entry of its table row; straight-through to `original`.

    flat_table: ``(groups * k,)`` centroid values, each row in ascending order of `sorted_keys`.
    sorted_keys: ``(groups, k)`` ascending search keys (the centroids; +inf for a pinned zero).
    """
    midpoints = ((sorted_keys[:, 1:] + sorted_keys[:, :-1]) / 2.0).detach().contiguous()
    shape = tuple(original.shape)
    inner = 1 if channel_axis is None else int(np.prod(shape[channel_axis % len(shape) + 1:], dtype=np.int64))
    clustered = _lookup_function().apply(flat_table, original, midpoints, None, inner, bool(average_gradient))
    return clustered.reshape(shape)


def indexed_lookup(flat_table, index, *, average_gradient):
    """``take(flat_table, index)`` (`index`: flat table positions, any int dtype), gradients to the table only."""
    import torch

    flat_index = index.reshape(-1).to(torch.int32).contiguous()
    clustered = _lookup_function().apply(flat_table, None, None, flat_index, 0, bool(average_gradient))
    return clustered.reshape(tuple(index.shape))


@functools.cache
def _lookup_function():
    import torch

    class ClusteredLookup(torch.autograd.Function):
        @staticmethod
        def forward(ctx, table, original, midpoints, fixed_index, inner, average):
            table_values = table.detach().contiguous()
            if fixed_index is None:
                weights = original.detach().contiguous().reshape(-1)
                index_dtype = torch.uint8 if table.numel() <= 256 else torch.int32
                index = torch.empty(weights.shape, dtype=index_dtype)
                out = torch.empty_like(weights)
                _assign_and_look_up(weights.numpy(), midpoints.numpy(), table_values.numpy(), inner,
                                    out.numpy(), index.numpy())
            else:
                index = fixed_index
                out = torch.empty(index.shape, dtype=table_values.dtype)
                if _look_up(table_values.numpy(), index.numpy(), out.numpy()):
                    raise InvalidWeightsError(f"pulling indices out of range for a codebook of {table.numel()} entries")
            ctx.save_for_backward(index)
            ctx.table_size = table.numel()
            ctx.average = average
            ctx.straight_through = fixed_index is None
            ctx.original_shape = None if original is None else tuple(original.shape)
            return out

        @staticmethod
        def backward(ctx, upstream):
            (index,) = ctx.saved_tensors
            flat = upstream.detach().contiguous().reshape(-1)
            sums = _segment_sums(flat.numpy(), index.numpy(), ctx.table_size, ctx.average, numba.get_num_threads())
            table_gradient = torch.from_numpy(sums).to(upstream.dtype)
            original_gradient = upstream.reshape(ctx.original_shape) if ctx.straight_through else None
            return table_gradient, original_gradient, None, None, None, None

    return ClusteredLookup


@numba.njit(parallel=True, cache=True, nogil=True)
def _assign_and_look_up(weights, midpoints, table, inner, out, index):
    """For each weight: its row's position p (count of midpoints < weight), out = table[row * k + p].

    The row of weight i is ``(i // inner) % groups`` (the channel of a C-ordered kernel whose channel
    axis has `groups` entries and `inner` elements after it); index[i] is the flat table position.
    """
    groups, m = midpoints.shape
    k = m + 1
    for i in numba.prange(weights.shape[0]):
        row = (i // inner) % groups if groups > 1 else 0
        value = weights[i]
        position = 0
        if m <= _MAX_COUNTED_MIDPOINTS:
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
def _look_up(table, index, out):
    """out[i] = table[index[i]]; returns the number of out-of-range indices (their outputs are left unset)."""
    size = table.shape[0]
    outside = 0
    for i in numba.prange(index.shape[0]):
        position = index[i]
        if position < 0 or position >= size:
            outside += 1
        else:
            out[i] = table[position]
    return outside


@numba.njit(parallel=True, cache=True, nogil=True)
def _segment_sums(values, index, size, average, threads):
    """``out[j] = sum(values[index == j])`` (or their mean when `average`), one accumulator per chunk."""
    n = values.shape[0]
    chunks = max(1, min(threads * 2, n // 65536))
    step = (n + chunks - 1) // chunks
    sums = np.zeros((chunks, size), np.float64)
    counts = np.zeros((chunks, size), np.int64)
    for chunk in numba.prange(chunks):
        for i in range(chunk * step, min(n, (chunk + 1) * step)):
            sums[chunk, index[i]] += values[i]
            if average:
                counts[chunk, index[i]] += 1
    total = sums.sum(axis=0)
    if average:
        total = total / np.maximum(counts.sum(axis=0), 1)
    return total.astype(values.dtype)
