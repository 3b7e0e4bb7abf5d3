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

from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError
from weightzip.core.specs import ClusteringSpec, build_spec
from weightzip.keras._rewrite import Rewriter, copy_layer, is_graph_model, iter_layers
from weightzip.keras.clustering.config import TFMOT_ALIASES, ClusteringParams
from weightzip.keras.clustering.registry import LayerKind, classify_layer, unsupported_layer_error
from weightzip.keras.clustering.wrapper import ClusterWeights

_PARAM_KEYWORDS = ("cluster_gradient_aggregation", "reassignment", "seed")


def cluster_weights(
    to_cluster,
    number_of_clusters=None,
    cluster_centroids_init=None,
    cluster_per_channel=None,
    preserve_sparsity=None,
    *,
    spec: ClusteringSpec | None = None,
    inplace: bool | None = None,
    **kwargs,
):
    """Make a layer, a list of layers or a model train with clustered (shared) weights.

    Each clustered kernel uses at most `number_of_clusters` distinct values (per output channel
    with `cluster_per_channel`). Biases and normalisation layers are not clustered.

    Keyword arguments: ``cluster_gradient_aggregation`` (:class:`.GradientAggregation`, default SUM),
    ``reassignment`` (:class:`.Reassignment`, default EVERY_STEP, as TFMOT), ``seed`` (RANDOM and
    KMEANS_PLUS_PLUS initialisation); for a single layer also :class:`keras.layers.Layer` arguments
    of the wrapper, such as ``name``.

    The names of :class:`~weightzip.core.specs.ClusteringSpec`, which ``weightzip.torch.cluster_weights`` takes,
    work here too: ``init``, ``per_channel`` and ``gradient_aggregation`` are TFMOT's ``cluster_centroids_init``,
    ``cluster_per_channel`` and ``cluster_gradient_aggregation`` (give one spelling, not both); ``spec=`` passes a
    whole spec, and the keywords given next to it override its fields. Defaults: LINEAR, per tensor, SUM,
    EVERY_STEP.

    The input is never modified, except a subclassed model (or custom container layer), which is
    clustered in place (see the module docstring): it cannot be copied. ``inplace=False`` / ``True`` states which
    one the caller expects, and is refused for an input that would be treated the other way (None: no check).
    Raises :class:`.UnsupportedLayerError` naming the first layer with weights that cannot be clustered.
    """
    tfmot = dict(cluster_centroids_init=cluster_centroids_init, cluster_per_channel=cluster_per_channel)
    tfmot.update((key, kwargs.pop(key)) for key in _PARAM_KEYWORDS if key in kwargs)
    fields = {TFMOT_ALIASES.get(key, key): value for key, value in tfmot.items()}
    for tfmot_name, name in TFMOT_ALIASES.items():
        if name in kwargs:
            if tfmot.get(tfmot_name) is not None:
                raise ArgumentTypeError(f"cluster_weights got both {tfmot_name}= and {name}= (the same option)")
            fields[name] = kwargs.pop(name)
    fields.update(number_of_clusters=number_of_clusters, preserve_sparsity=preserve_sparsity)
    params = ClusteringParams.from_spec(build_spec(ClusteringSpec, spec, "cluster_weights", **fields))
    if inplace is not None:
        _check_inplace(to_cluster, inplace)
    if isinstance(to_cluster, (list, tuple)):
        if kwargs:
            raise ArgumentTypeError(f"unexpected keyword arguments for a list of layers: {sorted(kwargs)}")
        rewriter = Rewriter(_cluster_policy(params))
        return [rewriter.rewrite(_checked_layer(item)) for item in to_cluster]
    layer = _checked_layer(to_cluster)
    if kwargs and classify_layer(layer) is not LayerKind.CLUSTERED:
        raise ArgumentTypeError(
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


def _check_inplace(to_cluster, inplace) -> None:
    if not isinstance(inplace, bool):
        raise ArgumentTypeError(f"inplace must be True, False or None, got {inplace!r}")
    for item in to_cluster if isinstance(to_cluster, (list, tuple)) else [to_cluster]:
        in_place = classify_layer(_checked_layer(item)) is LayerKind.CONTAINER
        if in_place and not inplace:
            raise InvalidArgumentError(f"{item.name!r} ({type(item).__name__}) can only be clustered in place: a "
                                       "subclassed model or container layer cannot be copied (pass inplace=True)")
        if inplace and not in_place:
            raise InvalidArgumentError(f"{item.name!r} ({type(item).__name__}) is clustered as a copy, never in "
                                       "place: inplace=True applies to subclassed models and container layers")


def _checked_layer(value):
    if not isinstance(value, keras.layers.Layer):
        raise ArgumentTypeError(
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
