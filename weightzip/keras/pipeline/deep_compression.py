"""Deep Compression for a Keras model: prune → cluster (centroids fine-tuned) → entropy-coded `.wz`.

The three stages of Han, Mao & Dally (2016), each followed by retraining on the user's data:

1. magnitude pruning to a target sparsity (a polynomial schedule over the first part of the pruning
   epochs, then the pruned weights stay zero while the others retrain);
2. weight sharing: every kernel clustered to k centroids with sparsity preserved (zeros stay zero),
   centroids fine-tuned;
3. storage: sparse relative-index layout, ceil(log2 k)-bit indices and Huffman/ANS coding (`.wz`).

Dense/Embedding/recurrent kernels and convolution kernels get separate sparsity and cluster counts
(the paper prunes conv layers less and gives them 8-bit indices, fully connected ones 5 bits); any
layer can be given its own by name (the paper's per-layer pruning rates).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from weightzip.core.errors import WeightzipError
from weightzip.core.pruning import PolynomialDecay, apply_mask, magnitude_mask
from weightzip.format import Coding, WriteOptions
from weightzip.keras._rewrite import Rewriter, copy_layer
from weightzip.keras.clustering.api import cluster_weights, strip_clustering
from weightzip.keras.pipeline.deep_compression_config import Dataset, DeepCompressionConfig
from weightzip.keras.pruning.api import prune_low_magnitude, strip_pruning
from weightzip.keras.pruning.callbacks import UpdatePruningStep
from weightzip.keras.pruning.registry import compressible_weight_names, prunable_weights
from weightzip.keras.storage import load_wz, save_wz

# Mask updates while the sparsity ramps up (TFMOT's `frequency`, expressed as a count).
_MASK_UPDATES = 10


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

    def compression(self, stage: Stage) -> float:
        """How many times smaller than the float32 parameters `stage`'s file is."""
        return self.original_bytes / stage.size_bytes

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """(stage, accuracy, change vs the first stage, file size, compression) as display strings."""
        base = self.stages[0].accuracy if self.stages else float("nan")
        return [(stage.name, f"{stage.accuracy:.2%}", f"{(stage.accuracy - base) * 100:+.2f} pt",
                 f"{stage.size_bytes:,} B", f"{self.compression(stage):.1f}x") for stage in self.stages]

    def table(self, title: str):
        """The rows as a :class:`rich.table.Table`, for terminals."""
        from rich.table import Table

        table = Table(title=title)
        for column in ("stage", "test accuracy", "Δ", ".wz size", "compression"):
            table.add_column(column)
        for row in self.rows():
            table.add_row(*row)
        return table


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of a classifier with integer labels."""
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == np.asarray(y)))


def parameter_bytes(model: keras.Model) -> int:
    """Size of the model's parameters stored as float32: the reference of every compression rate."""
    return 4 * sum(math.prod(variable.shape) for variable in model.weights)


def pruning_schedule(config: DeepCompressionConfig, target: float, steps_per_epoch: int) -> PolynomialDecay:
    """Sparsity 0 → `target` over the first `ramp_fraction` of the pruning steps, in equal mask updates.

    The ramp ends exactly on a mask update at a step that training reaches (the last step at the
    latest), so every layer reaches its target sparsity.
    """
    last_step = max(0, steps_per_epoch * config.prune_epochs - 1)
    ramp_steps = min(last_step, round(steps_per_epoch * config.prune_epochs * config.ramp_fraction))
    frequency = max(1, math.ceil(ramp_steps / _MASK_UPDATES))
    end_step = frequency * (ramp_steps // frequency)
    return PolynomialDecay(initial_sparsity=0.0, final_sparsity=target, begin_step=0, end_step=end_step,
                           power=config.ramp_power, frequency=frequency)


def prune(model: keras.Model, data: Dataset, config: DeepCompressionConfig, loss) -> keras.Model:
    """Stage 1: magnitude pruning, then retraining with the pruned weights held at zero.

    The sparsity ramps up polynomially (TFMOT's PolynomialDecay) over the first `ramp_fraction` of the
    pruning epochs and stays at its target for the rest. With `prune_epochs=0` the masks are applied
    once, without retraining. Returns a plain model whose kernels hold exact zeros.
    """
    steps_per_epoch = math.ceil(len(data.x_train) / config.batch_size)

    def wrap(layer):
        target = config.sparsity_of(layer)
        if target <= 0:
            return layer
        if config.prune_epochs == 0:
            return _pruned_once(layer, target)
        return prune_low_magnitude(layer, pruning_schedule=pruning_schedule(config, target, steps_per_epoch))

    pruned = _clone_with_weights(model, wrap)
    if config.prune_epochs == 0:
        return pruned
    _fit(pruned, data, config, loss, config.prune_epochs, config.learning_rate, callbacks=[UpdatePruningStep()],
         weight_decay=config.weight_decay)
    return strip_pruning(pruned)


def cluster(model: keras.Model, data: Dataset, config: DeepCompressionConfig, loss) -> keras.Model:
    """Stage 2: sparsity-preserving weight clustering, then centroid fine-tuning; returns a plain model."""

    def wrap(layer):
        if not compressible_weight_names(layer):
            return layer
        return cluster_weights(layer, number_of_clusters=config.clusters_of(layer),
                               cluster_centroids_init=config.init, preserve_sparsity=True,
                               reassignment=config.reassignment, seed=config.seed)

    clustered = _clone_with_weights(model, wrap)
    _fit(clustered, data, config, loss, config.cluster_epochs, config.fine_tuning_rate)
    return strip_clustering(clustered)


def _pruned_once(layer, sparsity: float):
    """Post-training pruning: the layer's kernels with their smallest-magnitude weights set to zero."""
    for weight in prunable_weights(layer):  # variables directly: composite layers name them "cell.kernel"
        kernel = keras.ops.convert_to_numpy(weight.variable)
        weight.variable.assign(apply_mask(kernel, magnitude_mask(kernel, sparsity)))
    return layer


def _clone_with_weights(model: keras.Model, wrap) -> keras.Model:
    """A clone of `model` whose layers are copies holding the source weights, each passed through `wrap`."""
    return Rewriter(lambda layer, rewriter: wrap(copy_layer(layer)) if layer.weights else None).clone(model)


def _fit(model, data: Dataset, config: DeepCompressionConfig, loss, epochs: int, learning_rate: float,
         callbacks=(), weight_decay: float = 0.0):
    steps = epochs * math.ceil(len(data.x_train) / config.batch_size)
    if config.cosine_decay and steps > 0:
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps,
                                                               alpha=config.final_learning_rate_fraction)
    optimizer = keras.optimizers.Adam(learning_rate, weight_decay=weight_decay or None)
    model.compile(optimizer=optimizer, loss=loss)
    if epochs > 0:
        model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=config.batch_size, verbose=0,
                  callbacks=list(callbacks))


def compress(model: keras.Model, data: Dataset, output: str | os.PathLike, *,
             config: DeepCompressionConfig = DeepCompressionConfig(), loss=None, overwrite: bool = False,
             progress=None) -> tuple[keras.Model, CompressionReport]:
    """Run the three stages on `model` and write the final `.wz` to `output`.

    `loss` defaults to the model's compiled loss. `progress(message)` is called before each stage.
    Returns the decoded model (read back from `output`) and the per-stage report; the last stage's
    size is the size of `output`. `model` itself is not modified.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True to replace it")
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise WeightzipError("the model is not compiled: pass loss= (e.g. a SparseCategoricalCrossentropy)")
    config.check_layer_names(model)
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
        save_wz(clustered, output, overwrite=overwrite, extra_metadata={"deep_compression": config.to_json()})
    decoded = load_wz(output)
    report.stages.append(Stage("+ Huffman/ANS coding (.wz file)", accuracy(decoded, data.x_test, data.y_test),
                               os.path.getsize(output)))
    return decoded, report
