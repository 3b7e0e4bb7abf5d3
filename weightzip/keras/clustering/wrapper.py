"""``ClusterWeights``: a Keras 3 wrapper that trains a layer with its kernels clustered.

For each clusterable weight of the wrapped layer (see :mod:`.registry`) the wrapper owns
a trainable codebook variable ``<weight>_cluster_centroids`` of shape ``(k,)``, or ``(channels, k)``
per channel, initialised by :mod:`weightzip.core`. Every call computes the clustered kernel with
:func:`.ops.clustered_kernel` and runs the wrapped layer with its kernel variable read as
that tensor (:mod:`weightzip.keras._substitution`), so the wrapped layer's own code runs unchanged and
gradients reach the centroids. See :class:`.Reassignment` for what happens to the original weights.

Extra variables, all non-trainable: ``<weight>_pulling_indices`` (kernel-shaped: uint8 up to 256 clusters,
else int32) with ``Reassignment.FIXED``; ``<weight>_sparsity_mask`` (kernel-shaped) and ``<weight>_centroid_pin``
(codebook-shaped) with ``preserve_sparsity``. On TensorFlow each clustered weight also has a workspace
of kernel-shaped buffers that its training steps write in place (:mod:`._tf_lookup`; not Keras weights,
never saved).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras
from keras import ops

from weightzip.core import CentroidInitialization
from weightzip.core.errors import ArgumentTypeError
from weightzip.keras._direct_call import DECLINED
from weightzip.keras._rewrite import copy_layer
from weightzip.keras._substitution import SubstitutingWrapper
from weightzip.keras.clustering._initial_clusters import initial_clusters
from weightzip.keras.clustering.clusterable_layer import ClusterableWeight
from weightzip.keras.clustering.config import ClusteringParams, GradientAggregation, Reassignment
from weightzip.keras.clustering.ops import clustered_kernel
from weightzip.keras.clustering.registry import (
    UnsupportedLayerError,
    clusterable_weights,
    register_clustering_wrapper,
)


def _name_scope_of(layer):
    """The layer's name scope, so that variables created outside `build` get unique paths."""
    opener = getattr(layer, "_open_name_scope", None)
    return opener() if callable(opener) else contextlib.nullcontext()


def _workspace_for(variable, codebook):
    """The in-place buffers of TensorFlow training steps (see :mod:`._tf_lookup`); None on other backends."""
    if keras.backend.backend() != "tensorflow":
        return None
    from weightzip.keras.clustering import _tf_lookup

    return _tf_lookup.workspace_for(variable, codebook.size)


@dataclass(frozen=True, eq=False)
class _ClusterState:
    """The wrapper's variables for one clustered weight of the wrapped layer."""

    weight: ClusterableWeight
    centroids: object
    pulling_indices: object | None
    sparsity_mask: object | None
    centroid_pin: object | None
    workspace: object | None = None  # TensorFlow: the _tf_lookup.Workspace of its training steps

    @property
    def channel_axis(self) -> int | None:
        return self.weight.channel_axis if len(self.centroids.shape) == 2 else None


@register_clustering_wrapper
@keras.saving.register_keras_serializable(package="weightzip")
class ClusterWeights(SubstitutingWrapper):
    """Wraps a layer so that each of its kernels uses at most `number_of_clusters` distinct values.

    Build it with :func:`weightzip.keras.cluster_weights` rather than directly. Arguments are those of
    :class:`.ClusteringParams`; other keyword arguments go to :class:`keras.layers.Layer` (e.g. name).
    A built layer is clustered at once; an unbuilt one when it is built.
    """

    def __init__(
        self,
        layer,
        number_of_clusters,
        cluster_centroids_init=CentroidInitialization.LINEAR,
        cluster_per_channel=False,
        preserve_sparsity=False,
        cluster_gradient_aggregation=GradientAggregation.SUM,
        reassignment=Reassignment.EVERY_STEP,
        seed=None,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise ArgumentTypeError(f"ClusterWeights wraps a keras Layer, got {type(layer).__name__}")
        if isinstance(layer, ClusterWeights):
            raise UnsupportedLayerError(f"layer {layer.name!r} is already clustered")
        params = ClusteringParams(
            number_of_clusters,
            cluster_centroids_init,
            cluster_per_channel,
            preserve_sparsity,
            cluster_gradient_aggregation,
            reassignment,
            seed,
        )
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)
        self.params = params
        self.supports_masking = getattr(layer, "supports_masking", False)
        self._cluster_states: tuple[_ClusterState, ...] = ()
        if layer.built:
            with _name_scope_of(self):
                self._create_cluster_state()
            self.built = True

    # ----------------------------------------------------------------------------------- state

    def build(self, input_shape=None):
        if not self.layer.built:
            if isinstance(self.layer, keras.layers.MultiHeadAttention):
                raise UnsupportedLayerError(
                    f"cluster_weights needs a built {type(self.layer).__name__} (it takes several "
                    f"inputs): call {self.layer.name!r} once, or cluster the whole model"
                )
            self.layer.build(input_shape)
        self._create_cluster_state()

    def _create_cluster_state(self):
        targets = clusterable_weights(self.layer)
        keys = [target.key for target in targets]
        if len(set(keys)) != len(keys):
            raise UnsupportedLayerError(f"layer {self.layer.name!r} has clusterable weights named alike: {keys}")
        states = []
        for target in targets:
            kernel = ops.convert_to_numpy(ops.convert_to_tensor(target.variable))
            init = initial_clusters(kernel, self.params, target.channel_axis)
            per_channel = self.params.cluster_per_channel
            codebook = init.codebook if per_channel else init.codebook[0]
            centroids = self._state_variable(f"{target.key}_cluster_centroids", codebook, True)
            indices = pin = mask = None
            if init.indices is not None:
                indices = self._state_variable(f"{target.key}_pulling_indices", init.indices, False)
                target.variable.trainable = False
            if init.sparsity_mask is not None:
                mask = self._state_variable(f"{target.key}_sparsity_mask", init.sparsity_mask, False)
                pin_values = init.centroid_pin if per_channel else init.centroid_pin[0]
                pin = self._state_variable(f"{target.key}_centroid_pin", pin_values, False)
            states.append(_ClusterState(target, centroids, indices, mask, pin, _workspace_for(target.variable, codebook)))
        self._cluster_states = tuple(states)

    def _state_variable(self, name, values, trainable, dtype=None):
        variable = self.add_weight(
            name=name,
            shape=values.shape,
            dtype=dtype or values.dtype.name,
            initializer="zeros",
            trainable=trainable,
            autocast=False,
        )
        variable.assign(values)
        return variable

    def get_build_config(self):
        return {"layer": self.layer.get_build_config()}

    def build_from_config(self, config):
        layer_config = (config or {}).get("layer")
        if not self.layer.built and layer_config:
            self.layer.build_from_config(layer_config)
        if self.layer.built and not self.built:
            self._create_cluster_state()
            self.built = True

    # ------------------------------------------------------------------------------- forward

    def clustered_weights(self) -> dict[str, object]:
        """The current clustered value of each clustered weight, by name (backend tensors)."""
        return {state.weight.name: self._clustered_value(state) for state in self._cluster_states}

    @property
    def clustered_targets(self) -> tuple[ClusterableWeight, ...]:
        """The wrapped layer's clustered weights: name, variable and channel axis of each."""
        return tuple(state.weight for state in self._cluster_states)

    @property
    def cluster_centroids(self) -> dict[str, object]:
        """The codebook variable of each clustered weight, by name: ``(k,)`` or ``(channels, k)``."""
        return {state.weight.name: state.centroids for state in self._cluster_states}

    @property
    def pulling_indices(self) -> dict[str, object]:
        """The stored assignment of each clustered weight (``Reassignment.FIXED`` only), by name."""
        return {state.weight.name: state.pulling_indices for state in self._cluster_states
                if state.pulling_indices is not None}

    def _clustered_value(self, state: _ClusterState):
        return clustered_kernel(
            state.centroids,
            state.weight.variable,  # (read by clustered_kernel: PyTorch's path reads a variable at less cost)
            channel_axis=state.channel_axis,
            fixed_indices=state.pulling_indices,
            centroid_pin=state.centroid_pin,
            sparsity_mask=state.sparsity_mask,
            average_gradient=self.params.cluster_gradient_aggregation is GradientAggregation.AVG,
            workspace=state.workspace,
        )

    def substitutes(self) -> list:
        return [(state.weight.variable, self._clustered_value(state)) for state in self._cluster_states]

    def call(self, inputs, *args, **kwargs):
        backend = keras.backend.backend()
        if backend in ("torch", "tensorflow", "jax"):  # a large Dense layer's fused product: see _fused_dense
            if backend == "torch":
                from weightzip.keras.clustering._torch_dense import fused_call
            elif backend == "tensorflow":
                from weightzip.keras.clustering._tf_dense import fused_call
            else:
                from weightzip.keras.clustering._jax_dense import fused_call
            outputs = fused_call(self, inputs, args, kwargs)
            if outputs is not DECLINED:
                return outputs
        return super().call(inputs, *args, **kwargs)

    # --------------------------------------------------------------------------------- strip

    def stripped_layer(self) -> keras.layers.Layer:
        """A copy of the wrapped layer whose kernels hold their clustered values (all trainable)."""
        values = {
            id(state.weight.variable): ops.convert_to_numpy(self._clustered_value(state))
            for state in self._cluster_states
        }
        clean = copy_layer(self.layer)
        for source, target in zip(self.layer.weights, clean.weights):
            if id(source) in values:
                target.assign(values[id(source)])
                target.trainable = True
        return clean

    # ------------------------------------------------------------------------------- config

    def get_config(self):
        return {**super().get_config(), **self.params.to_config()}
