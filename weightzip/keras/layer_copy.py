"""Independent copies of Keras layers, weights included.

``cluster_weights`` and ``strip_clustering`` return models that share no state with their input, so
that fine-tuning a clustered model never changes the pretrained one (TFMOT shares layer objects, and
its fine-tuning moves the original model's weights). A copy is rebuilt from the layer's config and
build config, then given the layer's weights.
"""

from __future__ import annotations

import keras
from keras import ops

from weightzip.core import WeightzipError


class LayerCopyError(WeightzipError):
    """A layer that cannot be rebuilt from its config (e.g. a custom layer without get_config)."""


def copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new layer of the same class and config holding copies of `layer`'s weights."""
    try:
        clone = layer.__class__.from_config(layer.get_config())
    except Exception as error:  # custom layers fail in many ways; say which layer and why
        raise LayerCopyError(
            f"cannot copy layer {layer.name!r} ({type(layer).__name__}) from its config: {error}. "
            "Give the layer a get_config() that returns its constructor arguments"
        ) from error
    if not layer.weights:
        return clone
    build_config = layer.get_build_config()
    if not clone.built:
        if not build_config:
            raise LayerCopyError(
                f"cannot copy layer {layer.name!r} ({type(layer).__name__}): it has weights but no "
                "build config (build it by calling it, or on a model with keras.Input)"
            )
        clone.build_from_config(build_config)
    source_weights = layer.weights
    if len(clone.weights) != len(source_weights):
        raise LayerCopyError(
            f"the copy of layer {layer.name!r} ({type(layer).__name__}) has {len(clone.weights)} "
            f"weights, the layer {len(source_weights)}"
        )
    for source, target in zip(source_weights, clone.weights):
        target.assign(ops.copy(source.value))  # a new buffer: JAX may donate (delete) the old
        target.trainable = source.trainable
    return clone
