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
from weightzip.keras.cluster_wrapper import ClusterWeights
from weightzip.keras.clustering_config import ClusteringParams
from weightzip.keras.clustering_registry import LayerKind, classify_layer, unsupported_layer_error
from weightzip.keras.layer_copy import copy_layer

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
    clusterer = _Clusterer(params)
    if isinstance(to_cluster, (list, tuple)):
        if kwargs:
            raise TypeError(f"unexpected keyword arguments for a list of layers: {sorted(kwargs)}")
        return [clusterer.standalone(_checked_layer(item)) for item in to_cluster]
    layer = _checked_layer(to_cluster)
    if kwargs and classify_layer(layer) is not LayerKind.CLUSTERED:
        raise TypeError(
            f"unexpected keyword arguments {sorted(kwargs)}: layer arguments apply to a single "
            "clusterable layer only"
        )
    return clusterer.standalone(layer, **kwargs)


def strip_clustering(model):
    """Remove the clustering wrappers, keeping the clustered weight values.

    A Sequential or Functional model gives a clone whose layers are plain Keras layers (each kernel
    holding at most k distinct values), ready for export; a :class:`.ClusterWeights` layer gives a
    plain copy of its layer; a subclassed model is unwrapped in place and returned.
    """
    return _Stripper().standalone(_checked_layer(model))


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


class _Rewriter:
    """Walks layers and models, replacing layers according to their :class:`.LayerKind`.

    `copied(layer)` gives the replacement of a layer inside a cloned model (never shares state with
    the input); `in_place(layer)` the replacement inside a container modified in place.
    """

    def __init__(self):
        self._copies: dict[int, keras.layers.Layer] = {}
        self._in_place: dict[int, keras.layers.Layer] = {}

    def clone_model(self, model):
        return keras.models.clone_model(model, clone_function=self.copied)

    def copied(self, layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless operation of a Functional graph (e.g. keras.ops.not_equal)
        key = id(layer)
        if key not in self._copies:
            self._copies[key] = self._copy(layer)
        return self._copies[key]

    def in_place(self, layer):
        key = id(layer)
        if key not in self._in_place:
            self._in_place[key] = self._replace_in_place(layer)
        return self._in_place[key]

    def rewrite_container(self, parent):
        """Replace the sublayers that `parent` holds in attributes, lists and dicts."""
        def replaced(item):
            replacement = self.in_place(item)
            if replacement is not item:
                _retrack(parent, item, replacement)
            return replacement

        for name, value in _attribute_items(parent):
            if isinstance(value, keras.layers.Layer):
                replacement = replaced(value)
                if replacement is not value:
                    setattr(parent, name, replacement)
            elif isinstance(value, (list, dict)):
                keys = range(len(value)) if isinstance(value, list) else list(value)
                for key in keys:
                    item = value[key]
                    if isinstance(item, keras.layers.Layer):
                        replacement = replaced(item)
                        if replacement is not item:
                            value[key] = replacement
        _forget_compiled_functions(parent)
        return parent

    def _copy(self, layer):  # pragma: no cover - abstract
        raise NotImplementedError

    def _replace_in_place(self, layer):  # pragma: no cover - abstract
        raise NotImplementedError


class _Clusterer(_Rewriter):
    def __init__(self, params: ClusteringParams):
        super().__init__()
        self.params = params

    def wrap(self, layer, **layer_kwargs):
        return ClusterWeights(layer, **self.params.to_config(), **layer_kwargs)

    def standalone(self, layer, **layer_kwargs):
        kind = classify_layer(layer)
        if kind is LayerKind.CLUSTERED:
            return self.wrap(copy_layer(layer) if layer.built else layer, **layer_kwargs)
        if kind is LayerKind.MODEL:
            return self.clone_model(layer)
        if kind is LayerKind.CONTAINER:
            target = layer if isinstance(layer, keras.Model) or not layer.built else copy_layer(layer)
            return self.rewrite_container(target)
        if kind is LayerKind.UNSUPPORTED:
            raise unsupported_layer_error(layer)
        return layer  # already clustered, or nothing to cluster

    def _copy(self, layer):
        kind = classify_layer(layer)
        if kind is LayerKind.CLUSTERED:
            return self.wrap(copy_layer(layer))
        if kind is LayerKind.MODEL:
            return self.clone_model(layer)
        if kind is LayerKind.CONTAINER:
            if isinstance(layer, keras.Model):
                return self.rewrite_container(layer)
            return self.rewrite_container(copy_layer(layer))
        if kind is LayerKind.UNSUPPORTED:
            raise unsupported_layer_error(layer)
        if kind is LayerKind.ALREADY_CLUSTERED:
            return layer
        return copy_layer(layer)

    def _replace_in_place(self, layer):
        kind = classify_layer(layer)
        if kind is LayerKind.CLUSTERED:
            return self.wrap(layer)
        if kind is LayerKind.MODEL:
            return self.clone_model(layer)
        if kind is LayerKind.CONTAINER:
            return self.rewrite_container(layer)
        if kind is LayerKind.UNSUPPORTED:
            raise unsupported_layer_error(layer)
        return layer


class _Stripper(_Rewriter):
    def standalone(self, layer):
        if isinstance(layer, ClusterWeights):
            return layer.stripped_layer()
        kind = _strip_kind(layer)
        if kind is LayerKind.MODEL:
            return self.clone_model(layer)
        if kind is LayerKind.CONTAINER:
            return self.rewrite_container(layer)
        return layer

    def _copy(self, layer):
        if isinstance(layer, ClusterWeights):
            return layer.stripped_layer()
        kind = _strip_kind(layer)
        if kind is LayerKind.MODEL:
            return self.clone_model(layer)
        if kind is LayerKind.CONTAINER:
            if isinstance(layer, keras.Model):
                return self.rewrite_container(layer)
            return self.rewrite_container(copy_layer(layer))
        return copy_layer(layer)

    def _replace_in_place(self, layer):
        return self.standalone(layer)


def _strip_kind(layer) -> LayerKind:
    """MODEL, CONTAINER (holds a clustered layer somewhere below) or PASSTHROUGH."""
    if isinstance(layer, keras.Sequential) or _is_functional(layer):
        return LayerKind.MODEL
    if _contains_clustered(layer):
        return LayerKind.CONTAINER
    return LayerKind.PASSTHROUGH


def _contains_clustered(layer) -> bool:
    stack = list(getattr(layer, "_layers", ()))
    seen = set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ClusterWeights):
            return True
        stack.extend(getattr(current, "_layers", ()))
    return False


def _is_functional(layer) -> bool:
    from weightzip.keras.clustering_registry import is_functional

    return is_functional(layer)


_INTERNAL_ATTRIBUTES = frozenset({
    "_layers", "_tracker", "_modules", "_torch_params", "_inbound_nodes", "_outbound_nodes",
    "_parameters", "_buffers", "_functional", "_operations",
})


def _attribute_items(parent):
    """(name, value) of the attributes of `parent` that may hold its sublayers."""
    tracker = getattr(parent, "_tracker", None)
    internal_stores = set()
    if tracker is not None:
        internal_stores = {id(store) for _, store in tracker.config.values()}
    names = list(vars(parent))
    names += [name for name in (getattr(parent, "_modules", None) or {}) if name not in names]
    for name in names:
        if name in _INTERNAL_ATTRIBUTES or name.startswith("_self_"):
            continue
        try:
            value = getattr(parent, name)
        except Exception:  # properties that fail on an unbuilt layer, etc.
            continue
        if id(value) in internal_stores:
            continue
        yield name, value


def _retrack(parent, old, new):
    """Make `parent`'s layer tracker hold `new` where it held `old` (allowed after build)."""
    tracker = getattr(parent, "_tracker", None)
    if tracker is None or not tracker.is_in_store("layers", old):
        return
    if tracker.is_in_store("layers", new):
        tracker.untrack(old)
    else:
        tracker.replace_tracked_value("layers", old, new)


def _forget_compiled_functions(layer):
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(layer, name, None) is not None:
            setattr(layer, name, None)
