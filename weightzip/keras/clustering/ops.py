"""The tensor math of trained clustering, written with ``keras.ops`` only (TensorFlow, JAX, PyTorch).

The clustered kernel is ``take(centroids, index)``: automatic differentiation of the gather gives each
centroid the sum of its members' gradients (Deep Compression's rule), as a scatter-add of size n,
never an n × k tensor. Nearest-centroid assignment is a binary search among the midpoints of the
sorted centroids: ``keras.ops.searchsorted`` for one codebook per tensor, and for per-channel
codebooks (which ``searchsorted`` cannot batch) the same search written as ceil(log2 k) rounds of
gather-and-compare. On an exact tie the lower centroid wins, as in :func:`weightzip.core.assign_to_centroids`.

Training speed: a step that XLA compiles (TensorFlow under ``jit_compile``, JAX on other devices or dtypes) counts
the midpoints below each weight instead (k - 1 elementwise compares, fused with the gather into one loop
over the kernel); on PyTorch (CPU) one autograd function does the whole kernel, codebook sort included, in
numba (:mod:`._torch_lookup`); on JAX (CPU, float32), numba kernels (:mod:`._numba_kernels`) do the
search with the gather, and the centroid gradient, in one pass each, parallel from 2^20 weights
(:mod:`._jax_lookup`, called from the jitted step as XLA FFI targets); a TensorFlow step outside XLA (Keras's
default on CPU) writes the search and lookup into the weight's workspace without allocating (:mod:`._tf_lookup`:
numba's search for kernels of 2^20 weights and more in graph steps, an XLA-compiled one otherwise).
Every path searches afresh at every step (TFMOT's semantics).

Shapes: `centroids` is ``(k,)`` for a per-tensor codebook or ``(channels, k)`` per channel, with the
channel index running along `channel_axis` of the kernel.
"""

from __future__ import annotations

import keras
from keras import ops

from weightzip.core.errors import InvalidArgumentError
from weightzip.keras._compat import compiled_by_xla, in_xla_trace, segment_sum
from weightzip.keras.clustering import _torch_lookup

# Up to this many midpoints per row, a compiled step counts the midpoints below each weight (k - 1
# compare-and-adds that XLA fuses with the gather) instead of searching for it.
MAX_COUNTED_MIDPOINTS = 31


def clustered_kernel(
    centroids,
    original,
    *,
    channel_axis: int | None,
    fixed_indices=None,
    centroid_pin=None,
    sparsity_mask=None,
    average_gradient: bool = False,
    workspace=None,
):
    """The kernel with every weight replaced by its centroid, differentiable in the centroids.

    original: the layer's own (unclustered) kernel (its variable or a tensor). Without `fixed_indices`, each
        weight is assigned to its nearest centroid now, and the kernel's gradient also flows to `original`
        (straight-through estimator), so the original weights can train and be reassigned next step.
    fixed_indices: int indices into each weight's codebook row (same shape as the kernel), stored
        once; `original` is then only used for its shape and receives no gradient.
    centroid_pin: 0/1 tensor shaped like `centroids`; entries at 0 are held at exactly zero, receive
        no gradient, and take no weight in the search (the zero centroid of ``preserve_sparsity``:
        only the weights under `sparsity_mask` are zero, as in :func:`weightzip.core.cluster_array`).
    sparsity_mask: 0/1 tensor shaped like the kernel; weights at 0 stay exactly zero.
    average_gradient: divide each centroid's gradient by its member count (TFMOT's ``AVG``).
    workspace: on TensorFlow, the weight's :class:`._tf_lookup.Workspace` (its training steps outside XLA
        then run the search, lookup and gradient there).
    """
    clustered = _torch_lookup.clustered_kernel(
        centroids, original, channel_axis=channel_axis, fixed_indices=fixed_indices, centroid_pin=centroid_pin,
        sparsity_mask=sparsity_mask, average_gradient=average_gradient)
    if clustered is not None:  # PyTorch on CPU: one autograd function, no Keras ops
        return clustered
    original = ops.convert_to_tensor(original)
    table = _as_rows(centroids)
    k = int(table.shape[1])
    search_keys = ops.stop_gradient(table)
    if centroid_pin is not None:
        pin = _as_rows(centroid_pin)
        table = table * pin
        # Nonzero weights are never assigned to the pinned zero: it sorts last, out of reach.
        search_keys = ops.where(pin > 0, search_keys, float("inf"))
    flat_table = ops.reshape(table, (-1,))
    kernel_shape = tuple(original.shape)
    native = _native_lookup(original, flat_table)
    tf_workspace = workspace if _tf_lookup_applies(workspace, original, flat_table, fixed_indices, k) else None
    if fixed_indices is None:
        flat_table, sorted_keys = sorted_rows(flat_table, search_keys)
        if native is not None:
            clustered = native.searched_lookup(flat_table, sorted_keys, original, channel_axis=channel_axis,
                                               average_gradient=average_gradient)
            return _masked(clustered, sparsity_mask)
        if tf_workspace is not None:
            clustered = _tf_lookup().searched_lookup(tf_workspace, flat_table, sorted_keys, original,
                                                     channel_axis=channel_axis, average_gradient=average_gradient)
            return _masked(clustered, sparsity_mask)
        positions = nearest_positions(ops.stop_gradient(original), sorted_keys, channel_axis)
    else:
        if tf_workspace is not None:
            clustered = _tf_lookup().indexed_lookup(tf_workspace, flat_table, fixed_indices, channel_axis=channel_axis,
                                                    k=k, average_gradient=average_gradient)
            return _masked(clustered, sparsity_mask)
        if native is not None and channel_axis is None:
            # The stored indices as they are (one byte each up to 256 clusters): a cast would be a pass per step.
            return _masked(native.indexed_lookup(flat_table, ops.convert_to_tensor(fixed_indices),
                                                 average_gradient=average_gradient), sparsity_mask)
        positions = ops.cast(fixed_indices, "int32")
    index = flat_index(positions, kernel_shape, channel_axis, k)
    if native is not None:
        return _masked(native.indexed_lookup(flat_table, index, average_gradient=average_gradient),
                       sparsity_mask)
    straight_through = original if fixed_indices is None else None
    return _masked(shared_weight_lookup(flat_table, index, straight_through, average_gradient), sparsity_mask)


def _tf_lookup():
    from weightzip.keras.clustering import _tf_lookup  # imports TensorFlow: TensorFlow backend only

    return _tf_lookup


def _tf_lookup_applies(workspace, original, flat_table, fixed_indices, k: int) -> bool:
    return workspace is not None and _tf_lookup().applies(workspace, original, flat_table,
                                                          searched=fixed_indices is None, k=k)


def _native_lookup(original, flat_table):
    """The module of numba kernels that serves these tensors (JAX on CPU), or None. (PyTorch's serves the
    whole kernel: :func:`._torch_lookup.clustered_kernel`.)"""
    if keras.backend.backend() == "jax":
        from weightzip.keras.clustering import _jax_lookup  # compiles its FFI handlers: JAX only

        if _jax_lookup.applies(original, flat_table):
            return _jax_lookup
    return None


def _masked(clustered, sparsity_mask):
    if sparsity_mask is not None:
        clustered = clustered * ops.cast(sparsity_mask, clustered.dtype)
    return clustered


def shared_weight_lookup(flat_table, index, original=None, average_gradient: bool = False):
    """``take(flat_table, index)`` with the gradients of weight sharing.

    The gradient of each table entry is the sum of the upstream gradients at the positions that read
    it (exactly what automatic differentiation of ``take`` gives), divided by their count when
    `average_gradient`; the gradient of `original`, when given, is the upstream gradient itself (the
    straight-through estimator). Written as one custom-gradient op so that the reduction can use each
    backend's fastest kernel (see :func:`reduce_by_index`) and the straight-through term costs nothing
    in the forward pass.
    """
    size = int(flat_table.shape[0])
    flat_index = ops.reshape(index, (-1,))

    def table_gradient(upstream):
        gradient = reduce_by_index(ops.reshape(upstream, (-1,)), flat_index, size)
        if average_gradient:
            counts = reduce_by_index(ops.ones(flat_index.shape, dtype=gradient.dtype), flat_index, size)
            gradient = gradient / ops.maximum(counts, 1.0)
        return gradient

    if original is None:
        @ops.custom_gradient
        def lookup(table):
            def gradient(*args, upstream=None):
                return table_gradient(args[0] if upstream is None else upstream)
            return ops.take(table, index), gradient

        return lookup(flat_table)

    @ops.custom_gradient
    def lookup_straight_through(table, weights):
        def gradient(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            return table_gradient(upstream), upstream
        return ops.take(table, index), gradient

    return lookup_straight_through(flat_table, original)


def reduce_by_index(values, index, size: int):
    """``out[j] = sum(values[index == j])`` for j < size (1-D int32 `index`), no n × size tensor.

    Each backend's fastest kernel, chosen behind the compatibility seam (:func:`._compat.segment_sum`).
    """
    return segment_sum(values, index, size)


def nearest_positions(weights, sorted_rows, channel_axis: int | None):
    """Position of each weight's nearest entry in its (ascending) codebook row, as int32.

    One row: ``keras.ops.searchsorted`` on the midpoints (TensorFlow's compiled XLA form of it compares
    every weight with every midpoint, O(n k), so there the binary lifting below is used instead).
    Several rows (per channel): binary lifting, which ``searchsorted`` cannot batch.
    """
    groups, k = int(sorted_rows.shape[0]), int(sorted_rows.shape[1])
    kernel_shape = tuple(weights.shape)
    if k == 1:
        return ops.zeros(kernel_shape, dtype="int32")
    midpoints = (sorted_rows[:, 1:] + sorted_rows[:, :-1]) / 2.0
    if channel_axis is None and groups != 1:
        raise InvalidArgumentError(f"a per-tensor codebook has one row, got {groups}")
    if k - 1 <= MAX_COUNTED_MIDPOINTS and compiled_by_xla(weights):
        return _counted_search(weights, midpoints, channel_axis)
    if channel_axis is None:
        if not in_xla_trace():
            found = ops.searchsorted(ops.reshape(midpoints, (-1,)), ops.reshape(weights, (-1,)), side="left")
            return ops.reshape(ops.cast(found, "int32"), kernel_shape)
    return _batched_search(weights, midpoints, channel_axis)


def flat_index(positions, kernel_shape, channel_axis: int | None, k: int):
    """Index of each weight's centroid in the flattened ``(channels * k,)`` codebook."""
    if channel_axis is None:
        return positions
    return positions + channel_offsets(kernel_shape, channel_axis, k)


def channel_offsets(kernel_shape, channel_axis: int, stride: int):
    """``channel * stride`` for every weight, as an int32 tensor broadcastable to the kernel."""
    axis = channel_axis % len(kernel_shape)
    view = [1] * len(kernel_shape)
    view[axis] = kernel_shape[axis]
    return ops.reshape(ops.arange(kernel_shape[axis], dtype="int32") * stride, view)


def _counted_search(weights, midpoints, channel_axis: int | None):
    """Count of each weight's row midpoints strictly below it, one elementwise compare-and-add per midpoint.

    k - 1 passes when run op by op, but a single loop (with the gather that reads the result) once XLA
    fuses them: no index tensor is written between the search and the lookup.
    """
    kernel_shape = tuple(weights.shape)
    view = [1] * len(kernel_shape)
    if channel_axis is not None:
        view[channel_axis % len(kernel_shape)] = kernel_shape[channel_axis % len(kernel_shape)]
    positions = ops.zeros(kernel_shape, dtype="int32")
    for j in range(int(midpoints.shape[1])):
        column = ops.reshape(midpoints[:, j], view)
        positions = positions + ops.cast(ops.greater(weights, column), "int32")
    return positions


def _batched_search(weights, midpoints, channel_axis: int | None):
    """Count of each weight's row midpoints strictly below it, by binary lifting.

    The rows are padded with +inf to 2**levels - 1 entries; each round tests the entry `step` places
    ahead and advances if it is below the weight. ceil(log2 k) gathers of kernel size in all.
    """
    groups, width_needed = int(midpoints.shape[0]), int(midpoints.shape[1])
    levels = width_needed.bit_length()
    width = (1 << levels) - 1
    if width > width_needed:
        padding = ops.full((groups, width - width_needed), float("inf"), dtype=midpoints.dtype)
        midpoints = ops.concatenate([midpoints, padding], axis=1)
    flat = ops.reshape(midpoints, (-1,))
    kernel_shape = tuple(weights.shape)
    base = 0 if channel_axis is None else channel_offsets(kernel_shape, channel_axis, width)
    positions = ops.zeros(kernel_shape, dtype="int32")
    step = 1 << (levels - 1)
    while step:
        probe = ops.take(flat, base + positions + (step - 1))
        positions = ops.where(probe < weights, positions + step, positions)
        step >>= 1
    return positions


def sorted_rows(flat_table, search_keys):
    """(`flat_table` with each codebook row in ascending order of its `search_keys` ``(groups, k)``, those keys
    sorted): centroids may cross while training; flat gathers, few ops per step."""
    groups, k = int(search_keys.shape[0]), int(search_keys.shape[1])
    order = ops.reshape(ops.cast(ops.argsort(search_keys, axis=-1), "int32"), (-1,))
    if groups > 1:
        order = order + ops.repeat(ops.arange(groups, dtype="int32") * k, k)
    return ops.take(flat_table, order), ops.reshape(ops.take(ops.reshape(search_keys, (-1,)), order), (groups, k))


def _as_rows(centroids):
    return ops.reshape(centroids, (1, -1)) if len(centroids.shape) == 1 else centroids
