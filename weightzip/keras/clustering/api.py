"""The TFMOT clustering API for Keras 3: ``cluster_weights``, ``strip_clustering``, ``cluster_scope``.

What each kind of input becomes (see :class:`.LayerKind`):

- a supported layer (or a :class:`.ClusterableLayer`): a :class:`.ClusterWeights` wrapping a copy of it
  (or the layer itself when it is not built yet: it is clustered when built);
- a Sequential or Functional model: a clone (``keras.models.clone_model``) whose supported layers are
  wrapped and whose other layers are copies; layers without trainable weights and normalisation
  layers are not clustered; any other layer with trainable weights raises
  :class:`.UnsupportedLayerError` naming it;
- a subclassed model (TFMOT cannot cluster these) or a custom layer whose weights all belong to
  sublayers: its sublayer attributes (``self.dense = ...``, also in lists and dicts) are replaced in
  place by clustered ones, and the same object is returned.

Compile the result before training it: its trainable variables differ from the input's.
"""

from __future__ import annotations

import keras

from weightzip.core import CentroidInitialization
from weightzip.keras._rewrite import Rewriter, copy_layer, is_graph_model, iter_layers
from weightzip.keras.clustering.config import ClusteringParams
from weightzip.keras.clustering.registry import LayerKind, classify_layer, unsupported_layer_error
from weightzip.keras.clustering.wrapper import ClusterWeights

_PARAM_KEYWORDS = ("cluster_gradient_aggregation", "reassignment", "seed")


def cluster_weights(
    to_cluster,
    number_of_clusters,
    cluster_centroids_init=CentroidInitialization.LINEAR,
    cluster_per_channel=False,
    preserve_sparsity=False,
    **kwargs,
):
    """Make a layer, a list of layers or a model train with clustered (shared) weights.

    Each clustered kernel uses at most `number_of_clusters` distinct values (per output channel
    with `cluster_per_channel`). Biases and normalisation layers are not clustered.

    Keyword arguments: ``cluster_gradient_aggregation`` (:class:`.GradientAggregation`, default SUM),
    ``reassignment`` (:class:`.Reassignment`, default EVERY_STEP, as TFMOT), ``seed`` (RANDOM and
    KMEANS_PLUS_PLUS initialisation); for a single layer also :class:`keras.layers.Layer` arguments
    of the wrapper, such as ``name``.

    The input is never modified, except a subclassed model (or custom container layer), which is
    clustered in place (see the module docstring). Raises :class:`.UnsupportedLayerError` naming the
    first layer with weights that cannot be clustered.
    """
    param_kwargs = {key: kwargs.pop(key) for key in _PARAM_KEYWORDS if key in kwargs}
    params = ClusteringParams(
        number_of_clusters, cluster_centroids_init, cluster_per_channel, preserve_sparsity, **param_kwargs
    )
    if isinstance(to_cluster, (list, tuple)):
        if kwargs:
            raise TypeError(f"unexpected keyword arguments for a list of layers: {sorted(kwargs)}")
        rewriter = Rewriter(_cluster_policy(params))
        return [rewriter.rewrite(_checked_layer(item)) for item in to_cluster]
    layer = _checked_layer(to_cluster)
    if kwargs and classify_layer(layer) is not LayerKind.CLUSTERED:
        raise TypeError(
            f"unexpected keyword arguments {sorted(kwargs)}: layer arguments apply to a single "
            "clusterable layer only"
        )
    return Rewriter(_cluster_policy(params, kwargs)).rewrite(layer)


def strip_clustering(model):
    """Remove the clustering wrappers, keeping the clustered weight values.

    A Sequential or Functional model gives a clone whose layers are plain Keras layers (each kernel
    holding at most k distinct values), ready for export; a :class:`.ClusterWeights` layer gives a
    plain copy of its layer; a subclassed model is unwrapped in place and returned.
    """
    return Rewriter(_strip_clustering_policy).rewrite(_checked_layer(model))


def cluster_scope():
    """A custom-object scope in which clustered models load (TFMOT's ``cluster_scope``).

    ``ClusterWeights`` is also registered with ``keras.saving.register_keras_serializable``, so once
    :mod:`weightzip.keras` is imported ``keras.models.load_model`` works without the scope.
    """
    return keras.saving.CustomObjectScope(
        {"ClusterWeights": ClusterWeights, "weightzip>ClusterWeights": ClusterWeights}
    )


def _checked_layer(value):
    if not isinstance(value, keras.layers.Layer):
        raise TypeError(
            f"expected a keras Layer, a list of layers or a keras Model, got {type(value).__name__}"
        )
    return value


def _cluster_policy(params: ClusteringParams, layer_kwargs=None):
    """Each clusterable layer wrapped in :class:`.ClusterWeights` (a copy of it unless rewriting in place)."""

    def replace(layer, rewriter):
        kind = classify_layer(layer)
        if kind is LayerKind.CLUSTERED:
            return ClusterWeights(rewriter.own(layer), **params.to_config(), **(layer_kwargs or {}))
        if kind is LayerKind.MODEL:
            return rewriter.clone(layer)
        if kind is LayerKind.CONTAINER:
            return rewriter.in_place(layer if isinstance(layer, keras.Model) else rewriter.own(layer))
        if kind is LayerKind.UNSUPPORTED:
            raise unsupported_layer_error(layer)
        if kind is LayerKind.ALREADY_CLUSTERED:
            return layer
        return None  # nothing to cluster: copied inside a clone, kept otherwise

    return replace


def _strip_clustering_policy(layer, rewriter):
    """Each :class:`.ClusterWeights` replaced by its stripped layer, containers holding one rewritten."""
    if isinstance(layer, ClusterWeights):
        return layer.stripped_layer()
    if is_graph_model(layer):
        return rewriter.clone(layer)
    if any(isinstance(sublayer, ClusterWeights) for sublayer in iter_layers(layer, tracked=True)):
        keep = isinstance(layer, keras.Model) or not rewriter.cloning
        return rewriter.in_place(layer if keep else copy_layer(layer))
    return None
