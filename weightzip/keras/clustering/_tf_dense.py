"""A large clustered Dense layer in a TensorFlow training step: its product by a look-up table, the kernel never
packed for a matmul.

Through the general path (:mod:`._tf_lookup`) the forward pass first writes the whole kernel into the workspace
(with fixed assignment XLA's gather, 8.9 ms for 4096 x 4096; every step numba's search) and TensorFlow's MatMul
then multiplies by it: 19-21 ms at batch 32, since oneDNN packs the 67 MB weight matrix again at every call,
more than the weight gradient's product of the same size (8-9 ms). Here the forward pass is
:func:`._numba_lut.lut_product` (``inputs @ table[index]`` from the one-byte indices, 9-10 ms), called through
``tf.numpy_function``: with fixed assignment on the stored indices (the kernel is not written at all), every step
on the indices of numba's search (:func:`._tf_lookup.numba_search`, which writes the kernel too). The backward
pass is the general path's: the centroid gradient is TensorFlow's ``inputs^T upstream`` summed by index
(:func:`._tf_lookup.table_gradient`), which every step also passes straight through to the original weights, and
the input gradient is ``upstream @ kernel^T``; with fixed assignment that kernel is looked up into the
workspace's buffer only when a layer before needs the input gradient (a stateless call that TensorFlow prunes
otherwise, as for a first layer). Bias and activation as ``keras.layers.Dense.call``. The results are the
general path's up to float32 rounding (sums in another order).

:func:`fused_call` serves the layers of :func:`._fused_dense.served_state` with one-byte indices (stored, or the
workspace's for numba's search) where numba's vector products run (:func:`._numba_lut.serves`), in a step where
the general path would use the workspace (:func:`._tf_lookup.applies`: a recorded, uncompiled TensorFlow step), on
a float32 input of at most :data:`._fused_dense.MAX_ROWS` rows (where the traced shape leaves the rows open, a
larger batch takes ``inputs @ kernel`` when the step runs). It runs the
layer through :func:`weightzip.keras._direct_call.direct_call` (declining where that would); any other call takes
the general path.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from weightzip.core.errors import InvalidWeightsError
from weightzip.keras._direct_call import DECLINED, direct_call
from weightzip.keras.clustering import _fused_dense, _numba_fast, _numba_lut, _tf_lookup
from weightzip.keras.clustering.ops import sorted_rows


def fused_call(wrapper, inputs, args: tuple, kwargs: dict):
    """The output of `wrapper`'s Dense layer on `inputs` by the look-up product, or :data:`DECLINED`."""
    state = _fused_dense.served_state(wrapper, _numba_lut.serves, every_step=True)
    if state is None or not _serves_call(state, inputs):
        return DECLINED
    layer = wrapper.layer
    return direct_call(layer, inputs, args, kwargs, call=lambda inputs, **_: _dense_output(layer, state, inputs))


def _serves_call(state, inputs) -> bool:
    """Whether this call (its input, the step being traced) takes the look-up product."""
    kernel, workspace = state.weight.variable, state.workspace
    searched = state.pulling_indices is None
    if workspace is None or (searched and workspace.index_dtype != np.uint8):
        return False
    if not searched and state.pulling_indices.dtype != "uint8":
        return False
    if searched and not _tf_lookup.numba_searches(workspace):
        return False
    if not tf.is_tensor(inputs) or inputs.dtype != tf.float32 or inputs.shape.rank is None or inputs.shape.rank < 2:
        return False
    if inputs.shape[-1] != kernel.shape[0]:
        return False
    rows = math.prod(inputs.shape[:-1]) if inputs.shape[:-1].is_fully_defined() else None
    if rows is not None and not 1 <= rows <= _fused_dense.MAX_ROWS:
        return False
    flat_table = tf.reshape(state.centroids, (-1,))
    return _tf_lookup.applies(workspace, kernel, flat_table, searched=searched, k=int(flat_table.shape[0]))


def _dense_output(layer, state, inputs):
    """``keras.layers.Dense.call`` with the kernel product by :func:`_indexed_product` (fixed assignment) or
    :func:`_searched_product` (every step)."""
    inner, units = (int(size) for size in state.weight.variable.shape)
    flat = tf.reshape(inputs, (-1, inner))
    if state.pulling_indices is None:
        outputs = _searched_product(state, flat)
    else:
        outputs = _indexed_product(state, flat)
    outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [units]], axis=0))
    outputs.set_shape(inputs.shape[:-1].concatenate([units]))
    if layer.bias is not None:
        outputs = tf.nn.bias_add(outputs, layer.bias)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


def _indexed_product(state, flat_inputs):
    """``flat_inputs @ table[stored indices]``, differentiated in the inputs and the table (fixed assignment)."""
    workspace = state.workspace
    index = tf.convert_to_tensor(state.pulling_indices)
    size = int(state.centroids.shape[-1])

    @tf.custom_gradient
    def product(inputs, table):
        def kernel():
            looked_up = tf.numpy_function(lambda table, index: _kernel(workspace, table, index), [table, index],
                                          tf.float32, stateful=False, name="clustered_dense_kernel")
            looked_up.set_shape(workspace.shape)
            return looked_up

        def gradient(upstream, variables=None):
            sums = _tf_lookup.table_gradient(tf.matmul(inputs, upstream, transpose_a=True), index, size, False,
                                             workspace.parallel_sums)[0]
            return _tf_lookup.with_variables((tf.matmul(upstream, kernel(), transpose_b=True), sums), variables)

        return _outputs(inputs, table, index, kernel), gradient

    return product(flat_inputs, tf.reshape(state.centroids, (-1,)))


def _searched_product(state, flat_inputs):
    """``flat_inputs @ table[nearest centroid of each weight]``, differentiated in the inputs, the table and
    (straight through) the weights: every-step reassignment, the search by :func:`._tf_lookup.numba_search`."""
    workspace = state.workspace
    codebook = tf.stop_gradient(tf.reshape(state.centroids, (1, -1)))
    flat_table, sorted_keys = sorted_rows(tf.reshape(state.centroids, (-1,)), codebook)
    keys = tf.stop_gradient(sorted_keys)
    size = int(flat_table.shape[0])

    @tf.custom_gradient
    def product(inputs, table, weights):
        kernel, index = _tf_lookup.numba_search(workspace, table, keys, weights, None)

        def gradient(upstream, variables=None):
            sums, weight_gradient = _tf_lookup.table_gradient(tf.matmul(inputs, upstream, transpose_a=True), index,
                                                              size, False, workspace.parallel_sums)
            input_gradient = tf.matmul(upstream, kernel, transpose_b=True)
            return _tf_lookup.with_variables((input_gradient, sums, weight_gradient), variables)

        return _outputs(inputs, table, index, lambda: kernel), gradient

    return product(flat_inputs, flat_table, tf.convert_to_tensor(state.weight.variable))


def _outputs(inputs, table, index, kernel):
    """``inputs @ table[index]`` by the look-up product; where the traced shape leaves the rows open, by
    TensorFlow's ``inputs @ kernel()`` for a batch of more than MAX_ROWS rows (the look-up product costs more there:
    4096 x 4096, 256 rows, 73 against 52 ms)."""

    def look_up():
        outputs = tf.numpy_function(_product_array, [inputs, table, index], tf.float32, stateful=False,
                                    name="clustered_dense_product")
        outputs.set_shape((inputs.shape[0], index.shape[1]))
        return outputs

    if inputs.shape[0] is not None:  # (served only up to MAX_ROWS rows)
        return look_up()
    return tf.cond(tf.shape(inputs)[0] <= _fused_dense.MAX_ROWS, look_up, lambda: tf.matmul(inputs, kernel()))


def _product_array(inputs, table, index):
    outputs = np.empty((inputs.shape[0], index.shape[1]), np.float32)
    if _numba_lut.lut_product(np.ascontiguousarray(inputs), table, index, outputs) >= table.shape[0]:
        _refuse_indices(table)
    return outputs


def _kernel(workspace, table, index):
    """table[index], written into the workspace's kernel buffer (:func:`._tf_lookup.output_buffer`)."""
    kernel = _tf_lookup.output_buffer(workspace, "kernel", np.float32)
    if _numba_fast.look_up_checked(table, index.reshape(-1), kernel.reshape(-1)):
        _refuse_indices(table)
    return kernel


def _refuse_indices(table):
    raise InvalidWeightsError(f"pulling indices out of range for a codebook of {table.shape[0]} entries")
