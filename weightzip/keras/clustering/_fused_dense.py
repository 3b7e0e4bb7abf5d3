"""Which clustered Dense layers compute ``inputs @ table[index]`` as one custom-gradient function of their own:
the conditions on the layer and its clustered kernel, shared by the backends that have one; each adds its own
per-call checks.

- PyTorch and JAX, fixed assignment (:mod:`._torch_dense`, :mod:`._jax_dense`): the backward pass sums the weight
  gradient by index tile by tile (:func:`._numba_dense.outer_product_segment_sums`) and never forms it as a tensor.
  (PyTorch's function also serves the other layers of :func:`dense_state`, whatever their size and batch: a step
  that runs eagerly pays per autograd node and Keras op, and one function is fewer of both.)
- TensorFlow and JAX, fixed and every-step reassignment (:mod:`._tf_dense`, :mod:`._jax_dense`): the forward pass
  multiplies by a look-up table (:func:`._numba_lut.lut_product`) and never packs the kernel for a matmul (JAX: never
  forms it at all).

They serve the exact class ``keras.layers.Dense`` (no LoRA, quantization, kernel regulariser or constraint) with one
clustered kernel, per tensor, summed gradients, no preserved sparsity, float32 (:func:`dense_state`); the fused
products also need at least :data:`MIN_WEIGHTS` weights and at most 16 centroids (:func:`served_state`).
"""

from __future__ import annotations

import keras

from weightzip.core.options import GradientAggregation

# Rows of the input (its leading axes flattened) up to which the fused products cost less than the
# backend's own (one multiply-add per weight and row).
MAX_ROWS = 64
# Kernels of at least this many weights (below, the weight gradient is small and cheap to allocate).
MIN_WEIGHTS = 1 << 20


def served_state(wrapper, serves_entries, *, every_step: bool = False):
    """The clustered kernel's state of `wrapper` (a ``ClusterWeights``) where its layer takes the fused product
    (`serves_entries(k)`: whether the backend's kernels run for k centroids; `every_step`: whether the backend's
    product also serves every-step reassignment), else None."""
    state = dense_state(wrapper, every_step=every_step)
    return state if state is not None and takes_fused_product(state, serves_entries) else None


def takes_fused_product(state, serves_entries) -> bool:
    """Whether the kernel of a :func:`dense_state` is one the fused products serve: at least :data:`MIN_WEIGHTS`
    weights, and k centroids for which `serves_entries(k)`."""
    kernel = state.weight.variable
    return bool(serves_entries(int(state.centroids.shape[-1]))) and kernel.shape[0] * kernel.shape[1] >= MIN_WEIGHTS


def dense_state(wrapper, *, every_step: bool = False):
    """The clustered kernel's state of `wrapper` where its layer is one that a custom-gradient function can compute
    whatever its size: the exact ``keras.layers.Dense`` (no LoRA, quantization, kernel regulariser or constraint)
    with one clustered float32 kernel, per tensor, summed gradients, no preserved sparsity, with stored indices
    (or `every_step`); else None."""
    layer, states = wrapper.layer, wrapper._cluster_states
    if type(layer) is not keras.layers.Dense or len(states) != 1:
        return None
    state = states[0]
    if state.pulling_indices is None and not every_step:
        return None
    if (state.channel_axis is not None or state.sparsity_mask is not None or state.centroid_pin is not None
            or wrapper.params.cluster_gradient_aggregation is not GradientAggregation.SUM):
        return None
    if (getattr(layer, "lora_enabled", False) or layer.quantization_mode is not None
            or layer.kernel_regularizer is not None or layer.kernel_constraint is not None
            or state.weight.variable is not getattr(layer, "_kernel", None)):
        return None
    kernel = state.weight.variable
    if kernel.dtype != "float32" or state.centroids.dtype != "float32" or len(kernel.shape) != 2:
        return None
    return state


def biased_and_activated(layer, outputs):
    """``keras.layers.Dense.call``'s steps after the kernel product: the bias added, the activation applied."""
    if layer.bias is not None:
        outputs = keras.ops.add(outputs, layer.bias)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs
