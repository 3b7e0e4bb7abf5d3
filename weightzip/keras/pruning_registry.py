"""Which weights of which Keras layers are compressed, and how a wrapper feeds a layer substitute weights.

Shared by the pruning and quantization wrappers:

- :func:`compressible_weight_names`: the attribute names of a layer's kernels (``("kernel",)`` for Dense and
  convolutions, ``("depthwise_kernel",)`` for depthwise convolutions, ...). Biases and normalisation
  parameters are never pruned (they are few and sensitive), as in TFMOT.
- :func:`substituted_weights`: during a wrapper's ``call``, make the wrapped layer read a computed tensor
  (masked, fake-quantised, gathered from centroids) in place of its variable, without assigning to the
  variable. Gradients then flow through the computation to whatever produced the tensor, on every backend.
- :func:`copy_layer`: a fresh, built layer with the same config and weights, so that applying a wrapper to a
  model never changes the model it was applied to.
"""

from __future__ import annotations

import contextlib

import keras

# Kernel attribute names per layer class name (Keras 3 built-ins).
_KERNELS_BY_CLASS = {
    "Dense": ("kernel",),
    "EinsumDense": ("kernel",),
    "Conv1D": ("kernel",),
    "Conv2D": ("kernel",),
    "Conv3D": ("kernel",),
    "Conv1DTranspose": ("kernel",),
    "Conv2DTranspose": ("kernel",),
    "Conv3DTranspose": ("kernel",),
    "DepthwiseConv1D": ("depthwise_kernel",),
    "DepthwiseConv2D": ("depthwise_kernel",),
    "SeparableConv1D": ("pointwise_kernel",),
    "SeparableConv2D": ("pointwise_kernel",),
    "Embedding": ("embeddings",),
}

# Layers that hold weights but have nothing worth compressing; they pass through untouched.
_PASS_THROUGH_WITH_WEIGHTS = {
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "UnitNormalization",
    "RMSNormalization",
    "Normalization",
    "PReLU",
}


class UnsupportedLayerError(ValueError):
    """A layer with weights that weightzip does not know how to compress."""


def compressible_weight_names(layer: keras.layers.Layer) -> tuple[str, ...]:
    """Attribute names of the weights of `layer` to compress (empty: nothing to compress).

    A custom layer opts in by defining ``get_prunable_weight_names()`` returning attribute names. Raises
    :class:`UnsupportedLayerError` for a layer with weights that is neither known nor opted in.
    """
    custom = getattr(layer, "get_prunable_weight_names", None)
    if callable(custom):
        return tuple(custom())
    for cls in type(layer).__mro__:
        if cls.__name__ in _KERNELS_BY_CLASS and cls.__module__.startswith("keras"):
            return _KERNELS_BY_CLASS[cls.__name__]
        if cls.__name__ in _PASS_THROUGH_WITH_WEIGHTS and cls.__module__.startswith("keras"):
            return ()
    if not layer.weights and not _declares_weights(layer):
        return ()
    raise UnsupportedLayerError(
        f"layer {layer.name!r} ({type(layer).__name__}) has weights weightzip does not know how to compress; "
        "wrap only supported layers (pass a clone_function that skips it), or give the layer a "
        "get_prunable_weight_names() method"
    )


def is_supported(layer: keras.layers.Layer) -> bool:
    """True when `layer` has at least one weight to compress."""
    try:
        return bool(compressible_weight_names(layer))
    except UnsupportedLayerError:
        return False


def _declares_weights(layer) -> bool:
    # An unbuilt layer has no weights yet; judge it by its class instead (a known weightless layer such as
    # Flatten or Dropout has no kernel-like attribute in its config).
    return not layer.built and any(key.endswith("_initializer") for key in layer.get_config())


def weight_variables(layer: keras.layers.Layer, names) -> list:
    """The variables behind attribute `names` of a built `layer`."""
    variables = []
    for name in names:
        variable = getattr(layer, name)
        if not isinstance(variable, keras.Variable):
            raise UnsupportedLayerError(
                f"{layer.name}.{name} is not a plain variable ({type(variable).__name__}); "
                "is the layer quantized or LoRA-enabled?"
            )
        variables.append(variable)
    return variables


@contextlib.contextmanager
def substituted_weights(layer: keras.layers.Layer, replacements):
    """Within the block, `layer` reads each variable of `replacements` (``(variable, tensor)`` pairs) as the tensor.

    Every instance attribute holding the variable (``_kernel`` behind Dense's ``kernel`` property, the plain
    ``depthwise_kernel`` attribute, ...) is pointed at the tensor, bypassing Keras's attribute tracking, and
    restored on exit.
    """
    swapped = []
    try:
        for variable, tensor in replacements:
            names = [name for name, value in vars(layer).items() if value is variable]
            if not names:
                raise UnsupportedLayerError(f"cannot find the attribute of {layer.name} that holds {variable.path}")
            for name in names:
                swapped.append((name, variable))
                object.__setattr__(layer, name, tensor)
        yield
    finally:
        for name, variable in reversed(swapped):
            object.__setattr__(layer, name, variable)


def copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new layer with `layer`'s config, built like it and holding copies of its weights."""
    fresh = type(layer).from_config(layer.get_config())
    if layer.built:
        build_config = layer.get_build_config()
        if build_config:
            fresh.build_from_config(build_config)
        if fresh.built:
            fresh.set_weights(layer.get_weights())
    return fresh
