"""The clustered kernel in a TensorFlow training step that XLA does not compile (Keras's default on CPU).

Keras turns ``jit_compile`` off on CPU-only machines, so the portable path of :func:`.ops.clustered_kernel`
runs op by op there: ``searchsorted``, the gather, and the centroid gradient's ``bincount``, each a full
pass over the kernel into a freshly allocated tensor (16.8M weights: 67 MB of new pages a tensor, and the
page faults cost as much as the pass). Here:

- The search and the lookup are one pass: each weight is compared with its row's midpoints (the count of
  midpoints below it, as the portable path: an exact tie goes to the lower centroid) and takes its centroid.
  In a kernel of at least :data:`MIN_PARALLEL_WEIGHTS` weights traced into a graph (``model.fit``'s step),
  the pass is :func:`._numba_fast.search_and_look_up` (both cores; AVX-512 where numba compiles for it),
  called through ``tf.numpy_function``, reading the weights' own buffer and writing into two page-aligned
  NumPy buffers of the :class:`Workspace`, which TensorFlow takes as the outputs' memory without a copy; a
  buffer is written again only once TensorFlow has let go of it (its reference count), else a new one is
  made, so a result handed out never changes. Elsewhere (a smaller kernel, an eager step, where a
  returned array is copied) it is one XLA-compiled function called from the uncompiled step, a chain of
  selects in one fused loop (on one thread) that writes the kernel and its flat table positions into two
  variables of the :class:`Workspace`, in place (XLA reuses a variable's buffer). Either way no
  kernel-sized tensor is allocated per step. With fixed assignment, the XLA form of
  ``take(table, stored indices)``.
- The backward pass sums the upstream gradient by those positions: in a kernel of at least
  :data:`MIN_PARALLEL_WEIGHTS` weights in one parallel pass, a private accumulator per chunk (the numba
  kernel :func:`._numba_fast.segment_sums`, called through ``tf.numpy_function`` on the
  tensors' own buffers: TensorFlow's weighted ``Bincount`` is one serial loop over int32 indices), with
  the positions kept in one byte each where the flat table has at most 256 entries (a quarter of the
  int32 traffic; with fixed assignment the sum reads the stored indices, one byte each up to 256
  clusters); in a smaller kernel, one weighted ``Bincount`` (without the max-index pass of
  ``tf.math.bincount``). The straight-through gradient to the original weights is the upstream
  gradient itself, released to the optimizer only once the sum has read it (so that the optimizer's
  update can reuse its buffer instead of allocating another).

A large Dense layer with at most 16 centroids multiplies by a look-up table instead, from the indices these
passes write (:mod:`._tf_dense`). The gradients are those of :func:`.ops.shared_weight_lookup`. Only a step
being differentiated by a ``tf.GradientTape`` uses this path (a training step); inference graphs (predict,
SavedModel and TFLite export) keep the portable ops, which write no variable.
"""

from __future__ import annotations

import functools
import math
import sys

import numpy as np
import tensorflow as tf

from weightzip.keras._compat import get_stateless_scope, in_xla_trace, tape_is_recording
from weightzip.keras.clustering import _numba_fast

# Up to this many midpoints per row, the XLA search is a chain of compares and selects; above, the portable
# path, unless numba's search serves the step (any k).
MAX_CHAINED_MIDPOINTS = 31
# From this many weights, the centroid gradient is summed by the parallel numba kernel (below, one serial
# Bincount costs less than a call out of the graph), and positions in tables of <= 256 entries take a byte.
MIN_PARALLEL_WEIGHTS = 1 << 20
MAX_BYTE_INDEXED_ENTRIES = 256


class Workspace:
    """The kernel-shaped memory one clustered weight's lookup writes in place each step: two variables
    (`kernel`, `index`) for the XLA forms, and `buffers` (role -> NumPy array) for the numba search.

    `index` holds flat table positions: one byte each in a large kernel (:data:`MIN_PARALLEL_WEIGHTS`)
    whose flat table has at most 256 entries, else int32 (`index_dtype`). Their memory is not touched (nor
    counted in the process's resident size) until a training step writes it, and a step writes one of the two
    forms only. Not a Keras weight: never saved, never trained.
    """

    def __init__(self, shape, table_size: int):
        self.shape = tuple(int(size) for size in shape)
        self.table_size = int(table_size)
        self.parallel_sums = int(np.prod(self.shape, dtype=np.int64)) >= MIN_PARALLEL_WEIGHTS
        byte_indexed = self.parallel_sums and self.table_size <= MAX_BYTE_INDEXED_ENTRIES
        self.index_dtype = np.dtype(np.uint8 if byte_indexed else np.int32)
        self.buffers = {}  # the numba search's outputs, by role: kernel, index
        with tf.init_scope():
            self.kernel = tf.Variable(tf.raw_ops.Empty(shape=self.shape, dtype=tf.float32), trainable=False,
                                      name="clustered_kernel_workspace")
            self.index = tf.Variable(tf.raw_ops.Empty(shape=self.shape, dtype=tf.as_dtype(self.index_dtype)),
                                     trainable=False, name="clustered_index_workspace")


def workspace_for(variable, table_size: int):
    """A :class:`Workspace` for a clustered float32 weight whose flat codebook has `table_size` entries, or
    None where this path can never serve it."""
    if variable.dtype != "float32" or len(variable.shape) == 0:
        return None
    return Workspace(variable.shape, table_size)


def applies(workspace, original, flat_table, *, searched: bool, k: int) -> bool:
    """Whether `workspace` serves this call: a differentiated, uncompiled TensorFlow step on float32 tensors."""
    if workspace is None or tuple(original.shape) != workspace.shape:
        return False
    if int(flat_table.shape[0]) != workspace.table_size:
        return False
    if searched and k - 1 > MAX_CHAINED_MIDPOINTS and not numba_searches(workspace):
        return False
    if original.dtype != tf.float32 or flat_table.dtype != tf.float32:
        return False
    if in_xla_trace() or get_stateless_scope() is not None or tf.distribute.has_strategy():
        return False
    return tape_is_recording()


def searched_lookup(workspace, flat_table, sorted_keys, original, *, channel_axis, average_gradient):
    """Each weight of `original` replaced by its nearest entry of its table row; straight-through to `original`.

    flat_table: ``(groups * k,)`` centroid values, each row in ascending order of `sorted_keys`.
    sorted_keys: ``(groups, k)`` ascending search keys (the centroids; +inf for a pinned zero).
    """
    groups, k = int(sorted_keys.shape[0]), int(sorted_keys.shape[1])
    keys = tf.stop_gradient(sorted_keys)
    by_numba = numba_searches(workspace)

    @tf.custom_gradient
    def lookup(table, weights):
        if by_numba:
            clustered, index = numba_search(workspace, table, keys, weights, channel_axis)
        else:
            written = _search_into(tf.reshape(table, (groups, k)), keys, weights, workspace.kernel, workspace.index,
                                   channel_axis)
            with tf.control_dependencies([written]):
                clustered, index = workspace.kernel.read_value(), workspace.index.read_value()

        def gradient(upstream, variables=None):
            sums, upstream = table_gradient(upstream, index, groups * k, average_gradient, workspace.parallel_sums)
            return with_variables((sums, upstream), variables)

        return clustered, gradient

    return lookup(flat_table, original)


def indexed_lookup(workspace, flat_table, positions, *, channel_axis, k, average_gradient):
    """``take(flat_table, positions + channel * k)``, with the gradient to the table only (fixed assignment).

    positions: the stored indices (uint8 or int32). Per tensor, they are the flat positions: the sum reads them
    as they are where their type is the workspace's; otherwise the gather writes the flat positions there.
    """
    size = int(flat_table.shape[0])
    positions = tf.convert_to_tensor(positions)

    @tf.custom_gradient
    def lookup(table):
        copied = channel_axis is not None or workspace.index.dtype != positions.dtype
        index_cache = workspace.index if copied else None
        written = _gather_into(table, positions, workspace.kernel, index_cache, channel_axis, k)
        with tf.control_dependencies([written]):
            clustered = workspace.kernel.read_value()
            index = index_cache.read_value() if copied else positions

        def gradient(upstream, variables=None):
            return with_variables(table_gradient(upstream, index, size, average_gradient, workspace.parallel_sums)[0],
                                  variables)

        return clustered, gradient

    return lookup(flat_table)


def numba_searches(workspace) -> bool:
    """Whether the search of a step being traced now is numba's: a large kernel, in a graph (an eager step
    would copy the returned arrays)."""
    return workspace.parallel_sums and not tf.executing_eagerly()


def numba_search(workspace, table, keys, weights, channel_axis):
    """(the clustered kernel, its flat table positions) by :func:`._numba_fast.search_and_look_up`, written
    into the workspace's buffers (see the module's docstring)."""
    shape = workspace.shape
    inner = 1 if channel_axis is None else math.prod(shape[channel_axis % len(shape) + 1:])
    midpoints = (keys[:, 1:] + keys[:, :-1]) / 2.0

    def search(weights, midpoints, table):
        kernel = output_buffer(workspace, "kernel", np.float32)
        index = output_buffer(workspace, "index", workspace.index_dtype)
        _numba_fast.search_and_look_up(weights.reshape(-1), midpoints, table, inner, kernel.reshape(-1),
                                       index.reshape(-1))
        return kernel, index

    kernel, index = tf.numpy_function(search, [weights, midpoints, tf.reshape(table, (-1,))],
                                      [tf.float32, tf.as_dtype(workspace.index_dtype)], stateful=True,
                                      name="clustered_search")
    kernel.set_shape(shape)
    index.set_shape(shape)
    return kernel, index


# Alignment of the numba search's output buffers: TensorFlow adopts a returned array's memory, instead of
# copying it, only where it is aligned for Eigen (64 bytes); a page is more than enough.
_BUFFER_ALIGNMENT = 4096


def output_buffer(workspace, role: str, dtype):
    """The workspace's `role` buffer (shaped as the kernel), or a new one where TensorFlow still holds it.

    A held buffer is referenced by the tensor that adopted it (TensorFlow releases the array when the tensor
    is freed); ours are the dictionary's, `held` and getrefcount's argument."""
    held = workspace.buffers.get(role)
    if held is None or sys.getrefcount(held) > 3:
        dtype = np.dtype(dtype)
        size = math.prod(workspace.shape) * dtype.itemsize
        raw = np.empty(size + _BUFFER_ALIGNMENT, np.uint8)
        start = -raw.ctypes.data % _BUFFER_ALIGNMENT
        held = workspace.buffers[role] = raw[start:start + size].view(dtype).reshape(workspace.shape)
    return held


def table_gradient(upstream, index, size: int, average: bool, parallel: bool):
    """(per table entry: the sum, or mean, of its members' upstream gradients; the upstream gradient, released
    once that sum has read it)."""
    upstream = tf.convert_to_tensor(upstream)
    flat_values, flat_index = tf.reshape(upstream, (-1,)), tf.reshape(index, (-1,))
    if parallel:
        sums = tf.numpy_function(functools.partial(_segment_sums, size=size, average=average),
                                 [flat_values, flat_index], tf.float32, stateful=False, name="clustered_table_gradient")
        sums.set_shape((size,))
    else:
        sums = tf.raw_ops.Bincount(arr=flat_index, size=size, weights=flat_values)
        if average:
            counts = tf.raw_ops.Bincount(arr=flat_index, size=size, weights=tf.zeros((0,), upstream.dtype))
            sums = sums / tf.maximum(counts, 1.0)
    with tf.control_dependencies([sums]):
        return sums, tf.identity(upstream)


def _segment_sums(values, index, *, size: int, average: bool):
    """Per flat table position, the sum (or mean) of `values` there (NumPy views of the step's tensors)."""
    sums = np.empty(size, np.float32)
    _numba_fast.segment_sums(values, index, average, sums)
    return sums


def with_variables(input_gradients, variables):
    # The lookup reads only non-trainable variables; should a tape watch them, they get no gradient.
    return (input_gradients, [None] * len(variables)) if variables else input_gradients


def _row_view(shape, channel_axis):
    """Broadcast shape of one value per codebook row (per channel along `channel_axis`, or one in all)."""
    view = [1] * len(shape)
    if channel_axis is not None:
        axis = channel_axis % len(shape)
        view[axis] = shape[axis]
    return view


def _channel_offsets(shape, channel_axis, k):
    view = _row_view(shape, channel_axis)
    axis = channel_axis % len(shape)
    return tf.reshape(tf.range(shape[axis], dtype=tf.int32) * k, view)


@tf.function(jit_compile=True, autograph=False)
def _search_into(table, keys, weights, kernel_cache, index_cache, channel_axis):
    """kernel_cache <- each weight's nearest table entry; index_cache <- its flat table position (one fused loop)."""
    shape = tuple(weights.shape)
    view = _row_view(shape, channel_axis)
    midpoints = (keys[:, 1:] + keys[:, :-1]) / 2.0
    value = tf.broadcast_to(tf.reshape(table[:, 0], view), shape)
    position = tf.zeros(shape, tf.int32)
    for j in range(int(midpoints.shape[1])):
        above = weights > tf.reshape(midpoints[:, j], view)
        value = tf.where(above, tf.reshape(table[:, j + 1], view), value)
        position += tf.cast(above, tf.int32)
    if channel_axis is not None:
        position += _channel_offsets(shape, channel_axis, int(table.shape[1]))
    kernel_cache.assign(value)
    index_cache.assign(tf.cast(position, index_cache.dtype))
    return tf.constant(True)


@tf.function(jit_compile=True, autograph=False)
def _gather_into(table, positions, kernel_cache, index_cache, channel_axis, k):
    """kernel_cache <- table[positions (+ channel * k)]; index_cache (where given) <- those flat positions."""
    index = tf.cast(positions, tf.int32)
    if channel_axis is not None:
        index = index + _channel_offsets(tuple(positions.shape), channel_axis, k)
    if index_cache is not None:
        index_cache.assign(tf.cast(index, index_cache.dtype))
    kernel_cache.assign(tf.gather(table, index))
    return tf.constant(True)
