"""Post-training compression of a Keras model, when no training data is at hand.

Each clusterable kernel is magnitude-pruned to its target sparsity and clustered with the exact
1-D k-means optimum (the best codebook when the centroids cannot be fine-tuned), zeros kept exactly.
The model is copied; the input is never modified.
"""

from __future__ import annotations

import keras

from weightzip.core import CentroidInitialization, ClusterConfig, cluster_array
from weightzip.core.pruning import apply_mask, magnitude_mask
from weightzip.keras.pruning_registry import prunable_weights
from weightzip.keras.clustering_registry import LayerKind, classify_layer, unsupported_layer_error

CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D,
              keras.layers.SeparableConv2D, keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
              keras.layers.Conv3DTranspose)


def compress_post_training(model: keras.Model, *, sparsity: float = 0.0, conv_sparsity: float = 0.0,
                           clusters: int = 16, conv_clusters: int = 16, per_channel: bool = False) -> keras.Model:
    """A copy of `model` with every supported kernel pruned and clustered without retraining.

    Raises :class:`~weightzip.keras.UnsupportedLayerError` naming a layer with weights that cannot be
    clustered (as ``cluster_weights`` does).
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in _flattened_layers(copy):
        kind = classify_layer(layer)
        if kind is LayerKind.UNSUPPORTED:
            raise unsupported_layer_error(layer)
        if kind is not LayerKind.CLUSTERED:
            continue
        is_conv = isinstance(layer, CONV_TYPES)
        target = conv_sparsity if is_conv else sparsity
        for weight in prunable_weights(layer):
            kernel = keras.ops.convert_to_numpy(weight.variable)
            if target > 0:
                kernel = apply_mask(kernel, magnitude_mask(kernel, target))
            config = ClusterConfig(conv_clusters if is_conv else clusters, init=CentroidInitialization.OPTIMAL,
                                   axis=weight.channel_axis if per_channel else None, preserve_sparsity=target > 0)
            weight.variable.assign(cluster_array(kernel, config).decode())
    return copy


def _flattened_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flattened_layers(layer)
        else:
            yield layer
