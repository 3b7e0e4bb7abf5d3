"""``QuantizeWrapper``: quantisation-aware training of one Keras layer, optionally preserving sparsity/clusters.

The wrapped layer computes with a fake-quantised kernel and its output passes through an activation fake
quantiser whose range is a moving average of the observed ranges (TFMOT's default 8-bit scheme). What the
kernel is made of depends on the :class:`Preserve` mode:

- ``NONE`` (QAT): the layer's own kernel variable.
- ``SPARSITY`` (PQAT): kernel * a frozen 0/1 mask taken from the kernel's zeros, so pruned weights stay 0.
- ``CLUSTERS`` (CQAT): ``centroids[indices]``; the *centroids* train, the indices are frozen. Quantising a
  tensor whose every value is one of k centroids yields at most k int8 values per channel, so the clusters
  survive conversion — whereas plain QAT moves each weight independently and destroys them.
- ``SPARSE_CLUSTERS`` (PCQAT): as ``CLUSTERS`` with the zero centroid frozen at exactly 0.

The codebook of a clustered kernel is recovered losslessly from its values
(:func:`weightzip.core.palette.palettize_exact`), so any clustered model — whichever front end or wrapper
produced it — can be quantised, once clustering wrappers are stripped.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from weightzip.core.errors import InvalidArgumentError, InvalidClusterCountError
from weightzip.core.options import ParsableEnum
from weightzip.core.palette import palettize_exact
from weightzip.keras._layers import qat_layer_names, qat_layout
from weightzip.keras._rewrite import copy_layer
from weightzip.keras._substitution import call_with_substitutes
from weightzip.keras.clustering.registry import UnsupportedLayerError, clusterable_weights
from weightzip.keras.quantization.ops import fake_quantize_activations, fake_quantize_weights

# Layers whose kernel TFLite quantises per output channel, and which kernel axes share one scale, are the
# `qat_layout` column of the layer table (weightzip.keras._layers): all but the last for Dense/Conv (output
# channels last), the spatial axes for depthwise kernels (TFLite gives each of the in_channels *
# depth_multiplier filters its own scale). The kernel itself is found by the shared layer registry
# (:func:`weightzip.keras.clustering.registry.clusterable_weights`).

MAX_PALETTE = 256  # more distinct values per channel than int8 has levels: the kernel is not clustered


class Preserve(ParsableEnum):
    """What quantisation-aware training must keep intact in the kernels."""

    NONE = "none"
    SPARSITY = "sparsity"
    CLUSTERS = "clusters"
    SPARSE_CLUSTERS = "sparse_clusters"


def quantizable_kernel(layer) -> str | None:
    """The scale layout (``"all_but_last"`` or ``"spatial"``) for layers this wrapper supports, else None."""
    return qat_layout(layer)


def _reduce_axes(layout: str, rank: int) -> tuple[int, ...]:
    return tuple(range(rank - 1)) if layout == "all_but_last" else tuple(range(rank - 2))


@keras.saving.register_keras_serializable(package="weightzip")
class QuantizeWrapper(keras.layers.Wrapper):
    """Fake-quantise `layer`'s kernel (int8, per channel) and output (int8, moving-average range).

    preserve: a :class:`Preserve` mode (or its string value).
    quantize_output: whether the layer's output gets an activation fake quantiser.
    ema_decay: moving-average decay of the output range (TFMOT: 0.999); the first batch sets it.
    palette_axis / palette_width: codebook layout for the cluster modes; computed from the kernel on first
      use and stored in the config so that a saved model rebuilds the same variables.
    """

    def __init__(self, layer, preserve=Preserve.NONE, quantize_output: bool = True, ema_decay: float = 0.999,
                 num_bits: int = 8, palette_axis: int | None = None, palette_width: int | None = None, **kwargs):
        if isinstance(layer, keras.layers.Wrapper):
            raise UnsupportedLayerError(
                f"layer {layer.name!r} is a {type(layer).__name__}: strip pruning/clustering wrappers before "
                "quantisation-aware training"
            )
        if quantizable_kernel(layer) is None:
            raise UnsupportedLayerError(
                f"layer {layer.name!r} ({type(layer).__name__}) is not supported by quantisation-aware training; "
                f"supported: {qat_layer_names()}"
            )
        if not 0.0 <= float(ema_decay) < 1.0:
            raise InvalidArgumentError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if not isinstance(num_bits, int) or not 2 <= num_bits <= 8:
            raise InvalidArgumentError(f"num_bits must be an integer in [2, 8], got {num_bits!r}")
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(layer, **kwargs)
        self.preserve = Preserve.parse(preserve, "preserve")
        self.quantize_output = bool(quantize_output)
        self.ema_decay = float(ema_decay)
        self.num_bits = num_bits
        self.palette_axis = palette_axis
        self.palette_width = palette_width
        if self.preserve in (Preserve.CLUSTERS, Preserve.SPARSE_CLUSTERS) and palette_width is None:
            self.palette_axis, self.palette_width = self._palette_layout()

    # ------------------------------------------------------------------ construction

    def _kernel_variable(self):
        (target,) = clusterable_weights(self.layer)  # Dense, Conv*, DepthwiseConv*: exactly one kernel
        return target.variable

    def _kernel_values(self) -> np.ndarray:
        if not self.layer.built:
            raise UnsupportedLayerError(
                f"cluster-preserving quantisation needs the built, clustered layer {self.layer.name!r}"
            )
        return ops.convert_to_numpy(self._kernel_variable())

    def _palette_layout(self) -> tuple[int | None, int]:
        """Per-tensor codebook when the whole kernel has <= 256 values, else per output channel."""
        kernel = self._kernel_values()
        distinct = np.unique(kernel).size
        if distinct <= MAX_PALETTE:
            return None, int(distinct)
        per_channel = max(np.unique(channel).size for channel in np.moveaxis(kernel, -1, 0))
        if per_channel > MAX_PALETTE:
            raise InvalidClusterCountError(
                f"layer {self.layer.name!r} has {per_channel} distinct kernel values in a channel: it is not "
                "clustered; cluster and strip_clustering it first, or quantise it with preserve='none'"
            )
        return -1, int(per_channel)

    def build(self, input_shape=None):
        super().build(input_shape)
        layout = quantizable_kernel(self.layer)
        self._kernel = self._kernel_variable()
        shape = tuple(self._kernel.shape)
        self._reduce = _reduce_axes(layout, len(shape))
        kernel = ops.convert_to_numpy(self._kernel)
        if self.preserve is Preserve.SPARSITY:
            self.sparsity_mask = self.add_weight(
                name="sparsity_mask", shape=shape, dtype=self._kernel.dtype, trainable=False,
                initializer=keras.initializers.Constant((kernel != 0).astype(kernel.dtype)))
        elif self.preserve in (Preserve.CLUSTERS, Preserve.SPARSE_CLUSTERS):
            self._build_codebook(kernel)
        if self.quantize_output:
            self.output_min = self.add_weight(name="output_min", shape=(), initializer="zeros", trainable=False)
            self.output_max = self.add_weight(name="output_max", shape=(), initializer="zeros", trainable=False)
            self.output_range_set = self.add_weight(name="output_range_set", shape=(), initializer="zeros",
                                                    trainable=False)
        self.built = True

    def _build_codebook(self, kernel: np.ndarray):
        try:
            palette = palettize_exact(kernel, self.palette_width, axis=self.palette_axis)
            codebook = palette.codebook
            flat_index = (palette.group_of_each_weight() * codebook.shape[1] + palette.indices).astype(np.int32)
        except InvalidClusterCountError:
            # Rebuilding from a config (e.g. loading a saved model): the variables are about to be loaded.
            groups = 1 if self.palette_axis is None else kernel.shape[self.palette_axis]
            codebook = np.zeros((groups, self.palette_width), dtype=kernel.dtype)
            flat_index = np.zeros(kernel.shape, dtype=np.int32)
        self.centroids = self.add_weight(name="cluster_centroids", shape=codebook.shape, dtype=self._kernel.dtype,
                                         initializer=keras.initializers.Constant(codebook), trainable=True)
        self.cluster_index = self.add_weight(name="cluster_index", shape=flat_index.shape, dtype="int32",
                                             initializer=keras.initializers.Constant(flat_index), trainable=False)
        movable = (codebook != 0) if self.preserve is Preserve.SPARSE_CLUSTERS else np.ones_like(codebook)
        self.centroid_movable = self.add_weight(
            name="centroid_movable", shape=codebook.shape, dtype=self._kernel.dtype, trainable=False,
            initializer=keras.initializers.Constant(movable.astype(kernel.dtype)))
        self._kernel.trainable = False  # the centroids train instead; the kernel is recomputed from them

    # ------------------------------------------------------------------ forward

    def float_kernel(self):
        """The kernel before quantisation: the variable, the masked variable, or centroids[indices]."""
        if self.preserve is Preserve.SPARSITY:
            return ops.multiply(self._kernel, self.sparsity_mask)
        if self.preserve in (Preserve.CLUSTERS, Preserve.SPARSE_CLUSTERS):
            centroids = ops.reshape(ops.multiply(self.centroids, self.centroid_movable), (-1,))
            return ops.take(centroids, self.cluster_index, axis=0)
        return self._kernel

    def quantized_kernel(self):
        """The fake-quantised kernel the layer computes with (what the int8 model will hold, dequantised)."""
        return fake_quantize_weights(self.float_kernel(), self._reduce, self.num_bits)

    def call(self, inputs, training=None):
        outputs, losses = call_with_substitutes(self.layer, [(self._kernel, self.quantized_kernel())],
                                                lambda: self.layer(inputs, training=training))
        for loss in losses:
            self.add_loss(loss)
        if not self.quantize_output:
            return outputs
        if training:
            self._track_output_range(outputs)
        return fake_quantize_activations(outputs, self.output_min, self.output_max, self.num_bits)

    def _track_output_range(self, outputs):
        batch_min = ops.stop_gradient(ops.min(outputs))
        batch_max = ops.stop_gradient(ops.max(outputs))
        seen = self.output_range_set
        decay = self.ema_decay
        self.output_min.assign(ops.where(seen > 0, decay * self.output_min + (1 - decay) * batch_min, batch_min))
        self.output_max.assign(ops.where(seen > 0, decay * self.output_max + (1 - decay) * batch_max, batch_max))
        self.output_range_set.assign(1.0)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # ------------------------------------------------------------------ export

    def stripped_layer_weights(self) -> list[np.ndarray]:
        """The wrapped layer's weights with the kernel replaced by its fake-quantised value."""
        quantized = ops.convert_to_numpy(self.quantized_kernel())
        return [quantized if v is self._kernel else ops.convert_to_numpy(v) for v in self.layer.weights]

    def stripped_layer(self) -> keras.layers.Layer:
        """A copy of the wrapped layer whose kernel holds its fake-quantised value (what strip_quantization returns)."""
        stripped = copy_layer(self.layer)
        if self.built:
            stripped.set_weights(self.stripped_layer_weights())
        return stripped

    def get_config(self):
        config = super().get_config()
        config.update({
            "preserve": self.preserve.value,
            "quantize_output": self.quantize_output,
            "ema_decay": self.ema_decay,
            "num_bits": self.num_bits,
            "palette_axis": self.palette_axis,
            "palette_width": self.palette_width,
        })
        return config
