"""Input Hessians ``E[x xᵀ]`` of a Keras model's Dense / Conv1D / Conv2D / DepthwiseConv2D kernels.

The Keras counterpart of :func:`weightzip.torch.calibration.input_hessians`, for sequential error
compensation (:mod:`weightzip.core.compensation`): each layer's call is wrapped for one eager pass per
batch (as :func:`weightzip.keras.pipeline.calibration.input_second_moments` does), its input turned into the
vectors the kernel multiplies (im2col patches for convolutions, channels last, "same" padding as Keras
pads), and ``Σ x xᵀ`` accumulated per group (a depthwise convolution has one small matrix per channel).
Other kernels (attention projections, recurrent, transposed and 3-D convolutions) get none.
"""

from __future__ import annotations

from typing import Iterable

import keras
import numpy as np

from weightzip.core.compensation import MAX_COLUMNS, InputHessian, PlanCompensation
from weightzip.keras.pipeline._inputs import run_model
from weightzip.keras.pipeline.calibration import ModelWeight, model_weights


def _layout(layer, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The axes permutation giving the kernel's (rows, columns) matrix, or None when not measured."""
    layers = keras.layers
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    if type(layer) is layers.Dense or (isinstance(layer, layers.Dense) and len(shape) == 2):
        return (1, 0)
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return (len(shape) - 2, len(shape) - 1) + tuple(range(len(shape) - 2))  # (in, mult, spatial...)
    if isinstance(layer, (layers.Conv1D, layers.Conv2D)) and not isinstance(
            layer, (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.SeparableConv1D, layers.SeparableConv2D)):
        if getattr(layer, "groups", 1) != 1:
            return None
        return (len(shape) - 1,) + tuple(range(len(shape) - 1))  # (out, spatial..., in)
    return None


def _patches(layer, values: np.ndarray, depthwise: bool) -> np.ndarray:
    """(vectors, groups, n): the inputs each output of `layer` sees, in the kernel matrix's column order."""
    if isinstance(layer, keras.layers.Dense):
        return values.reshape(-1, 1, values.shape[-1])
    spatial = len(layer.kernel_size)
    if spatial == 1:
        values = values[:, :, None, :]
    kernel = tuple(layer.kernel_size) + (1,) * (2 - spatial)
    strides = tuple(layer.strides) + (1,) * (2 - spatial)
    dilation = tuple(layer.dilation_rate) + (1,) * (2 - spatial)
    if layer.padding == "same":
        pads = []
        for size, k, s, d in zip(values.shape[1:3], kernel, strides, dilation):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        values = np.pad(values, [(0, 0), pads[0], pads[1], (0, 0)])
    elif layer.padding == "causal":
        values = np.pad(values, [(0, 0), ((kernel[0] - 1) * dilation[0], 0), (0, 0), (0, 0)])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    windows = np.lib.stride_tricks.sliding_window_view(values, span, axis=(1, 2))
    windows = windows[:, ::strides[0], ::strides[1], :, ::dilation[0], ::dilation[1]]  # (B, H', W', C, kh, kw)
    channels = windows.shape[3]
    if depthwise:
        return windows.reshape(-1, channels, kernel[0] * kernel[1])
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 1, kernel[0] * kernel[1] * channels)


def input_hessians(model: keras.Model, batches: Iterable, *, weights: list[ModelWeight] | None = None,
                   chunk_elements: int = 1 << 24) -> dict[str, InputHessian]:
    """variable path -> :class:`InputHessian` of each Dense / Conv1D / Conv2D / DepthwiseConv1D/2D kernel
    (channels last, at most MAX_COLUMNS inputs per output); other kernels are absent."""
    weights = model_weights(model) if weights is None else weights
    measured = {}
    for weight in weights:
        shape = tuple(weight.weight.variable.shape)
        layout = _layout(weight.layer, shape)
        if layout is None or weight.input_layer is not weight.layer or weight.weight.name not in ("kernel",
                                                                                                    "depthwise_kernel"):
            continue
        depthwise = isinstance(weight.layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D))
        columns = int(np.prod(shape)) // (shape[-2] * shape[-1]) if depthwise else int(np.prod(shape)) // shape[-1]
        if columns <= MAX_COLUMNS:
            measured[id(weight.layer)] = (weight, layout, depthwise)
    totals: dict[int, list] = {}
    originals = {}

    def recorder(key, layer, depthwise, call):
        def recording_call(*args, **kwargs):
            inputs = args[0] if args else next(iter(kwargs.values()))
            values = keras.ops.convert_to_numpy(inputs).astype(np.float32)
            per_sample = max(1, values[0].size * int(np.prod(getattr(layer, "kernel_size", (1,)))))
            step = max(1, chunk_elements // per_sample)
            for start in range(0, values.shape[0], step):
                patches = _patches(layer, values[start:start + step], depthwise).transpose(1, 0, 2)
                product = np.matmul(patches.transpose(0, 2, 1), patches).astype(np.float64)
                entry = totals.setdefault(key, [0.0, 0])
                entry[0] = entry[0] + product
                entry[1] += patches.shape[1]
            return call(*args, **kwargs)
        return recording_call

    for key, (weight, _, depthwise) in measured.items():
        layer = weight.layer
        originals[key] = layer.__dict__.get("call")
        object.__setattr__(layer, "call", recorder(key, layer, depthwise, layer.call))
    try:
        for batch in batches:
            run_model(model, batch)
    finally:
        for key, (weight, _, _) in measured.items():
            if originals[key] is None:
                object.__delattr__(weight.layer, "call")
            else:
                object.__setattr__(weight.layer, "call", originals[key])
    found = {}
    for key, (weight, layout, _) in measured.items():
        entry = totals.get(key)
        if entry is None or not entry[1]:
            continue
        hessian = InputHessian(entry[0] / entry[1], layout, entry[1])
        if hessian.fits(tuple(weight.weight.variable.shape)):
            found[weight.path] = hessian
    return found


def compensation_step(model: keras.Model, batches, weights: list[ModelWeight], tensors, paths: dict[str, str]):
    """The plan -> plan step of error compensation (:class:`weightzip.core.compensation.PlanCompensation`, with
    ``rescore``: the allocation is also done by the errors compensation leaves and the plan measured better on the
    fit inputs is kept) with the kernels' input Hessians measured once on `batches` (`paths`: the model's variable
    paths -> tensor names)."""
    hessians = {paths[path]: h for path, h in input_hessians(model, batches, weights=weights).items()}
    return PlanCompensation({t.name: t for t in tensors}, hessians)  # memoised across plans


__all__ = ["compensation_step", "input_hessians"]
