"""A clustered Dense layer with fixed assignment on PyTorch (CPU): its matmul and centroid gradient as one
autograd function.

Through the general path (:mod:`._torch_lookup`), the layer runs in a stateless scope with its kernel read as a
looked-up tensor, and autograd computes the kernel's gradient ``x^T g`` into a new kernel-sized tensor at every
step (67 MB for 4096 x 4096: its page faults cost four times the product itself), then sums it by index. Here
the forward pass looks the kernel up from the stored indices into the weight's reused buffer and multiplies,
then adds the bias and applies the activation, as ``keras.layers.Dense.call``; the backward pass computes the input
gradient from the saved kernel and the centroid gradient either directly, tile by tile
(:func:`._numba_dense.outer_product_segment_sums`: a kernel of at least :data:`._fused_dense.MIN_WEIGHTS` weights,
at most :data:`._fused_dense.MAX_ROWS` input rows, where numba's vector products run), or as ``x^T g`` into the
weight's reused buffer summed by index (every other size and batch). The gradients are those of the general
path (float32 sums in another order). On LeNet-300-100 (batch 128), one function per layer in place of the
general path's look-up function, stateless scope, Keras matmul and their autograd nodes is about 0.15 ms less
Python per layer and step.

:func:`fused_call` serves the layers of :func:`._fused_dense.dense_state` (fixed assignment) on a float32 CPU input
outside torch.compile and any stateless scope. It runs the layer through
:func:`weightzip.keras._direct_call.direct_call` (declining where that would); any other call takes the general
path.
"""

from __future__ import annotations

import functools

import keras
import numpy as np

from weightzip.core.errors import InvalidWeightsError
from weightzip.keras._compat import get_stateless_scope
from weightzip.keras._direct_call import DECLINED, direct_call
from weightzip.keras.clustering import _fused_dense, _numba_dense, _numba_fast, _torch_lookup


def fused_call(wrapper, inputs, args: tuple, kwargs: dict):
    """The output of `wrapper`'s Dense layer on `inputs` by :func:`_function`, or :data:`DECLINED`."""
    state = _served_state(wrapper, inputs)
    if state is None:
        return DECLINED
    layer = wrapper.layer
    return direct_call(layer, inputs, args, kwargs,
                       call=lambda inputs, **_: _dense_output(layer, state, inputs))


def _served_state(wrapper, inputs):
    """The clustered kernel's state where :func:`fused_call` serves this call, else None."""
    if keras.backend.backend() != "torch":
        return None
    import torch

    if torch.compiler.is_compiling() or get_stateless_scope() is not None:
        return None
    state = _fused_dense.dense_state(wrapper)
    if state is None:
        return None
    kernel = state.weight.variable
    if (not isinstance(inputs, torch.Tensor) or inputs.device.type != "cpu" or inputs.dtype != torch.float32
            or inputs.ndim < 2 or inputs.shape[-1] != kernel.shape[0] or inputs.numel() == 0):
        return None
    return state if _torch_lookup.variable_tensor(state.centroids).device.type == "cpu" else None


def _dense_output(layer, state, inputs):
    """``keras.layers.Dense.call`` with the kernel product by :func:`_function`."""
    table = _torch_lookup.variable_tensor(state.centroids)
    stored = _torch_lookup.variable_tensor(state.pulling_indices)
    index = _torch_lookup.compact_index(stored, table, None)
    scratch = _torch_lookup.scratch_for(stored)
    units = int(state.weight.variable.shape[1])
    flat = inputs.reshape(-1, inputs.shape[-1])
    tiled = _fused_dense.takes_fused_product(state, _numba_dense.serves)  # (with at most MAX_ROWS rows: the tiles)
    x = _function().apply(flat, table, index, scratch, tiled).reshape(*inputs.shape[:-1], units)
    return _fused_dense.biased_and_activated(layer, x)


@functools.cache
def _function():
    import torch

    class ClusteredDense(torch.autograd.Function):
        """``inputs @ table[index]`` (the kernel: rows x units), differentiated in `inputs` and `table`."""

        @staticmethod
        def forward(ctx, inputs, table, index, scratch, tiled):
            index, index_array = index
            flat_table = table.detach().reshape(-1)
            kernel, kernel_array = _torch_lookup.output_buffer(scratch, "kernel", index.numel(), table.dtype)
            if _numba_fast.look_up_checked(flat_table.contiguous().numpy(), index_array, kernel_array):
                raise InvalidWeightsError(f"pulling indices out of range for a codebook of {table.shape[-1]} entries")
            kernel = kernel.view(inputs.shape[1], -1)
            ctx.save_for_backward(inputs, kernel, index)  # (marks the kernel buffer in use)
            ctx.index_array = index_array.reshape(kernel.shape)
            ctx.table_shape = tuple(table.shape)
            ctx.scratch, ctx.tiled = scratch, tiled
            return inputs @ kernel

        @staticmethod
        def backward(ctx, upstream):
            inputs, kernel, _ = ctx.saved_tensors
            input_gradient = upstream @ kernel.T if ctx.needs_input_grad[0] else None
            table_gradient = None
            if ctx.needs_input_grad[1]:
                table_gradient = _centroid_gradient(inputs, upstream, ctx.index_array, ctx.table_shape, ctx.scratch,
                                                    ctx.tiled)
            return input_gradient, table_gradient, None, None, None

    return ClusteredDense


def _centroid_gradient(inputs, upstream, index_array, table_shape, scratch, tiled: bool):
    """Per centroid, the sum of ``(inputs^T upstream)`` over its members: tile by tile where
    :func:`._numba_dense.outer_product_segment_sums` serves (`tiled`: the layer takes the fused products, and at most
    :data:`._fused_dense.MAX_ROWS` rows), else summed from the product in `scratch`'s buffer."""
    import torch

    gradient = torch.empty(table_shape, dtype=torch.float32)
    sums = gradient.numpy().reshape(-1)
    if tiled and inputs.shape[0] <= _fused_dense.MAX_ROWS and index_array.dtype == np.uint8:
        _numba_dense.outer_product_segment_sums(inputs.detach().T.contiguous().numpy(),
                                                upstream.detach().contiguous().numpy(), index_array, sums)
        return gradient
    weights_gradient, weights_array = _torch_lookup.output_buffer(scratch, "weight gradient", index_array.size,
                                                                  torch.float32)
    torch.mm(inputs.detach().T, upstream.detach(), out=weights_gradient.view(index_array.shape))
    _numba_fast.segment_sums(weights_array, index_array.reshape(-1), False, sums)
    return gradient
