"""Which weights of a Keras layer are pruned: the same kernels that clustering targets.

There is one layer registry in weightzip (:mod:`weightzip.keras.clustering.registry`): the kernels of
Dense, EinsumDense, convolutions, RNN cells, attention projections, Embedding and any layer implementing
``get_clusterable_weights()``; never biases or normalisation parameters (few, and sensitive), as in TFMOT.
This module only words its answers for pruning.
"""

from __future__ import annotations

import keras

from weightzip.keras.clustering.clusterable_layer import ClusterableWeight
from weightzip.keras.clustering.registry import (
    LayerKind,
    UnsupportedLayerError,
    classify_layer,
    clusterable_weights,
    own_trainable_variables,
)

__all__ = [
    "LayerKind",
    "UnsupportedLayerError",
    "classify_for_pruning",
    "compressible_weight_names",
    "prunable_weights",
]


def prunable_weights(layer: keras.layers.Layer) -> list[ClusterableWeight]:
    """The weights of a built `layer` to prune (name, variable, channel axis), in a stable order."""
    try:
        return clusterable_weights(layer)
    except UnsupportedLayerError:
        raise unsupported_for_pruning(layer) from None


def compressible_weight_names(layer: keras.layers.Layer) -> tuple[str, ...]:
    """Names of the weights of a built `layer` to prune or cluster; empty when it has none.

    For the single-kernel built-ins (Dense, Conv*, Embedding, ...) each name is the attribute holding the
    variable (``getattr(layer, name)``); composite layers give dotted names (``"cell.kernel"``), so use
    :func:`prunable_weights` for the variables themselves. Raises :class:`UnsupportedLayerError` for a
    layer with weights weightzip cannot prune.
    """
    kind = classify_layer(layer)
    if kind is LayerKind.UNSUPPORTED:
        raise unsupported_for_pruning(layer)
    if kind is not LayerKind.CLUSTERED:
        return ()
    if not layer.built:
        raise UnsupportedLayerError(f"layer {layer.name!r} is not built: its weights do not exist yet")
    return tuple(weight.name for weight in prunable_weights(layer))


def classify_for_pruning(layer: keras.layers.Layer) -> LayerKind:
    """How ``prune_low_magnitude`` treats `layer` inside a model (the clustering classification)."""
    return classify_layer(layer)


def pruning_refusal(layer: keras.layers.Layer, *, alone: bool) -> UnsupportedLayerError | None:
    """Why `layer` cannot be pruned, or None: given `alone` (``PruneLowMagnitude(layer)``), only a layer with
    prunable kernels (CLUSTERED) is taken; inside a model, the others are copied as they are and nested models
    cloned, and only unsupported weights and weight-holding containers (which cannot be cloned) are refused."""
    kind = classify_for_pruning(layer)
    if kind is LayerKind.CLUSTERED:
        return None
    if kind is LayerKind.UNSUPPORTED:
        return unsupported_for_pruning(layer)
    if not alone:
        if kind is not LayerKind.CONTAINER:
            return None
        return UnsupportedLayerError(
            f"layer {layer.name!r} ({type(layer).__name__}) holds its weights in sublayers; "
            "prune_low_magnitude cannot clone it: wrap its sublayers inside its definition instead")
    if kind is LayerKind.PASSTHROUGH:
        return UnsupportedLayerError(f"layer {layer.name!r} ({type(layer).__name__}) has no weights to prune")
    if kind is LayerKind.ALREADY_CLUSTERED:
        return UnsupportedLayerError(
            f"layer {layer.name!r} is clustered: prune first, then cluster with preserve_sparsity=True "
            "(or strip_clustering before pruning)")
    return UnsupportedLayerError(
        f"{layer.name!r} is a model or container ({type(layer).__name__}): pass a Sequential/Functional model "
        "to prune_low_magnitude, or prune the layers inside it")


def unsupported_for_pruning(layer) -> UnsupportedLayerError:
    names = ", ".join(variable.name for variable in own_trainable_variables(layer)) or "its weights"
    return UnsupportedLayerError(
        f"layer {layer.name!r} ({type(layer).__name__}) has trainable weights ({names}) that weightzip "
        "cannot prune. Prune the other layers selectively with keras.models.clone_model(model, "
        "clone_function=...), or implement get_clusterable_weights() on the layer"
    )
