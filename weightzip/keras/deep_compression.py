"""Deep Compression for a Keras model: prune → cluster (centroids fine-tuned) → entropy-coded `.wz`.

The three stages of Han, Mao & Dally (2016), each followed by retraining on the user's data:

1. magnitude pruning to a target sparsity (a polynomial schedule over the pruning epochs, then the
   pruned weights stay zero);
2. weight sharing: every kernel clustered to k centroids with sparsity preserved (zeros stay zero),
   centroids fine-tuned;
3. storage: sparse relative-index layout, ceil(log2 k)-bit indices and Huffman/ANS coding (`.wz`).

Dense/Embedding/recurrent kernels and convolution kernels get separate sparsity and cluster counts
(the paper prunes conv layers less and gives them 8-bit indices, fully connected ones 5 bits).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from weightzip.core import CentroidInitialization
from weightzip.core.errors import WeightzipError
from weightzip.core.pruning import PolynomialDecay, apply_mask, magnitude_mask
from weightzip.format import Coding, WriteOptions
from weightzip.keras.cluster import cluster_weights, strip_clustering
from weightzip.keras.pruning import prune_low_magnitude, strip_pruning
from weightzip.keras.pruning_callbacks import UpdatePruningStep
from weightzip.keras.pruning_registry import compressible_weight_names
from weightzip.keras.storage import load_wz, save_wz

_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D,
               keras.layers.SeparableConv2D)


@dataclass(frozen=True)
class DeepCompressionConfig:
    """What to compress how much, and how long to retrain after each stage.

    sparsity / conv_sparsity: fraction of kernel weights pruned in non-convolutional / convolutional
        layers (0 disables pruning of that kind).
    clusters / conv_clusters: shared weights per kernel (k; one of them is the pruned zero).
    prune_epochs / cluster_epochs: retraining epochs after pruning and after clustering (0: post-training).
    learning_rate: Adam learning rate for both retraining stages.
    init: centroid initialisation (the paper's best, LINEAR, by default).
    """

    sparsity: float = 0.92
    conv_sparsity: float = 0.6
    clusters: int = 32
    conv_clusters: int = 64
    prune_epochs: int = 6
    cluster_epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 5e-4
    init: CentroidInitialization = CentroidInitialization.LINEAR
    seed: int = 0

    def __post_init__(self):
        for name in ("sparsity", "conv_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        for name in ("clusters", "conv_clusters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 65536:
                raise ValueError(f"{name} must be an integer in [2, 65536], got {value!r}")
        for name in ("prune_epochs", "cluster_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
                raise ValueError(f"{name} must be a non-negative integer (batch_size >= 1), got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        object.__setattr__(self, "init", CentroidInitialization.parse(self.init))


@dataclass(frozen=True)
class Dataset:
    """Training data for retraining and held-out data for the accuracy of every stage (integer labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Stage:
    name: str
    accuracy: float
    size_bytes: int


@dataclass
class CompressionReport:
    """Accuracy and `.wz` size after each stage; `original_bytes` is the float32 parameter size."""

    original_bytes: int
    stages: list[Stage] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str, str, str]]:
        base = self.stages[0].accuracy if self.stages else float("nan")
        return [(stage.name, f"{stage.accuracy:.2%}", f"{(stage.accuracy - base) * 100:+.2f} pt",
                 f"{stage.size_bytes:,} B", f"{self.original_bytes / stage.size_bytes:.1f}x") for stage in self.stages]


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of a classifier with integer labels."""
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == np.asarray(y)))


def parameter_bytes(model: keras.Model) -> int:
    """Size of the model's parameters stored as float32: the reference of every compression rate."""
    return 4 * sum(math.prod(variable.shape) for variable in model.weights)


def prune(model: keras.Model, data: Dataset, config: DeepCompressionConfig, loss) -> keras.Model:
    """Stage 1: magnitude pruning, then retraining with the pruned weights held at zero.

    The sparsity ramps up polynomially over the first half of the pruning epochs (TFMOT's
    PolynomialDecay) and stays at its target for the rest. With `prune_epochs=0` the masks are applied
    once, without retraining. Returns a plain model whose kernels hold exact zeros.
    """
    steps_per_epoch = math.ceil(len(data.x_train) / config.batch_size)
    ramp_end = max(1, steps_per_epoch * max(1, config.prune_epochs // 2))

    def wrap(layer):
        target = _layer_sparsity(layer, config)
        if target <= 0:
            return layer
        if config.prune_epochs == 0:
            return _pruned_once(layer, target)
        schedule = PolynomialDecay(initial_sparsity=0.0, final_sparsity=target, begin_step=0,
                                   end_step=ramp_end, frequency=max(1, ramp_end // 10))
        return prune_low_magnitude(layer, pruning_schedule=schedule)

    pruned = _clone_with_weights(model, wrap)
    if config.prune_epochs == 0:
        return pruned
    _fit(pruned, data, config, loss, config.prune_epochs, callbacks=[UpdatePruningStep()])
    return strip_pruning(pruned)


def cluster(model: keras.Model, data: Dataset, config: DeepCompressionConfig, loss) -> keras.Model:
    """Stage 2: sparsity-preserving weight clustering, then centroid fine-tuning; returns a plain model."""

    def wrap(layer):
        if not compressible_weight_names(layer):
            return layer
        k = config.conv_clusters if isinstance(layer, _CONV_TYPES) else config.clusters
        return cluster_weights(layer, number_of_clusters=k, cluster_centroids_init=config.init,
                               preserve_sparsity=True, seed=config.seed)

    clustered = _clone_with_weights(model, wrap)
    _fit(clustered, data, config, loss, config.cluster_epochs)
    return strip_clustering(clustered)


def _layer_sparsity(layer, config: DeepCompressionConfig) -> float:
    if not compressible_weight_names(layer):
        return 0.0
    return config.conv_sparsity if isinstance(layer, _CONV_TYPES) else config.sparsity


def _pruned_once(layer, sparsity: float):
    """Post-training pruning: the layer's kernels with their smallest-magnitude weights set to zero."""
    for name in compressible_weight_names(layer):
        variable = getattr(layer, name)
        kernel = keras.ops.convert_to_numpy(variable)
        variable.assign(apply_mask(kernel, magnitude_mask(kernel, sparsity)))
    return layer


def _clone_with_weights(model: keras.Model, wrap) -> keras.Model:
    """A clone of `model` whose layers are copies holding the source weights, each passed through `wrap`."""

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if layer.weights:
            copy.build_from_config(layer.get_build_config())
            copy.set_weights(layer.get_weights())
            return wrap(copy)
        return copy

    return keras.models.clone_model(model, clone_function=clone)


def _fit(model, data: Dataset, config: DeepCompressionConfig, loss, epochs: int, callbacks=()):
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)
    if epochs > 0:
        model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=config.batch_size, verbose=0,
                  callbacks=list(callbacks))


def compress(model: keras.Model, data: Dataset, output: str | os.PathLike, *,
             config: DeepCompressionConfig = DeepCompressionConfig(), loss=None, overwrite: bool = False,
             progress=None) -> tuple[keras.Model, CompressionReport]:
    """Run the three stages on `model` and write the final `.wz` to `output`.

    `loss` defaults to the model's compiled loss. `progress(message)` is called before each stage.
    Returns the decoded model (read back from `output`) and the per-stage report; the last stage's
    size is the size of `output`.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True to replace it")
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise WeightzipError("the model is not compiled: pass loss= (e.g. a SparseCategoricalCrossentropy)")
    say = progress or (lambda message: None)
    keras.utils.set_random_seed(config.seed)
    report = CompressionReport(parameter_bytes(model))
    with tempfile.TemporaryDirectory() as scratch:
        def measured(name: str, stage_model: keras.Model, coding: Coding) -> None:
            path = Path(scratch) / f"{len(report.stages)}.wz"
            size = save_wz(stage_model, path, options=WriteOptions(coding=coding))
            report.stages.append(Stage(name, accuracy(stage_model, data.x_test, data.y_test), size))

        say("measuring the float model")
        measured("float (raw .wz)", model, Coding.PACKED)
        say("stage 1/3: pruning and retraining")
        pruned = prune(model, data, config, loss)
        measured("pruned (sparse, relative indices)", pruned, Coding.PACKED)
        say("stage 2/3: clustering and retraining the centroids")
        clustered = cluster(pruned, data, config, loss)
        measured("pruned + clustered (packed indices)", clustered, Coding.PACKED)
        say("stage 3/3: entropy coding")
        save_wz(clustered, output, overwrite=overwrite, extra_metadata={"deep_compression": _config_dict(config)})
    decoded = load_wz(output)
    report.stages.append(Stage("+ Huffman/ANS coding (.wz file)", accuracy(decoded, data.x_test, data.y_test),
                               os.path.getsize(output)))
    return decoded, report


def _config_dict(config: DeepCompressionConfig) -> dict:
    values = {name: getattr(config, name) for name in config.__dataclass_fields__}
    values["init"] = config.init.value
    return values
