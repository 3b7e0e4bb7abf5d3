"""Empirical bias correction on Keras: give each compressed layer back its float output mean, per channel.

The Keras counterpart of :mod:`weightzip.torch.bias_correction` (the reasons are there): clustering errors
shift a layer's per-channel output mean, and the shift travels through every later layer. On the fit
inputs (one batch of at most `max_samples`), each compressed Dense / Conv / DepthwiseConv layer's
per-channel output mean is compared with the float model's at the same layer, and the difference added to
the layer's bias, where it costs nothing to store (biases are stored as floats). The shifts are found in
one pass, in layer order: each layer's output is shifted as soon as its shift is known, so later layers
measure their means on already-corrected inputs. A layer's fused activation is taken out of its call for
the pass and applied after the shift (the mean restored is that of the pre-activation output, which the
bias shifts). Layers without a bias are left alone and named.

Restoring means does not always bring the outputs closer: where clustering changed a channel's spread a lot,
its float mean put through the following ReLU can be further from the float activations than the shifted
one was (uniform k=8 on MLPerf-Tiny ResNet-8: relative output error 0.80 -> 0.86 on held-out inputs). The
correction is therefore kept only when the corrected model's outputs on the correction inputs are closer to
the float model's than the uncorrected ones (one more pass).

Scale and shift. A layer whose (linear) output feeds only a BatchNormalization on its channel axis also gets a
per-channel *scale*: clustering changes a channel's spread as well as its mean, and a mean alone cannot
undo that. The scale ``a`` and shift ``b`` are the least-squares fit of the float pre-activation output by
``a·ŷ + b`` on the correction inputs (``a = cov(y, ŷ) / var(ŷ)``, clipped to [1/2, 2]; ``b`` restores the
float mean exactly), measured position by position on a fixed subset of the output positions. Both go into
that BatchNormalization's moving statistics, which are stored as floats anyway (in inference
``BN(a·ŷ + b)`` is ``BN`` with moving mean ``(μ − b)/a`` and moving variance ``(σ² + ε)/a² − ε``), so it
costs no bytes either; a layer without a bias can be corrected this way too. This is the per-channel affine
correction that ``BN`` re-estimation and Nagel et al.'s bias correction point at, fitted to the float
activations instead of to their means only (:mod:`weightzip.core.output_correction`).
"""

from __future__ import annotations

import keras
import numpy as np

from weightzip.core.output_correction import fitted_scales, folded_statistics, position_subset, scale_limit
from weightzip.keras.pipeline._inputs import flat_outputs, run_model
from weightzip.keras.pipeline.calibration import ModelWeight

_LAYERS = ("Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D")


def _following_norm(layer) -> keras.layers.Layer | None:
    """The BatchNormalization that alone consumes `layer`'s (linear, channels-last) output, on its channel axis;
    None when there is no such layer (several consumers, a fused activation, a shared layer, ...)."""
    nodes = getattr(layer, "_outbound_nodes", None) or []
    activation = getattr(layer, "activation", None)
    if len(nodes) != 1 or len(getattr(layer, "_inbound_nodes", [])) != 1 or activation not in (
            None, keras.activations.linear):
        return None
    norm = nodes[0].operation
    if not isinstance(norm, keras.layers.BatchNormalization) or len(getattr(norm, "_inbound_nodes", [])) != 1:
        return None
    rank = len(layer.output.shape)
    if norm.axis not in (-1, rank - 1) or len(keras.tree.flatten(nodes[0].arguments.keras_tensors)) != 1:
        return None
    return norm


def _correctable(weights: list[ModelWeight], scale: bool) -> tuple[dict, dict, list[str]]:
    """(id(layer) -> layer whose output can take a shift, id(layer) -> the BatchNormalization that stores its scale
    and shift, names of the layers that can take neither)."""
    layers, norms, skipped = {}, {}, []
    for weight in weights:
        layer = weight.layer
        if id(layer) in layers or layer.name in skipped:
            continue
        if type(layer).__name__ not in _LAYERS and not isinstance(
                layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                        keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
            continue
        bias = getattr(layer, "bias", None)
        channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
        norm = _following_norm(layer) if scale and channels_last else None
        if norm is not None:
            norms[id(layer)] = norm
        elif bias is None or not channels_last or len(bias.shape) != 1:
            skipped.append(layer.name)
            continue
        layers[id(layer)] = layer
    return layers, norms, skipped


def _distance(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sum((np.asarray(outputs, np.float64) - reference) ** 2))


def _rows(output) -> np.ndarray:
    values = keras.ops.convert_to_numpy(output)
    return values.reshape(-1, values.shape[-1])


def _subset(rows: np.ndarray) -> np.ndarray:
    chosen = position_subset(rows.shape[0])
    return (rows if chosen is None else rows[chosen]).astype(np.float64)


class BiasCorrection:
    """Bias correction of `model` (whose kernels are later replaced by compressed ones) towards its own float
    outputs on the first `max_samples` fit inputs. The float per-channel means (and, where a scale can be stored,
    the float outputs at a fixed subset of positions) are measured at construction; :meth:`apply` corrects the
    model as it is then (compressed kernels assigned) and :meth:`restore` puts the float biases and
    normalisation statistics back. scale: also fit per-channel scales where a BatchNormalization follows."""

    def __init__(self, model: keras.Model, weights: list[ModelWeight], batches, max_samples: int = 256,
                 scale: bool = True):
        self.model = model
        self.layers, self.norms, self.skipped = _correctable(weights, scale)
        self.inputs = np.concatenate([np.asarray(batch) for batch in batches])[:max_samples]
        self.biases = {key: keras.ops.convert_to_numpy(layer.bias) for key, layer in self.layers.items()
                       if key not in self.norms}
        self.statistics = {key: (keras.ops.convert_to_numpy(norm.moving_mean).astype(np.float64),
                                 keras.ops.convert_to_numpy(norm.moving_variance).astype(np.float64))
                           for key, norm in self.norms.items()}
        self.wanted: dict[int, np.ndarray] = {}
        self.samples: dict[int, np.ndarray] = {}
        self.reference = flat_outputs(self._run(self._record))

    def _record(self, key, output):
        rows = _rows(output)
        self.wanted[key] = rows.astype(np.float64).mean(axis=0)
        if key in self.norms:
            self.samples[key] = _subset(rows)
        return output

    def _run(self, on_output):
        originals = {}

        def wrapper(key, layer, call):
            def wrapped(*args, **kwargs):
                activation = getattr(layer, "activation", None)
                layer.activation = None  # the pre-activation output: what the bias shifts
                try:
                    output = on_output(key, call(*args, **kwargs))
                finally:
                    layer.activation = activation
                return output if activation is None else activation(output)
            return wrapped

        for key, layer in self.layers.items():
            originals[key] = layer.__dict__.get("call")
            object.__setattr__(layer, "call", wrapper(key, layer, layer.call))
        try:
            return run_model(self.model, self.inputs)
        finally:
            for key, layer in self.layers.items():
                if originals[key] is None:
                    object.__delattr__(layer, "call")
                else:
                    object.__setattr__(layer, "call", originals[key])

    def apply(self) -> tuple[list[str], list[str], np.ndarray]:
        """Shift (and where possible scale) the layers' outputs (module doc) when that brings the outputs on
        :attr:`inputs` closer to the float model's; returns (corrected layers, layers left alone, the model's
        outputs on :attr:`inputs` as it is left). Nothing corrected: the first list is empty and the second says
        why."""
        plain = flat_outputs(run_model(self.model, self.inputs))
        affine = {}

        def corrected(key, output):
            rows = _rows(output)
            scale = np.ones(rows.shape[1])
            if key in self.norms:
                scale = fitted_scales(self.samples[key], _subset(rows),
                                      scale_limit(self.statistics[key][1], self.norms[key].epsilon))
            shift = self.wanted[key] - scale * rows.astype(np.float64).mean(axis=0)
            affine[key] = scale, shift
            if key in self.norms:
                output = output * keras.ops.convert_to_tensor(scale.astype(np.float32))
            return output + keras.ops.convert_to_tensor(shift.astype(np.float32))

        outputs = flat_outputs(self._run(corrected))
        if _distance(outputs, self.reference) >= _distance(plain, self.reference):
            return [], ["every layer (it did not bring the outputs closer to the float model's)"], plain
        for key, layer in self.layers.items():
            if key not in affine:
                continue
            scale, shift = affine[key]
            if key in self.norms:  # BN(a·y + b): the same normalisation with folded moving statistics
                norm = self.norms[key]
                mean, variance = folded_statistics(*self.statistics[key], norm.epsilon, scale, shift)
                norm.moving_mean.assign(mean.astype(np.dtype(norm.moving_mean.dtype)))
                norm.moving_variance.assign(variance.astype(np.dtype(norm.moving_variance.dtype)))
            else:
                layer.bias.assign((self.biases[key] + shift).astype(np.dtype(layer.bias.dtype)))
        return [layer.name for layer in self.layers.values()], list(self.skipped), outputs

    def restore(self) -> None:
        for key, layer in self.layers.items():
            if key in self.norms:
                mean, variance = self.statistics[key]
                norm = self.norms[key]
                norm.moving_mean.assign(mean.astype(np.dtype(norm.moving_mean.dtype)))
                norm.moving_variance.assign(variance.astype(np.dtype(norm.moving_variance.dtype)))
            else:
                layer.bias.assign(self.biases[key])
