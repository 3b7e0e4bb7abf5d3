"""The clustered kernel on the PyTorch backend (CPU tensors): the search, the gather and the gradient's
segment sum as two parallel numba passes (:mod:`._numba_kernels`).

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
import numpy as np

from weightzip.core.errors import InvalidWeightsError
from weightzip.keras.clustering import _numba_kernels


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
                _numba_kernels.assign_and_look_up(weights.numpy(), midpoints.numpy(), table_values.numpy(), inner,
                                                  out.numpy(), index.numpy())
            else:
                index = fixed_index
                out = torch.empty(index.shape, dtype=table_values.dtype)
                if _numba_kernels.look_up(table_values.numpy(), index.numpy(), out.numpy()):
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
            table_gradient = torch.empty(ctx.table_size, dtype=upstream.dtype)
            _numba_kernels.segment_sums_into(flat.numpy(), index.numpy(), ctx.average, table_gradient.numpy())
            original_gradient = upstream.reshape(ctx.original_shape) if ctx.straight_through else None
            return table_gradient, original_gradient, None, None, None, None

    return ClusteredLookup
