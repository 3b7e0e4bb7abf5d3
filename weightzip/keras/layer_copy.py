"""Independent copies of Keras layers, weights included.

``cluster_weights`` and ``strip_clustering`` return models that share no state with their input, so
that fine-tuning a clustered model never changes the pretrained one (TFMOT shares layer objects, and
its fine-tuning moves the original model's weights). A copy is rebuilt from the layer's config and
build config, then given the layer's weights.
"""

from __future__ import annotations

import keras
from keras import ops
from keras.src.backend.common.variables import initialize_all_variables

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
        _build_with_values(clone, build_config, layer.weights)
    else:
        _check_same_count(layer.weights, clone.weights)
        for source, target in zip(layer.weights, clone.weights):
            target.assign(ops.copy(source.value))
    for source, target in zip(layer.weights, clone.weights):
        target.trainable = source.trainable
    return clone


def _build_with_values(clone, build_config, source_weights):
    """Build `clone` so that its weights start as copies of `source_weights`.

    Variables created inside a :class:`keras.StatelessScope` defer their initialisation; giving each
    the source value as its initialiser skips drawing random initial values (for a 4096 × 4096
    kernel, most of the cost of a copy). If Keras did not defer them, the values are assigned.
    """
    with keras.StatelessScope(initialize_variables=False):
        clone.build_from_config(build_config)
    _check_same_count(source_weights, clone.weights)
    deferred = all(getattr(variable, "_value", 0) is None for variable in clone.weights)
    if deferred:
        for source, target in zip(source_weights, clone.weights):
            target._initializer = _CopyOf(source)
    initialize_all_variables()
    if not deferred:
        for source, target in zip(source_weights, clone.weights):
            target.assign(ops.copy(source.value))


class _CopyOf:
    """An initialiser returning a fresh copy of a variable's current value."""

    def __init__(self, source):
        self.source = source

    def __call__(self, shape, dtype=None):
        return ops.copy(self.source.value)


def _check_same_count(source_weights, target_weights):
    if len(source_weights) != len(target_weights):
        raise LayerCopyError(
            f"a copy of a layer has {len(target_weights)} weights where the layer has {len(source_weights)}"
        )
