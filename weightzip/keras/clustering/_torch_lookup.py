"""The clustered kernel on the PyTorch backend (CPU tensors): the search, the gather and the gradient's
segment sum as two numba passes (:mod:`._numba_fast`; :mod:`._numba_kernels`' search for float64).

PyTorch trains eagerly, so the portable path of :func:`.ops.clustered_kernel` runs one full pass over
the kernel per op: ``searchsorted`` (about 6x a SGD update of the same kernel), the gather, and
the centroid gradient's scatter-add. Here one pass places every weight among its row's midpoints (a
count of the midpoints below it, as the portable path: an exact tie goes to the lower centroid), writes
its centroid and its index (one byte where the table has at most 256 entries); the backward pass sums
the upstream gradient per index in one more pass with a private accumulator per thread. The gradients
are those of :func:`.ops.shared_weight_lookup`: per table entry, the sum (or mean) of its members'
upstream gradients; to the original weights, the upstream gradient itself (straight-through).

Two things keep the step's memory traffic near a plain step's:

- Each clustered weight owns its kernel-sized output and index buffers (:class:`_Scratch`), written in
  place step after step: a fresh 67 MB tensor per step costs its page faults, more than the pass that fills
  it. A buffer is only reused once nothing else holds its memory (the previous step's autograd graph, a
  caller's tensor or NumPy view); otherwise a new one is allocated, so a result handed out never changes.
- With fixed assignment, the stored int32 indices are read through a one-byte copy, made again only when
  the variable changes (its version counter): the gather and the segment sum then read a quarter of the
  bytes.
"""

from __future__ import annotations

import functools
import weakref

import keras
import numpy as np

from weightzip.core.errors import InvalidWeightsError
from weightzip.keras.clustering import _numba_fast, _numba_kernels

# Tables of at most this many entries are indexed with one byte per weight.
BYTE_INDEX_ENTRIES = 256


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
    clustered = _lookup_function().apply(flat_table, original, midpoints, None, inner, bool(average_gradient),
                                         _scratch_for(original))
    return clustered.reshape(shape)


def indexed_lookup(flat_table, index, *, average_gradient):
    """``take(flat_table, index)`` (`index`: flat table positions, any int dtype), gradients to the table only."""
    shape = tuple(index.shape)
    flat_index = _compact_index(index, int(flat_table.shape[0]))
    clustered = _lookup_function().apply(flat_table, None, None, flat_index, 0, bool(average_gradient),
                                         _scratch_for(index))
    return clustered.reshape(shape)


class _Scratch:
    """The kernel-sized buffers of one clustered weight, reused while nothing else holds their memory."""

    def __init__(self):
        self.buffers = {}
        self.byte_index = None  # fixed assignment: (version of the stored indices, their one-byte copy)

    def buffer(self, role: str, size: int, dtype):
        """A tensor of `size` elements on this role's buffer (a new buffer if the old one is still held)."""
        import torch

        held = self.buffers.get(role)
        if held is None or held.numel() != size or held.dtype != dtype or not _unreferenced(held):
            held = torch.empty(size, dtype=dtype)
            self.buffers[role] = held
        return held.detach()  # a new tensor on the same memory: its holders keep the buffer marked in use


# Scratch of each tensor by id, with a weak reference that drops the entry with the tensor.
_scratches: dict[int, tuple[weakref.ref, _Scratch]] = {}


def _scratch_for(tensor) -> _Scratch | None:
    """The scratch of a variable's own tensor (a ``torch.nn.Parameter``, the same object at every step), or
    None for a tensor computed in this call, which has no next step to reuse a buffer in."""
    import torch

    if not isinstance(tensor, torch.nn.Parameter):
        return None
    key = id(tensor)
    entry = _scratches.get(key)
    if entry is not None and entry[0]() is tensor:
        return entry[1]
    scratch = _Scratch()
    _scratches[key] = (weakref.ref(tensor, lambda _, key=key: _scratches.pop(key, None)), scratch)
    return scratch


def _unreferenced(buffer) -> bool:
    """Whether only `buffer` itself holds its memory (no view, saved tensor or NumPy array of it is alive)."""
    import torch

    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:  # no way to tell: never reuse
        return False
    return use_count(buffer.untyped_storage()._cdata) <= 2  # `buffer` and this call's storage handle


def _compact_index(index, table_size: int):
    """`index` flat and contiguous, as one byte per weight when the table allows; the byte copy of a stored
    variable is kept and made again only when the variable changes. Raises if an index is outside the table."""
    import torch

    flat = index.reshape(-1)
    if table_size > BYTE_INDEX_ENTRIES or flat.dtype == torch.uint8:
        return flat.to(torch.int32).contiguous() if flat.dtype not in (torch.int32, torch.uint8) else flat.contiguous()
    scratch = _scratch_for(index)
    version = index._version
    if scratch is not None and scratch.byte_index is not None and scratch.byte_index[0] == version:
        return scratch.byte_index[1]
    if flat.numel():
        low, high = torch.aminmax(flat)
        if int(low) < 0 or int(high) >= table_size:
            raise InvalidWeightsError(f"pulling indices out of range for a codebook of {table_size} entries")
    compact = flat.to(torch.uint8).contiguous()
    if scratch is not None:
        scratch.byte_index = (version, compact)
    return compact


def _search(weights):
    """The search kernel for these weights: :mod:`._numba_fast`'s holds its midpoints in float32."""
    import torch

    return _numba_fast.search_and_look_up if weights.dtype == torch.float32 else _numba_kernels.assign_and_look_up


def _output(scratch, role: str, size: int, dtype):
    import torch

    return torch.empty(size, dtype=dtype) if scratch is None else scratch.buffer(role, size, dtype)


@functools.cache
def _lookup_function():
    import torch

    class ClusteredLookup(torch.autograd.Function):
        @staticmethod
        def forward(ctx, table, original, midpoints, fixed_index, inner, average, scratch):
            table_values = table.detach().contiguous()
            if fixed_index is None:
                weights = original.detach().contiguous().reshape(-1)
                index_dtype = torch.uint8 if table.numel() <= BYTE_INDEX_ENTRIES else torch.int32
                index = _output(scratch, "index", weights.numel(), index_dtype)
                out = _output(scratch, "kernel", weights.numel(), table_values.dtype)
                _search(weights)(weights.numpy(), midpoints.numpy(), table_values.numpy(), inner, out.numpy(),
                                 index.numpy())
            else:
                index = fixed_index
                out = _output(scratch, "kernel", index.numel(), table_values.dtype)
                if _numba_fast.look_up_checked(table_values.numpy(), index.numpy(), out.numpy()):
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
            _numba_fast.segment_sums(flat.numpy(), index.numpy(), ctx.average, table_gradient.numpy())
            original_gradient = upstream.reshape(ctx.original_shape) if ctx.straight_through else None
            return table_gradient, original_gradient, None, None, None, None, None

    return ClusteredLookup
