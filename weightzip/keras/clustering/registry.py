"""Which Keras layers can be clustered, and which of their weights.

:func:`clusterable_weights` lists the weights of a supported layer (kernels, never biases);
:func:`classify_layer` sorts any layer into one of the :class:`LayerKind` cases that
:func:`weightzip.keras.cluster_weights` handles differently. Support is by ``isinstance``, so
subclasses of the built-in layers are supported too.

Channel axes (used with ``cluster_per_channel``; each index along the axis gets its own codebook):
the output-channel axis of each kernel: the last axis for Dense, EinsumDense, Conv*, the
pointwise kernel of SeparableConv*, RNN kernels and Embedding (the embedding dimension); the
second-to-last for Conv*Transpose (whose kernels are ``(..., filters, in_channels)``) and for
depthwise kernels ``(..., in_channels, depth_multiplier)``, where that is the input channel each
filter belongs to: with ``depth_multiplier=1`` exactly the output channel, otherwise all the
multiplier filters of one input channel share a codebook.
"""

from __future__ import annotations

import enum

import keras

from weightzip.core.errors import UnsupportedLayerError  # the one class both front ends raise
from weightzip.keras._compat import ConvLSTMCell, is_graph_model
from weightzip.keras._layers import EINSUM_INPUT_AXIS as _EINSUM_INPUT_AXIS
from weightzip.keras._layers import LAST, LAYER_TABLE
from weightzip.keras._layers import SECOND_TO_LAST as _SECOND_TO_LAST
from weightzip.keras.clustering.clusterable_layer import ClusterableLayer, ClusterableWeight, ClusteringAlgorithm

layers = keras.layers


class LayerKind(enum.Enum):
    """How :func:`weightzip.keras.cluster_weights` treats a layer."""

    CLUSTERED = "clustered"
    """A supported or ClusterableLayer layer: wrapped in :class:`ClusterWeights`."""
    ALREADY_CLUSTERED = "already_clustered"
    """A :class:`ClusterWeights` wrapper: left as it is."""
    PASSTHROUGH = "passthrough"
    """No trainable weights, or a normalisation layer (not clustered by design): copied unchanged."""
    MODEL = "model"
    """A Sequential or Functional model: cloned with its layers clustered."""
    CONTAINER = "container"
    """A subclassed model or a custom layer whose weights all belong to sublayers: its sublayer
    attributes are clustered in place."""
    UNSUPPORTED = "unsupported"
    """Trainable weights of its own that weightzip cannot cluster: an error."""


_NOT_CLUSTERED_BY_DESIGN = tuple(
    getattr(layers, name)
    for name in ("BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization",
                 "UnitNormalization", "Normalization")
    if hasattr(layers, name)
)

_LAST = LAST

# The kernel layers (Dense, Conv*, Embedding, ...) come from the one table of layer kinds.
_KERNEL_LAYERS: tuple[tuple[tuple[type, ...], tuple[tuple[str, int, int], ...]], ...] = tuple(
    (spec.types, tuple((kernel.name, kernel.channel_axis, kernel.input_axis) for kernel in spec.kernels))
    for spec in LAYER_TABLE
)

_RNN_CELL_WEIGHTS = (("kernel", _LAST), ("recurrent_kernel", _LAST))
_ATTENTION_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
_ATTENTION_LAYERS = tuple(
    getattr(layers, name) for name in ("MultiHeadAttention", "GroupQueryAttention") if hasattr(layers, name)
)


def is_supported_type(layer) -> bool:
    """Whether weightzip knows this layer's clusterable weights from its type alone."""
    if isinstance(layer, ClusterableLayer):
        return True
    if isinstance(layer, _ATTENTION_LAYERS):
        return True
    if isinstance(layer, layers.Bidirectional):
        return is_supported_type(layer.forward_layer) and is_supported_type(layer.backward_layer)
    if isinstance(layer, layers.RNN):
        return all(_cell_is_supported(cell) for cell in _rnn_cells(layer))
    return any(isinstance(layer, types) for types, _ in _KERNEL_LAYERS)


def clusterable_weights(layer) -> list[ClusterableWeight]:
    """The weights of `layer` to cluster, in a stable order.

    Raises :class:`UnsupportedLayerError` naming the layer if its type is not supported, or if a
    ClusterableLayer returns something other than (name, variable) pairs. The layer must be built.
    """
    if isinstance(layer, ClusterableLayer):
        return _custom_layer_weights(layer)
    if isinstance(layer, _ATTENTION_LAYERS):
        found = []
        for attribute in _ATTENTION_PROJECTIONS:
            projection = getattr(layer, attribute, None)
            if projection is not None:
                # (in, heads, size) kernels contract axis 0; the output's (heads, size, out) contracts both
                # heads and size: N:M groups run along size, the input features of one head
                input_axis = _SECOND_TO_LAST if attribute == "_output_dense" else _EINSUM_INPUT_AXIS
                found.append(ClusterableWeight(f"{attribute.lstrip('_')}.kernel", projection.kernel, _LAST,
                                               input_axis))
        return found
    if isinstance(layer, layers.Bidirectional):
        return [
            ClusterableWeight(f"{side}.{weight.name}", weight.variable, weight.channel_axis, weight.input_axis)
            for side in ("forward_layer", "backward_layer")
            for weight in clusterable_weights(getattr(layer, side))
        ]
    if isinstance(layer, layers.RNN):
        cells = _rnn_cells(layer)
        found = []
        for position, cell in enumerate(cells):
            if not _cell_is_supported(cell):
                raise UnsupportedLayerError(
                    f"layer {layer.name!r} ({type(layer).__name__}) has a cell of type "
                    f"{type(cell).__name__}, which weightzip cannot cluster"
                )
            prefix = "cell" if len(cells) == 1 else f"cell.{position}"
            if isinstance(cell, ClusterableLayer):
                found.extend(ClusterableWeight(f"{prefix}.{w.name}", w.variable, w.channel_axis, w.input_axis)
                             for w in _custom_layer_weights(cell))
            else:
                found.extend(ClusterableWeight(f"{prefix}.{name}", getattr(cell, name), axis)
                             for name, axis in _RNN_CELL_WEIGHTS)
        return found
    for types, weights in _KERNEL_LAYERS:
        if isinstance(layer, types):
            return [ClusterableWeight(name, getattr(layer, name), axis, input_axis)
                    for name, axis, input_axis in weights]
    raise UnsupportedLayerError(
        f"layer {layer.name!r} ({type(layer).__name__}) has weights weightzip cannot cluster; "
        "supported: Dense, EinsumDense, Conv*, Conv*Transpose, DepthwiseConv*, SeparableConv*, "
        "Embedding, RNN/LSTM/GRU/SimpleRNN/ConvLSTM, Bidirectional, MultiHeadAttention, or any layer "
        "implementing ClusterableLayer.get_clusterable_weights()"
    )


_CLUSTERING_WRAPPERS: list[type] = []


def register_clustering_wrapper(wrapper_class: type) -> type:
    """Class decorator: instances of `wrapper_class` count as already clustered (:attr:`LayerKind.ALREADY_CLUSTERED`).

    The wrapper registers itself here, so that this registry never imports the wrapper (which imports it).
    """
    _CLUSTERING_WRAPPERS.append(wrapper_class)
    return wrapper_class


def is_clustering_wrapper(layer) -> bool:
    """Whether `layer` is a registered clustering wrapper (:class:`ClusterWeights`)."""
    return isinstance(layer, tuple(_CLUSTERING_WRAPPERS))


def classify_layer(layer) -> LayerKind:
    """How :func:`weightzip.keras.cluster_weights` must treat `layer`."""
    if is_clustering_wrapper(layer):
        return LayerKind.ALREADY_CLUSTERED
    if is_graph_model(layer):
        return LayerKind.MODEL
    if is_supported_type(layer):
        return LayerKind.CLUSTERED
    if isinstance(layer, _NOT_CLUSTERED_BY_DESIGN):
        return LayerKind.PASSTHROUGH
    if own_trainable_variables(layer):
        return LayerKind.UNSUPPORTED
    if direct_sublayers(layer):
        return LayerKind.CONTAINER
    if isinstance(layer, keras.Model):
        return LayerKind.CONTAINER
    if not layer.built and _overrides_build(layer):
        raise UnsupportedLayerError(
            f"layer {layer.name!r} ({type(layer).__name__}) is not built, so weightzip cannot tell "
            "whether it has weights to cluster; build the model first (e.g. start it with keras.Input)"
        )
    return LayerKind.PASSTHROUGH


def unsupported_layer_error(layer) -> UnsupportedLayerError:
    names = ", ".join(variable.name for variable in own_trainable_variables(layer))
    return UnsupportedLayerError(
        f"layer {layer.name!r} ({type(layer).__name__}) has trainable weights ({names}) that "
        "weightzip cannot cluster. Cluster the other layers selectively with "
        "keras.models.clone_model(model, clone_function=...), or implement "
        "get_clusterable_weights() on the layer (see weightzip.keras.ClusterableLayer)"
    )


def own_trainable_variables(layer) -> list:
    """Trainable variables created by `layer` itself, not by its sublayers."""
    return [v for v in getattr(layer, "_trainable_variables", ()) if v.trainable]


def direct_sublayers(layer) -> list:
    """The layers tracked directly by `layer` (one level)."""
    return list(getattr(layer, "_layers", ()))


def _overrides_build(layer) -> bool:
    return type(layer).build is not layers.Layer.build


def _rnn_cells(layer) -> list:
    cell = layer.cell
    if isinstance(cell, layers.StackedRNNCells):
        return list(cell.cells)
    return [cell]


def _cell_is_supported(cell) -> bool:
    return isinstance(cell, ClusterableLayer) or isinstance(cell, _SUPPORTED_CELLS)


_SUPPORTED_CELLS = tuple(
    getattr(layers, name) for name in ("LSTMCell", "GRUCell", "SimpleRNNCell") if hasattr(layers, name)
) + ((ConvLSTMCell,) if ConvLSTMCell is not None else ())


def _custom_layer_weights(layer) -> list[ClusterableWeight]:
    pairs = layer.get_clusterable_weights()
    found = []
    seen = set()
    for item in pairs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise UnsupportedLayerError(
                f"{type(layer).__name__}.get_clusterable_weights() must return (name, variable) pairs, "
                f"got {item!r}"
            )
        name, variable = item
        if not isinstance(variable, keras.Variable):
            raise UnsupportedLayerError(
                f"{type(layer).__name__}.get_clusterable_weights() returned {name!r} as "
                f"{type(variable).__name__}; it must be a keras.Variable owned by the layer"
            )
        if name in seen:
            raise UnsupportedLayerError(
                f"{type(layer).__name__}.get_clusterable_weights() returned the name {name!r} twice"
            )
        seen.add(name)
        algorithm = None
        getter = getattr(layer, "get_clusterable_algorithm", None)
        if callable(getter):
            algorithm = getter(name)
        if algorithm is not None and not isinstance(algorithm, ClusteringAlgorithm):
            raise UnsupportedLayerError(
                f"{type(layer).__name__}.get_clusterable_algorithm({name!r}) must return a "
                f"weightzip.keras.ClusteringAlgorithm or None, got {type(algorithm).__name__}"
            )
        axis = _LAST if algorithm is None else algorithm.channel_axis
        found.append(ClusterableWeight(name, variable, axis))
    return found
