"""Fake quantisation in ``keras.ops`` (any backend), with straight-through gradients.

The forward pass computes exactly what the int8 TFLite model will compute; the backward pass treats rounding
as the identity (the straight-through estimator of Bengio et al. 2013, as TFMOT and the TFLite QAT
recipe do), so training adapts the float weights to the int8 grid.

- weights: symmetric, per output channel, narrow range [-127, 127], scale ``max|w_c| / 127`` — the scheme
  TFLite's converter applies to weights, so the converter reproduces the trained int8 values exactly.
- activations: asymmetric int8 over a tracked range [min, max] that always includes 0 (zero exactly
  representable, as TFLite requires).
"""

from __future__ import annotations

from keras import ops

_EPSILON = 1e-12


def symmetric_weight_scale(weights, reduce_axes, num_bits: int = 8):
    """Per-channel scale ``max|w| / (2^(bits-1) - 1)`` over `reduce_axes` (kept as size-1 axes)."""
    levels = float(2 ** (num_bits - 1) - 1)
    magnitude = ops.max(ops.abs(weights), axis=tuple(reduce_axes), keepdims=True)
    return ops.maximum(magnitude, _EPSILON) / levels


def fake_quantize_weights(weights, reduce_axes, num_bits: int = 8):
    """`weights` rounded to the symmetric per-channel int grid, with an identity gradient.

    reduce_axes: the axes that share a scale (all but the output-channel axis: ``(0,)`` for a Dense
    kernel, ``(0, 1, 2)`` for a Conv2D kernel, ``(0, 1)`` for a DepthwiseConv2D kernel).
    """
    levels = float(2 ** (num_bits - 1) - 1)
    scale = ops.stop_gradient(symmetric_weight_scale(weights, reduce_axes, num_bits))
    quantized = ops.clip(ops.round(weights / scale), -levels, levels) * scale
    return weights + ops.stop_gradient(quantized - weights)


def weight_integers(weights, reduce_axes, num_bits: int = 8):
    """The integers the fake-quantised `weights` stand for (float tensor holding whole numbers)."""
    levels = float(2 ** (num_bits - 1) - 1)
    scale = symmetric_weight_scale(weights, reduce_axes, num_bits)
    return ops.clip(ops.round(weights / scale), -levels, levels)


def fake_quantize_activations(values, minimum, maximum, num_bits: int = 8):
    """`values` through asymmetric int quantisation over [minimum, maximum] (widened to contain 0).

    Gradient: identity inside the range, zero outside (values clipped by the int range do not move it).
    """
    steps = float(2**num_bits - 1)
    low = ops.minimum(minimum, 0.0)
    high = ops.maximum(maximum, 0.0)
    scale = ops.maximum((high - low) / steps, _EPSILON)
    zero_point = ops.round(-low / scale)
    integers = ops.clip(ops.round(values / scale) + zero_point, 0.0, steps)
    dequantized = (integers - zero_point) * scale
    clipped = ops.clip(values, low, high)
    return clipped + ops.stop_gradient(dequantized - clipped)
