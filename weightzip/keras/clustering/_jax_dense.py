"""A large clustered Dense layer in a JAX step (CPU): its product by a look-up table, no kernel-sized buffer in the
forward pass, and with fixed assignment none in the backward pass either.

Through the general path (:mod:`._jax_lookup`) the forward pass writes the clustered kernel into a new XLA buffer
(67 MB for 4096 x 4096: on two AMD EPYC cores its page faults made the 7 ms look-up take 37 ms) and multiplies by it
(25-31 ms at batch 32); the backward pass computes the kernel's gradient ``inputs^T upstream`` (40-47 ms) and the
FFI segment sums read it back by index. Here, as one custom-VJP function over XLA FFI targets:

- the output is :func:`._numba_lut.lut_product` (``inputs @ table[index]`` from one-byte indices, 11-12 ms): with
  fixed assignment on the stored indices, every step on the indices of the search without the kernel
  (:func:`._jax_lookup.nearest_index`);
- with fixed assignment the centroid gradient comes tile by tile from registers
  (:func:`._numba_dense.outer_product_segment_sums`), the weight gradient never formed; every step it is XLA's
  ``inputs^T upstream`` (passed straight through to the original weights) summed by index, as the general path;
- the input gradient is ``upstream @ kernel^T`` with the kernel looked up in the backward pass, which XLA drops
  for a first layer.

Bias and activation as ``keras.layers.Dense.call``. The results are the general path's up to float32 rounding
(sums in another order); an index outside the codebook makes the output NaN and adds to no centroid (XLA cannot
raise).

:func:`fused_call` serves the layers of :func:`._fused_dense.served_state` (stored indices of one byte) where the
FFI targets run (:func:`._jax_lookup.runs_here`) and numba's vector products do, on a float32 input of at most
:data:`._fused_dense.MAX_ROWS` rows. It runs the layer through :func:`weightzip.keras._direct_call.direct_call`
(declining where that would); any other call takes the general path.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from weightzip.keras._direct_call import DECLINED, direct_call
from weightzip.keras.clustering import _fused_dense, _jax_lookup, _numba_dense, _numba_lut, _xla_ffi
from weightzip.keras.clustering._xla_ffi import (
    HANDLER_SIGNATURE,
    flat_argument,
    flat_result,
    matrix_argument,
    matrix_result,
)
from weightzip.keras.clustering.ops import sorted_rows

_PRODUCT_TARGET = "weightzip_cluster_lut_product_uint8"
_GRADIENT_TARGET = "weightzip_cluster_outer_product_segment_sums_uint8"


def fused_call(wrapper, inputs, args: tuple, kwargs: dict):
    """The output of `wrapper`'s Dense layer on `inputs` by :func:`_product`, or :data:`DECLINED`."""
    state = _served_state(wrapper, inputs)
    if state is None:
        return DECLINED
    layer = wrapper.layer
    return direct_call(layer, inputs, args, kwargs, call=lambda inputs, **_: _dense_output(layer, state, inputs))


def _served_state(wrapper, inputs):
    """The clustered kernel's state where :func:`fused_call` serves this call, else None."""
    if not _jax_lookup.runs_here():
        return None
    state = _fused_dense.served_state(wrapper, _numba_dense.serves, every_step=True)
    if state is None or (state.pulling_indices is not None and state.pulling_indices.dtype != "uint8"):
        return None
    import jax

    kernel = state.weight.variable
    if not isinstance(inputs, jax.Array) or inputs.dtype != np.float32 or inputs.ndim < 2:
        return None
    if inputs.shape[-1] != kernel.shape[0]:
        return None
    return state if 1 <= math.prod(inputs.shape[:-1]) <= _fused_dense.MAX_ROWS else None


def _dense_output(layer, state, inputs):
    """``keras.layers.Dense.call`` with the kernel product by :func:`_product` (fixed assignment) or
    :func:`_searched_product` (every step)."""
    import jax
    import jax.numpy as jnp

    inner, units = (int(size) for size in state.weight.variable.shape)
    table = jnp.reshape(state.centroids.value, (-1,))
    flat = jnp.reshape(inputs, (-1, inner))
    if state.pulling_indices is None:
        table, sorted_keys = sorted_rows(table, jax.lax.stop_gradient(jnp.reshape(table, (1, -1))))
        x = _searched_product()(flat, table, _jax_lookup.midpoints_between(sorted_keys), state.weight.variable.value)
    else:
        x = _product()(flat, table, state.pulling_indices.value)
    x = jnp.reshape(x, (*inputs.shape[:-1], units))
    return _fused_dense.biased_and_activated(layer, x)


@functools.cache
def _product():
    """``inputs @ table[index]``, differentiated in `inputs` and `table` (registers the FFI targets first)."""
    import jax
    import jax.numpy as jnp

    _xla_ffi.register(_PRODUCT_TARGET, _lut_product)
    _xla_ffi.register(_GRADIENT_TARGET, _outer_product_segment_sums)

    @jax.custom_vjp
    def product(inputs, table, index):
        call = jax.ffi.ffi_call(_PRODUCT_TARGET, jax.ShapeDtypeStruct((inputs.shape[0], index.shape[1]), inputs.dtype))
        return call(inputs, table, index, jnp.full((1,), numba.get_num_threads(), jnp.int32))

    def product_forward(inputs, table, index):
        return product(inputs, table, index), (inputs, table, index)

    def product_backward(residuals, upstream):
        inputs, table, index = residuals
        call = jax.ffi.ffi_call(_GRADIENT_TARGET, jax.ShapeDtypeStruct(table.shape, table.dtype))
        table_gradient = call(jnp.transpose(inputs), upstream, index)
        return _input_gradient(upstream, table, index), table_gradient, None

    product.defvjp(product_forward, product_backward)
    return product


@functools.cache
def _searched_product():
    """``inputs @ table[nearest entry to each weight]``, differentiated in `inputs`, `table` and, straight through,
    `weights` (every-step reassignment; `table` ascending, `midpoints` ``(1, k - 1)`` between its entries)."""
    import jax
    import jax.numpy as jnp

    product = _product()

    @jax.custom_vjp
    def searched(inputs, table, midpoints, weights):
        return product(inputs, table, _jax_lookup.nearest_index(table, midpoints, weights))

    def searched_forward(inputs, table, midpoints, weights):
        index = _jax_lookup.nearest_index(table, midpoints, weights)
        return product(inputs, table, index), (inputs, table, index, jnp.zeros_like(midpoints))

    def searched_backward(residuals, upstream):
        inputs, table, index, midpoint_zeros = residuals
        weight_gradient = jnp.transpose(inputs) @ upstream
        table_gradient = _jax_lookup.table_gradient(jnp.reshape(weight_gradient, (-1,)), jnp.reshape(index, (-1,)),
                                                    table.shape[0], False)
        return _input_gradient(upstream, table, index), table_gradient, midpoint_zeros, weight_gradient

    searched.defvjp(searched_forward, searched_backward)
    return searched


def _input_gradient(upstream, table, index):
    """``upstream @ table[index]^T``, the kernel looked up in the backward pass (XLA drops both where no layer before
    needs the input gradient)."""
    import jax.numpy as jnp

    kernel = _jax_lookup.indexed_lookup(table, jnp.reshape(index, (-1,)), average_gradient=False)
    return upstream @ jnp.reshape(kernel, index.shape).T


# numba caches these handlers keyed on this file only: see the note above _jax_lookup's handlers.
@numba.cfunc(HANDLER_SIGNATURE, cache=True)
def _lut_product(frame):
    if _xla_ffi.should_execute(frame):
        table = flat_argument(frame, 1, np.float32)
        out = matrix_result(frame, 0, np.float32)
        largest = _numba_lut.lut_product_parts(matrix_argument(frame, 0, np.float32), table,
                                               matrix_argument(frame, 2, np.uint8), out,
                                               flat_argument(frame, 3, np.int32)[0])
        if largest >= table.shape[0]:
            out[:] = np.nan
    return _xla_ffi.success()


@numba.cfunc(HANDLER_SIGNATURE, cache=True)
def _outer_product_segment_sums(frame):
    if _xla_ffi.should_execute(frame):
        _numba_dense.outer_product_segment_sums(
            matrix_argument(frame, 0, np.float32), matrix_argument(frame, 1, np.float32),
            matrix_argument(frame, 2, np.uint8), flat_result(frame, 0, np.float32))
    return _xla_ffi.success()
