"""Per-weight sensitivities of a Keras model from calibration inputs (no labels needed).

Two estimates of how much the model's outputs depend on each clusterable weight, the same names as
:mod:`weightzip.torch.calibration`:

- :func:`input_second_moments`: E[x²] of each input channel of the layer that owns a kernel (mean over
  samples and every other axis: time steps, pixels). For a linear map y = W x the squared output error
  of a weight change δ is ``Σ_i δ_i² E[x_i²]`` plus cross terms: these moments are the diagonal of the
  layer Hessian (the GPTQ / AWQ proxy), measured in the layer's own output units. Collected by wrapping
  each layer's ``call`` for one eager pass per batch: works on every Keras backend.
- :func:`fisher_diagonal`: the diagonal Fisher information of each weight, as on PyTorch: by default the
  Gaussian Fisher diag(JᵀJ) of the model's outputs, estimated with a random projection r ~ N(0, I) per
  sample (E_r[(∂ rᵀf/∂w)²] = Σ_j (∂f_j/∂w)²), so that Σ F_i δ_i² estimates the squared output error on one
  common scale for every layer (what per-layer allocation compares); with ``objective="kl"`` for
  classifiers, y is sampled from the float model's softmax (its outputs if they already are
  probabilities): the diagonal of the Hessian of the KL divergence from the float model's outputs, which
  weighs only the classes the model finds likely. Per-sample gradients on the TensorFlow, JAX and PyTorch
  backends.

Both return ``{variable path: array}``; :func:`importance_of` turns them into the per-weight importance
the core's weighted k-means takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import keras
import numpy as np

from weightzip.core.errors import WeightzipError
from weightzip.keras._rewrite import is_graph_model, iter_layers
from weightzip.keras.clustering.clusterable_layer import ClusterableWeight
from weightzip.keras.clustering.registry import (
    LayerKind,
    classify_layer,
    clusterable_weights,
    unsupported_layer_error,
)
from weightzip.keras.pipeline._gradients import per_sample_gradient
from weightzip.keras.pipeline._inputs import flat_outputs, run_model

_ATTENTION_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
# The input kernels that multiply an RNN layer's own input (a stacked cell's later kernels see hidden states).
_FIRST_CELL_KERNELS = {f"{side}{cell}.kernel" for side in ("", "forward_layer.", "backward_layer.")
                       for cell in ("cell", "cell.0")}


@dataclass(frozen=True)
class ModelWeight:
    """A clusterable kernel of a model: the layer it belongs to, the kernel, and the layer whose input
    it multiplies (None when that input is not a layer input, e.g. recurrent kernels)."""

    layer: keras.layers.Layer
    weight: ClusterableWeight
    input_layer: keras.layers.Layer | None
    input_axis: int | None

    @property
    def path(self) -> str:
        return self.weight.variable.path


def model_weights(model: keras.Model, *, skip_unsupported: bool = False) -> list[ModelWeight]:
    """Every clusterable kernel of `model` (rank >= 2, floating point), in layer order (nested models flattened).

    Raises :class:`~weightzip.keras.UnsupportedLayerError` for a layer with weights that cannot be clustered,
    unless `skip_unsupported` (the caller then reports those layers itself).
    """
    found = []
    for layer in flattened_layers(model):
        kind = classify_layer(layer)
        if kind is LayerKind.UNSUPPORTED:
            if skip_unsupported:
                continue
            raise unsupported_layer_error(layer)
        if kind is not LayerKind.CLUSTERED:
            continue
        for weight in clusterable_weights(layer):
            variable = weight.variable
            if len(variable.shape) < 2 or "float" not in str(variable.dtype):
                continue
            owner, axis = input_of(layer, weight)
            found.append(ModelWeight(layer, weight, owner, axis))
    return found


def flattened_layers(model) -> Iterable[keras.layers.Layer]:
    """The layers of `model`, nested Sequential/Functional models replaced by their layers."""
    return (layer for layer in iter_layers(model, descend=is_graph_model) if not is_graph_model(layer))


def input_of(layer, weight: ClusterableWeight) -> tuple[keras.layers.Layer | None, int | None]:
    """(layer whose first call argument the kernel multiplies, kernel axis of its input channels)."""
    shape = tuple(weight.variable.shape)
    if len(shape) < 2:
        return None, None
    layers = keras.layers
    if weight.name.split(".")[0] in [name.lstrip("_") for name in _ATTENTION_PROJECTIONS]:
        projection = getattr(layer, "_" + weight.name.split(".")[0], None)
        return (projection, 0) if projection is not None else (None, None)
    if isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)):
        return layer, len(shape) - 1
    if isinstance(layer, (layers.SeparableConv1D, layers.SeparableConv2D)):
        return (layer, len(shape) - 2) if weight.name == "depthwise_kernel" else (None, None)
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.DepthwiseConv1D,
                          layers.DepthwiseConv2D, layers.Dense)):
        return layer, len(shape) - 2
    if isinstance(layer, layers.EinsumDense):
        return layer, 0  # "ab,bc->ac"-style equations contract the input's last axis with the kernel's first
    if isinstance(layer, (layers.RNN, layers.Bidirectional)) and weight.name in _FIRST_CELL_KERNELS:
        return layer, 0 if len(shape) == 2 else len(shape) - 2  # (in, gates) or ConvLSTM (..., in, gates)
    return None, None  # Embedding, recurrent kernels, stacked cells, custom layers: Fisher only


# ---------------------------------------------------------------- E[x²] per input channel


def input_second_moments(model: keras.Model, batches: Iterable, *,
                         weights: list[ModelWeight] | None = None) -> dict[str, np.ndarray]:
    """variable path -> E[x²] per input channel of the layer input the kernel multiplies.

    batches: an iterable of input batches (arrays, or whatever ``model(batch)`` takes). Kernels whose
    input is not a layer's call argument (Embedding, recurrent kernels) are absent from the result.
    weights: the kernels to measure (default: :func:`model_weights`).
    """
    weights = [w for w in (model_weights(model) if weights is None else weights) if w.input_layer is not None]
    totals: dict[int, list] = {}
    layers_by_id = {id(w.input_layer): w.input_layer for w in weights}
    originals = {}

    def recorder(target, call):
        def recording_call(*args, **kwargs):
            inputs = args[0] if args else next(iter(kwargs.values()))
            values = keras.ops.convert_to_numpy(inputs).astype(np.float64)
            channels = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values.reshape(1, -1)
            entry = totals.setdefault(id(target), [np.zeros(channels.shape[1]), 0])
            entry[0] += np.einsum("ij,ij->j", channels, channels)
            entry[1] += channels.shape[0]
            return call(*args, **kwargs)
        return recording_call

    for key, layer in layers_by_id.items():
        originals[key] = layer.__dict__.get("call")
        object.__setattr__(layer, "call", recorder(layer, layer.call))
    try:
        seen = 0
        for batch in batches:
            run_model(model, batch)
            seen += 1
    finally:
        for key, layer in layers_by_id.items():
            if originals[key] is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", originals[key])
    if seen == 0:
        raise WeightzipError("no calibration batches: input second moments need at least one")
    moments = {}
    for weight in weights:
        entry = totals.get(id(weight.input_layer))
        if entry is None or entry[1] == 0:
            continue
        mean_square = entry[0] / entry[1]
        if mean_square.shape[0] == weight.weight.variable.shape[weight.input_axis]:
            moments[weight.path] = mean_square
    return moments


# ---------------------------------------------------------------- diagonal Fisher


def fisher_diagonal(model: keras.Model, batches: Iterable, *, classifier: bool | None = None,
                    seed: int = 0, weights: list[ModelWeight] | None = None,
                    objective: str = "output") -> dict[str, np.ndarray]:
    """variable path -> diagonal Fisher information of each clusterable kernel (same shape).

    batches: iterable of input batches; every sample contributes its own squared gradient (per-sample
    Fisher, not the square of batch gradients). objective: "output" (default, as on PyTorch: the Gaussian
    Fisher diag(JᵀJ) of the outputs, from a random projection per sample, so Σ F_i δ_i² estimates the squared
    output error that the relative output error reports) or "kl" (classifiers: a label drawn from the
    model's own softmax per sample, the Hessian of the KL to the float model; it weighs only the likely
    classes). classifier: outputs are class scores (logits or probabilities, last axis = classes); None: a
    2-D output with >= 2 columns, as :func:`weightzip.core.fidelity.measure_fidelity` decides (used by "kl").
    weights: the kernels (default: :func:`model_weights`).
    """
    if objective not in ("output", "kl"):
        raise WeightzipError(f"objective must be 'output' or 'kl', got {objective!r}")
    weights = model_weights(model) if weights is None else weights
    variables = [w.weight.variable for w in weights]
    sums = [np.zeros(tuple(v.shape)) for v in variables]
    rng = np.random.default_rng(seed)
    gradient = per_sample_gradient(model, variables)
    samples = 0
    for batch in batches:
        batch = np.asarray(batch)
        outputs = flat_outputs(run_model(model, batch)).astype(np.float64)
        is_classifier = objective == "kl" and (
            classifier if classifier is not None else (outputs.ndim == 2 and outputs.shape[1] >= 2))
        for position in range(batch.shape[0]):
            if is_classifier:
                probabilities = _probabilities(outputs[position])
                direction = np.zeros_like(outputs[position], dtype=np.float32)
                direction[rng.choice(probabilities.shape[0], p=probabilities)] = 1.0
                mode = "log_probability" if _are_probabilities(outputs[position]) else "log_softmax"
            else:
                direction = rng.standard_normal(outputs[position].shape).astype(np.float32)
                mode = "projection"
            for total, grad in zip(sums, gradient(batch[position:position + 1], direction, mode)):
                total += np.square(grad.astype(np.float64))
            samples += 1
    if samples == 0:
        raise WeightzipError("no calibration samples: the Fisher information needs at least one")
    return {w.path: total / samples for w, total in zip(weights, sums)}


def _are_probabilities(row: np.ndarray) -> bool:
    return bool(np.all(row >= 0) and abs(float(row.sum()) - 1.0) < 1e-3)


def _probabilities(row: np.ndarray) -> np.ndarray:
    if _are_probabilities(row):
        p = np.clip(row, 0, None)
    else:
        shifted = np.exp(row - row.max())
        p = shifted
    return p / p.sum()


# ---------------------------------------------------------------- per-weight importance


def importance_of(weight: ModelWeight, *, fisher: dict | None = None, moments: dict | None = None,
                  floor: float = 1e-2) -> np.ndarray | None:
    """Per-weight importance (kernel shape) of one kernel: its Fisher diagonal if given, else the input
    channel's E[x²] broadcast along the kernel's input axis, else None (plain squared error).

    floor: a fraction of the mean importance added to every weight, so weights that the calibration
    samples happened not to exercise still count a little (they may matter on other inputs).
    """
    shape = tuple(weight.weight.variable.shape)
    values = None
    if fisher is not None and weight.path in fisher:
        values = np.asarray(fisher[weight.path], dtype=np.float64)
    elif moments is not None and weight.path in moments and weight.input_axis is not None:
        view = [1] * len(shape)
        view[weight.input_axis] = shape[weight.input_axis]
        values = np.broadcast_to(np.asarray(moments[weight.path]).reshape(view), shape).astype(np.float64)
    if values is None or not np.any(values > 0):
        return None
    return values + floor * float(values.mean())


__all__ = ["ModelWeight", "fisher_diagonal", "flattened_layers", "importance_of", "input_of", "input_second_moments",
           "model_weights"]
