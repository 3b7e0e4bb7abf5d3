"""Post-training compression of a Keras model, when no training data is at hand.

Each clusterable kernel is magnitude-pruned to its target sparsity and clustered with the exact
1-D k-means optimum (the best codebook when the centroids cannot be fine-tuned), zeros kept exactly.
The model is copied; the input is never modified.
"""

from __future__ import annotations

import keras

from weightzip.core import CentroidInitialization, ClusterConfig, cluster_array
from weightzip.core.pruning import apply_mask, magnitude_mask
from weightzip.core.validation import check_fraction
from weightzip.keras._layers import is_convolution
from weightzip.keras.pruning_registry import prunable_weights
from weightzip.keras.clustering_registry import LayerKind, classify_layer, unsupported_layer_error


def compress_post_training(model: keras.Model, *, sparsity: float = 0.0, conv_sparsity: float | None = None,
                           clusters: int = 16, conv_clusters: int | None = None, per_channel: bool = False,
                           group_size: int = 1,
                           init: CentroidInitialization | str = CentroidInitialization.OPTIMAL) -> keras.Model:
    """A copy of `model` with every supported kernel pruned and clustered without retraining.

    conv_sparsity / conv_clusters: the convolutions' own settings (a convolution is what the layer
        table, :mod:`weightzip.keras._layers`, says is one); None: `sparsity` / `clusters`.
    per_channel / group_size: one codebook per output channel, or per `group_size` consecutive ones.
    init: centroid initialisation (OPTIMAL, the exact 1-D k-means, by default: the best codebook
        when the centroids cannot be fine-tuned).

    Raises :class:`~weightzip.keras.UnsupportedLayerError` naming a layer with weights that cannot be
    clustered (as ``cluster_weights`` does).
    """
    sparsity = check_fraction(sparsity, "sparsity")
    conv_sparsity = sparsity if conv_sparsity is None else check_fraction(conv_sparsity, "conv_sparsity")
    conv_clusters = clusters if conv_clusters is None else conv_clusters
    if not per_channel and group_size != 1:
        raise ValueError("group_size only applies with per_channel=True")
    init = CentroidInitialization.parse(init)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in _flattened_layers(copy):
        kind = classify_layer(layer)
        if kind is LayerKind.UNSUPPORTED:
            raise unsupported_layer_error(layer)
        if kind is not LayerKind.CLUSTERED:
            continue
        is_conv = is_convolution(layer)
        target = conv_sparsity if is_conv else sparsity
        for weight in prunable_weights(layer):
            kernel = keras.ops.convert_to_numpy(weight.variable)
            if target > 0:
                kernel = apply_mask(kernel, magnitude_mask(kernel, target))
            config = ClusterConfig(conv_clusters if is_conv else clusters, init=init,
                                   axis=weight.channel_axis if per_channel else None, group_size=group_size,
                                   preserve_sparsity=target > 0)
            weight.variable.assign(cluster_array(kernel, config).decode())
    return copy


def _flattened_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flattened_layers(layer)
        else:
            yield layer
