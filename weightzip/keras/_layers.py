"""The one table of Keras layer kinds: which weights a layer has, their axes, and what kind of layer it is.

Every place in weightzip that decides something from a layer's type reads it here: which kernels
clustering and pruning target (:mod:`weightzip.keras.clustering.registry`), whether a layer counts
as a convolution (``conv_sparsity``/``conv_clusters`` in the pipeline and the post-training path),
and the scale layout of quantisation-aware training. One row per family of layer types, in the
shape of PyTorch's ``weightzip.torch.targets.weights_of``: ``(weight name, channel axis, input axis)``
plus ``is_convolution`` and ``qat_layout``. Matching is by ``isinstance`` (subclasses of the built-ins
match), first row first, so subclasses come before their bases.

Axes: ``channel_axis`` is the output-channel axis (one codebook per index along it with
``per_channel``); ``input_axis`` is the axis the layer contracts with its input (N:M pruning groups
along it). Dense and Conv* kernels are ``(..., in, out)``, EinsumDense kernels ``(in, ...)``; Conv*Transpose kernels are
``(..., out, in)``; depthwise kernels ``(..., in_channels, depth_multiplier)`` have their input channel
on -2 and no contraction over channels (each filter sees one input channel: its spatial axes are
what it contracts; -2 is given as the channel axis that groups each input channel's filters).

A convolution is a layer whose kernel has spatial axes (rank >= 3): Conv*, Conv*Transpose,
DepthwiseConv*, SeparableConv* and the ConvLSTM layers, the same rule as PyTorch's ``ndim >= 3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

layers = keras.layers

LAST = -1
SECOND_TO_LAST = -2
EINSUM_INPUT_AXIS = 0  # "ab,bcd->acd"-style equations (attention projections) contract the input with axis 0


@dataclass(frozen=True)
class KernelSpec:
    """One weight of a layer kind: its attribute name and axes."""

    name: str
    channel_axis: int
    input_axis: int


@dataclass(frozen=True)
class LayerSpec:
    """One row of the table: the layer types it covers and what weightzip knows about them.

    qat_layout: the per-channel scale layout of quantisation-aware training (``"all_but_last"``: one
        scale per output channel; ``"spatial"``: one per depthwise filter), None where QAT does not apply.
    """

    types: tuple[type, ...]
    kernels: tuple[KernelSpec, ...]
    is_convolution: bool
    qat_layout: str | None = None


def _types(*names: str) -> tuple[type, ...]:
    return tuple(getattr(layers, name) for name in names if hasattr(layers, name))


LAYER_TABLE: tuple[LayerSpec, ...] = (
    LayerSpec(_types("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"),
              (KernelSpec("kernel", SECOND_TO_LAST, LAST),), is_convolution=True),
    # Keras 3 names the depthwise kernel "kernel".
    LayerSpec(_types("DepthwiseConv1D", "DepthwiseConv2D"),
              (KernelSpec("kernel", SECOND_TO_LAST, SECOND_TO_LAST),), is_convolution=True, qat_layout="spatial"),
    LayerSpec(_types("SeparableConv1D", "SeparableConv2D"),
              (KernelSpec("depthwise_kernel", SECOND_TO_LAST, SECOND_TO_LAST),
               KernelSpec("pointwise_kernel", LAST, SECOND_TO_LAST)), is_convolution=True),
    LayerSpec(_types("Conv1D", "Conv2D", "Conv3D"),
              (KernelSpec("kernel", LAST, SECOND_TO_LAST),), is_convolution=True, qat_layout="all_but_last"),
    LayerSpec(_types("Dense"), (KernelSpec("kernel", LAST, SECOND_TO_LAST),), is_convolution=False,
              qat_layout="all_but_last"),
    LayerSpec(_types("EinsumDense"), (KernelSpec("kernel", LAST, EINSUM_INPUT_AXIS),), is_convolution=False),
    LayerSpec(_types("Embedding"), (KernelSpec("embeddings", LAST, SECOND_TO_LAST),), is_convolution=False),
)

# Recurrent layers whose cell kernels are convolutions (RNN subclasses: their weights come from their cells).
CONVOLUTIONAL_RECURRENT_TYPES: tuple[type, ...] = _types("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


def layer_spec(layer) -> LayerSpec | None:
    """The table row of `layer`'s type, or None for a type outside the table."""
    for spec in LAYER_TABLE:
        if isinstance(layer, spec.types):
            return spec
    return None


def is_convolution(layer) -> bool:
    """Whether `layer` is a convolution (its kernels have spatial axes); wrappers are looked through."""
    while isinstance(layer, layers.Wrapper) and not isinstance(layer, layers.Bidirectional):
        layer = layer.layer
    if isinstance(layer, layers.Bidirectional):
        layer = layer.forward_layer
    spec = layer_spec(layer)
    if spec is not None:
        return spec.is_convolution
    return isinstance(layer, CONVOLUTIONAL_RECURRENT_TYPES)


def qat_layout(layer) -> str | None:
    """The quantisation-aware-training scale layout of `layer`, or None where QAT does not apply."""
    spec = layer_spec(layer)
    return None if spec is None else spec.qat_layout


def convolution_types() -> tuple[type, ...]:
    """Every Keras layer type counted as a convolution (for tests and documentation)."""
    found = [t for spec in LAYER_TABLE if spec.is_convolution for t in spec.types]
    return tuple(found) + CONVOLUTIONAL_RECURRENT_TYPES


def qat_layer_names() -> list[str]:
    """Names of the layer types quantisation-aware training supports (for error messages)."""
    return sorted(t.__name__ for spec in LAYER_TABLE if spec.qat_layout for t in spec.types)
