"""The clustered kernel on the PyTorch backend (CPU tensors): one autograd function per clustered weight
and step, its work done by numba (:mod:`._numba_rows`, :mod:`._numba_fast`; :mod:`._numba_kernels`' search
for float64), without Keras or tensor ops in between.

PyTorch trains eagerly, so the portable path of :func:`.ops.clustered_kernel` runs one dispatched op at a
time: an argsort and two takes to sort the codebook, the midpoints, ``searchsorted`` (about 6x a SGD update
of the same kernel), the gather, and in the backward pass the scatter-adds of the centroid gradient and of
the sort. Here the forward pass sorts each codebook row (:func:`._numba_rows.sort_rows`, the portable path's
stable order), places every weight among its row's midpoints (a count of the midpoints below it: an exact
tie goes to the lower centroid) and writes its centroid and its index (one byte where the table has at most
256 entries) in one pass; the backward pass sums the upstream gradient per index in one more pass and moves
the sums back to the codebook's order. The gradients are those of :func:`.ops.shared_weight_lookup` after
the sort: per centroid, the sum (or mean) of its members' upstream gradients, zero where pinned; to the
original weights, the upstream gradient itself (straight-through).

Two things keep the step's memory traffic near a plain step's:

- Each clustered weight owns its kernel-sized output and index buffers (:class:`_Scratch`), written in
  place step after step: a fresh 67 MB tensor per step costs its page faults, more than the pass that fills
  it. A buffer is only reused once nothing else holds its memory (the previous step's autograd graph, a
  caller's tensor or NumPy view); otherwise a new one is allocated, so a result handed out never changes.
- With fixed assignment, the stored int32 indices are read through a one-byte copy (with the channel
  offsets of a per-channel codebook added), made again only when the variable changes (its version
  counter): the gather and the segment sum then read a quarter of the bytes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref

import keras
import numba
import numpy as np

from weightzip.core.errors import InvalidWeightsError
from weightzip.keras.clustering import _numba_fast, _numba_kernels, _numba_rows

# Tables of at most this many entries are indexed with one byte per weight.
BYTE_INDEX_ENTRIES = 256
# Kernels of fewer weights run their numba passes on the calling thread: a parallel region costs more than it
# saves there (its threads wake beside torch's intra-op threads on the same cores; on a loaded 2-core machine
# a 235k-weight search and sum took 32 ms in a parallel region, 0.6 ms on one thread). _numba_fast's kernels
# already run serially there; the others are held to one thread around the call.
PARALLEL_MIN_WEIGHTS = _numba_fast.SERIAL_BELOW


def clustered_kernel(centroids, original, *, channel_axis, fixed_indices, centroid_pin, sparsity_mask,
                     average_gradient):
    """:func:`.ops.clustered_kernel` on CPU torch tensors (Keras variables are read as their tensors), or None
    where these kernels do not apply (another backend, device or dtype; inside torch.compile)."""
    if keras.backend.backend() != "torch":
        return None
    table, original = variable_tensor(centroids), variable_tensor(original)
    if not applies(original, table):
        return None
    return lookup(table, original, channel_axis=channel_axis,
                  fixed_indices=None if fixed_indices is None else variable_tensor(fixed_indices),
                  centroid_pin=None if centroid_pin is None else variable_tensor(centroid_pin),
                  sparsity_mask=None if sparsity_mask is None else variable_tensor(sparsity_mask),
                  average_gradient=average_gradient)


def lookup(table, original, *, channel_axis, fixed_indices, centroid_pin, sparsity_mask, average_gradient):
    """:func:`clustered_kernel` on torch tensors that :func:`applies` to, whatever Keras backend runs."""
    pin = centroid_pin
    shape = tuple(original.shape)
    average = bool(average_gradient)
    if fixed_indices is None:
        inner = 1 if channel_axis is None else math.prod(shape[channel_axis % len(shape) + 1:])
        clustered = _lookup_function().apply(table, original, pin, None, inner, average, scratch_for(original))
    else:
        stored = fixed_indices
        index, index_array = compact_index(stored, table, channel_axis)
        clustered = _lookup_function().apply(table, None, pin, (index, index_array), 0, average, scratch_for(stored))
    clustered = clustered.view(shape)
    if sparsity_mask is not None:
        clustered = clustered * sparsity_mask.to(clustered.dtype)
    return clustered


def variable_tensor(value):
    """A Keras variable's current tensor (its stateless-scope value inside one), a tensor as it is."""
    if isinstance(value, keras.Variable):
        return value.value
    import torch

    return value if isinstance(value, torch.Tensor) else keras.ops.convert_to_tensor(value)


def applies(original, table) -> bool:
    """Whether these kernels serve the tensors: CPU float32/float64 torch tensors, outside torch.compile."""
    import torch

    if torch.compiler.is_compiling():
        return False
    return (
        isinstance(original, torch.Tensor)
        and isinstance(table, torch.Tensor)
        and original.device.type == "cpu"
        and table.device.type == "cpu"
        and original.dtype in (torch.float32, torch.float64)
        and table.dtype == original.dtype
    )


class _Scratch:
    """The kernel-sized buffers of one clustered weight (each with its NumPy view, made once: ~1-5 us a call),
    reused while nothing else holds their memory."""

    def __init__(self):
        self.buffers = {}  # role: (buffer, its NumPy view)
        self.byte_index = None  # fixed assignment: (version of the stored indices, their compact copy, its view)

    def buffer(self, role: str, size: int, dtype):
        """(a tensor of `size` elements on this role's buffer, its NumPy view); a new buffer if the old one is
        still held."""
        import torch

        held = self.buffers.get(role)
        if held is None or held[0].numel() != size or held[0].dtype != dtype or not _unreferenced(held[0], 3):
            tensor = torch.empty(size, dtype=dtype)
            held = self.buffers[role] = (tensor, tensor.numpy())
        # A new tensor on the same memory: its holders keep the buffer marked in use.
        return held[0].detach(), held[1]


# Scratch of each tensor by id, with a weak reference that drops the entry with the tensor.
_scratches: dict[int, tuple[weakref.ref, _Scratch]] = {}


def scratch_for(tensor) -> _Scratch | None:
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


def _unreferenced(buffer, own: int = 2) -> bool:
    """Whether only `buffer` itself holds its memory (no view, saved tensor or NumPy array of it is alive).

    own: the storage's holders that are ours: `buffer`, this call's storage handle (and our NumPy view's)."""
    import torch

    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:  # no way to tell: never reuse
        return False
    return use_count(buffer.untyped_storage()._cdata) <= own


def compact_index(stored, table, channel_axis):
    """(The flat table position of each weight from its stored codebook-row indices (`stored`, any int dtype),
    as one byte where the table allows; its NumPy view); the copy of a stored variable is kept and made again
    only when the variable changes (its version counter). Raises if an index is outside its codebook row."""
    import torch

    scratch = scratch_for(stored)
    version = stored._version
    if scratch is not None and scratch.byte_index is not None and scratch.byte_index[0] == version:
        return scratch.byte_index[1:]
    groups, k = (1, int(table.shape[-1])) if table.ndim == 1 else (int(table.shape[0]), int(table.shape[1]))
    if stored.numel():
        low, high = torch.aminmax(stored.detach())
        if int(low) < 0 or int(high) >= k:
            raise InvalidWeightsError(f"pulling indices out of range for a codebook of {k} entries")
    index = stored.detach()
    if groups > 1:
        shape = tuple(stored.shape)
        axis = channel_axis % len(shape)
        view = [1] * len(shape)
        view[axis] = shape[axis]
        index = index.to(torch.int32) + (torch.arange(shape[axis], dtype=torch.int32) * k).reshape(view)
    dtype = torch.uint8 if groups * k <= BYTE_INDEX_ENTRIES else torch.int32
    compact = index.reshape(-1).to(dtype).contiguous()
    if scratch is not None:
        scratch.byte_index = (version, compact, compact.numpy())
    return compact, compact.numpy()


def _search(weights):
    """The search kernel for these weights: :mod:`._numba_fast`'s holds its midpoints in float32."""
    import torch

    return _numba_fast.search_and_look_up if weights.dtype == torch.float32 else _numba_kernels.assign_and_look_up


def output_buffer(scratch, role: str, size: int, dtype):
    """(a tensor of `size` elements, its NumPy view): `scratch`'s `role` buffer (:meth:`_Scratch.buffer`), or a new
    tensor where there is no scratch. Also used by :mod:`._torch_dense`, with :func:`variable_tensor`,
    :func:`compact_index` and :func:`scratch_for`."""
    import torch

    if scratch is None:
        tensor = torch.empty(size, dtype=dtype)
        return tensor, tensor.numpy()
    return scratch.buffer(role, size, dtype)


_ANY_THREADS = contextlib.nullcontext()


class _OneThread:
    """numba's parallel regions on the calling thread alone while inside."""

    def __enter__(self):
        self.threads = numba.get_num_threads()
        numba.set_num_threads(1)

    def __exit__(self, *exc):
        numba.set_num_threads(self.threads)


def _threads_for(weights: int, serial_below: bool = False):
    """numba's passes over `weights` weights on the calling thread alone below :data:`PARALLEL_MIN_WEIGHTS`.

    serial_below: the kernel already runs serially there (:mod:`._numba_fast`'s, on one codebook row of at most
    :data:`._numba_fast.REGISTER_TABLE` entries for the search): no thread setting to change (~25 us a call).
    """
    if weights >= PARALLEL_MIN_WEIGHTS or serial_below:
        return _ANY_THREADS
    return _OneThread()


def _numpy_rows(tensor, k: int):
    return tensor.detach().reshape(-1, k).contiguous().numpy()


@functools.cache
def _lookup_function():
    import torch

    class ClusteredKernel(torch.autograd.Function):
        """centroids ``(k,)`` / ``(groups, k)``, original kernel (searched) or (compact stored index, its NumPy
        view) as `index` (fixed) -> the flat clustered kernel."""

        @staticmethod
        def forward(ctx, centroids, original, pin, index, inner, average, scratch):
            k = int(centroids.shape[-1])
            rows = _numpy_rows(centroids, k)
            pin_rows = None if pin is None else _numpy_rows(pin.to(centroids.dtype), k)
            order = None
            if index is None:
                size = rows.size
                table = np.empty(size, rows.dtype)
                midpoints = np.empty((rows.shape[0], k - 1), rows.dtype)
                order = np.empty(size, np.int32)
                _numba_rows.sort_rows(rows, pin_rows, table, midpoints, order)
                weights = original.detach().reshape(-1).contiguous()
                index, index_array = output_buffer(scratch, "index", weights.numel(),
                                             torch.uint8 if size <= BYTE_INDEX_ENTRIES else torch.int32)
                out, out_array = output_buffer(scratch, "kernel", weights.numel(), original.dtype)
                search = _search(weights)
                serial = (search is _numba_fast.search_and_look_up and rows.shape[0] == 1
                          and k <= _numba_fast.REGISTER_TABLE)
                with _threads_for(weights.numel(), serial):
                    search(weights.numpy(), midpoints, table, inner, out_array, index_array)
            else:
                table = rows.reshape(-1) if pin_rows is None else (rows * pin_rows).reshape(-1)
                index, index_array = index
                out, out_array = output_buffer(scratch, "kernel", index.numel(), centroids.dtype)
                # (_numba_fast's look-up runs serially below PARALLEL_MIN_WEIGHTS by itself)
                outside = _numba_fast.look_up_checked(table, index_array, out_array)
                if outside:
                    raise InvalidWeightsError(f"pulling indices out of range for a codebook of {k} entries")
            ctx.save_for_backward(index)  # (marks the index buffer in use until the backward pass is freed)
            ctx.index_array = index_array
            ctx.order = order
            ctx.pin = None if pin_rows is None else pin_rows.reshape(-1)
            ctx.average = average
            ctx.centroids_shape = tuple(centroids.shape)
            ctx.original_shape = None if original is None else tuple(original.shape)
            return out

        @staticmethod
        def backward(ctx, upstream):
            values = upstream.detach().reshape(-1).contiguous()
            gradient = torch.empty(ctx.centroids_shape, dtype=upstream.dtype)
            # (its _numba_fast.segment_sums runs serially below PARALLEL_MIN_WEIGHTS by itself)
            _numba_rows.centroid_gradient(values.numpy(), ctx.index_array, ctx.average, ctx.order, ctx.pin,
                                          gradient.numpy().reshape(-1))
            straight_through = None if ctx.original_shape is None else upstream.reshape(ctx.original_shape)
            return gradient, straight_through, None, None, None, None, None

    return ClusteredKernel
