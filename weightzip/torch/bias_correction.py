"""Empirical bias correction: give each compressed layer back its float output mean, per channel.

Clustering errors do not average out per output channel: a channel whose centroids all moved a little
in one direction shifts its mean output, and the shift travels through every later layer (Nagel et al.,
*Data-Free Quantization*, 2019, §4.2). On the calibration inputs, each compressed Linear / Conv layer's
per-channel output mean is compared with the float model's at the same layer, and the difference is
added back where it costs nothing to store: the layer's bias, or — for a bias-free layer followed
directly by a BatchNorm in an ``nn.Sequential`` (Conv → BN) — that BatchNorm's ``running_mean``
(``BN(y + δ)`` in eval mode is ``BN`` with ``running_mean − δ``). Layers with neither are left alone and
named. The corrections are made in one forward pass, in layer order: each layer's output is shifted as
soon as its shift is known, so every later layer measures its mean on already-corrected inputs (correcting
all layers from one uncorrected pass would fix each upstream error twice). That pass takes the fit inputs
as one batch (at most `max_samples`), so each shift is the mean over all of them; the reference's means are
measured once per :class:`BiasCorrection` and that pass's outputs are the corrected model's (no second pass
needed to measure its fidelity on those inputs). A model that marks its padding positions (``position_mask``,
:mod:`weightzip.torch.calibration`) has its Linear layers' means taken over the real positions only.

Scale and shift (``scale=True``): a convolution followed directly by a BatchNorm (Conv → BN in an
``nn.Sequential``) gets a per-channel scale too, since clustering changes a channel's spread as well as its
mean: ``a·ŷ + b`` fitted by least squares to the float output at a fixed subset of output positions, folded
into that BatchNorm's ``running_mean`` and ``running_var`` (:mod:`weightzip.core.output_correction`, as on
Keras).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from weightzip.core.output_correction import fitted_scales, folded_statistics, position_subset, scale_limit
from weightzip.torch.calibration import (
    counted_positions,
    forward_hooks,
    position_mask,
    run_model,
    run_with_forward_hooks,
)
from weightzip.torch.exported import following_norm
from weightzip.torch.targets import WeightTarget

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _channel_sums(output: torch.Tensor, axis: int) -> tuple[torch.Tensor, int]:
    """(per-channel sums as float64, values per channel) of a layer's output, channels on `axis`. Summed in the
    output's own dtype (torch's reductions sum pairwise: ~1e-7 relative error on float32) without copying the
    activation to float64 first (that copy cost more than the model's forward pass)."""
    axis = axis % output.ndim
    others = [d for d in range(output.ndim) if d != axis]
    total = output.detach().sum(dim=others) if others else output.detach()
    return total.double(), output.numel() // output.shape[axis]


def _rows(output: torch.Tensor, axis: int):
    """A layer's output as (positions, channels) float64 NumPy rows at the fixed subset the scales are fitted on."""
    output = output.detach()
    axis %= output.ndim
    chosen = position_subset(output.numel() // output.shape[axis])
    if chosen is None:
        return output.movedim(axis, -1).reshape(-1, output.shape[axis]).double().numpy()
    # the chosen rows gathered straight from the layout (leading axes, channel, trailing axes): not the whole
    # output copied channels-last first (rows are positions in C order of the other axes, as movedim gives them)
    view = output.reshape(int(np.prod(output.shape[:axis], dtype=np.int64)), output.shape[axis], -1)
    chosen = torch.as_tensor(chosen)
    trailing = view.shape[2]
    return view[chosen // trailing, :, chosen % trailing].double().numpy()


def _channel_means(module: nn.Module, names: list[str], batches, samples: dict | None = None,
                   sampled: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Per layer of `names`, its per-channel output mean over `batches`; the outputs of the layers in `sampled`
    at the scale-fitting positions (:func:`_rows`) go into `samples` (one batch expected)."""
    layers = dict(module.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    current = {}

    def hook_for(name, layer):
        def hook(_module, _inputs, output):
            if name in sampled:
                samples[name] = _rows(output, 1)
            total, count = _channel_sums(counted_positions(layer, output, current.get("mask")),
                                         -1 if isinstance(layer, nn.Linear) else 1)
            sums[name] = sums.get(name, 0) + total
            counts[name] = counts.get(name, 0) + count
        return hook

    run_with_forward_hooks(module, batches, [(layers[name], hook_for(name, layers[name])) for name in names],
                           on_batch=lambda batch: current.update(mask=position_mask(module, batch)))
    return {name: sums[name] / counts[name] for name in sums}


def _following_batch_norm(model: nn.Module, name: str) -> nn.Module | None:
    """The BatchNorm that takes layer `name`'s output: the next layer of an nn.Sequential, or in a graph
    (a torch.export program's, :mod:`weightzip.torch.exported`) the one that alone takes it."""
    if isinstance(model, torch.fx.GraphModule):
        return following_norm(model, name)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    keys = list(parent._modules)
    position = keys.index(child)
    if position + 1 < len(keys):
        following = parent._modules[keys[position + 1]]
        if isinstance(following, nn.modules.batchnorm._BatchNorm) and following.track_running_stats:
            return following
    return None


class BiasCorrection:
    """Bias correction towards `reference` (the float model) on the first `max_samples` of `batches`; the
    reference's per-channel output means are measured once, on the first :meth:`apply`, and reused for every
    compressed model corrected after it (the post-training search corrects several candidate plans)."""

    def __init__(self, reference: nn.Module, targets: list[WeightTarget], batches, max_samples: int = 32,
                 scale: bool = False):
        self.reference, self.targets, self.scale = reference, targets, scale
        self.inputs = torch.cat(list(batches))[:max_samples]
        self._wanted: dict[str, torch.Tensor] | None = None
        self._samples: dict[str, object] = {}

    def apply(self, model: nn.Module) -> tuple[list[str], list[str], torch.Tensor | None]:
        """Shift `model`'s biases / BatchNorm means so each target layer's per-channel output mean on the inputs
        matches the reference's. Returns (corrected layers, layers left alone, the corrected model's outputs on
        :attr:`inputs` from the correcting pass, or None when nothing was corrected)."""
        if isinstance(model, torch.jit.ScriptModule):
            return [], ["(TorchScript model: no bias correction)"], None
        names, where, skipped = _correctable(model, self.targets, self.scale)
        if not names:
            return [], skipped, None
        if self._wanted is None:
            scaled = tuple(name for name in names if where[name][0] == "norm")
            self._wanted = _channel_means(self.reference, names, [self.inputs], self._samples, scaled)
        outputs = _shift_means(model, names, where, self._wanted, self.inputs, self._samples)
        return names, skipped, outputs


def correct_biases(reference: nn.Module, model: nn.Module, targets: list[WeightTarget], batches,
                   max_samples: int = 32) -> tuple[list[str], list[str]]:
    """Shift `model`'s biases / BatchNorm means so each target layer's per-channel output mean on `batches`
    matches `reference` (same architecture, float weights). Returns (corrected layers, layers left alone)."""
    names, skipped, _ = BiasCorrection(reference, targets, batches, max_samples).apply(model)
    return names, skipped


def _correctable(model: nn.Module, targets: list[WeightTarget], scale: bool = False):
    """(layer names in target order, name -> (kind, tensor to shift, or for kind "norm" the BatchNorm that takes
    a scale and shift), layers with nowhere to put a shift)."""
    names, where, skipped = [], {}, []
    for target in targets:
        layer = target.module
        if target.parameter_name != "weight" or not isinstance(layer, _LAYERS) or target.module_name in where:
            continue
        compressed_layer = model.get_submodule(target.module_name)
        norm = _following_batch_norm(model, target.module_name) if scale and not isinstance(layer, nn.Linear) else None
        if norm is not None:
            where[target.module_name] = ("norm", norm)
        elif getattr(compressed_layer, "bias", None) is not None:
            where[target.module_name] = ("bias", compressed_layer.bias)
        else:
            norm = _following_batch_norm(model, target.module_name)
            if norm is None:
                skipped.append(target.module_name)
                continue
            where[target.module_name] = ("running_mean", norm.running_mean)
        names.append(target.module_name)
    return names, where, skipped


def _shift_means(model: nn.Module, names: list[str], where: dict, wanted: dict, inputs: torch.Tensor,
                 samples: dict | None = None) -> torch.Tensor:
    """One pass over `inputs`, each layer's output shifted to its wanted mean as soon as it is known (later
    layers see corrected inputs); the shifts then written into the biases / BatchNorm means. Returns the
    pass's outputs (those of the corrected model)."""
    shifts: dict[str, torch.Tensor] = {}

    mask = position_mask(model, inputs)

    def hook_for(name: str, layer: nn.Module):
        axis = -1 if isinstance(layer, nn.Linear) else 1

        def hook(_module, _inputs, output):
            total, count = _channel_sums(counted_positions(layer, output, mask), axis)
            view = [1] * output.ndim
            view[axis] = -1
            if where[name][0] == "norm":
                norm = where[name][1]
                scale = torch.as_tensor(fitted_scales(samples[name], _rows(output, axis),
                                                      scale_limit(norm.running_var.double().numpy(), norm.eps)))
                shift = wanted[name] - scale * total / count
                shifts[name] = scale, shift
                return output.mul_(scale.to(output.dtype).reshape(view)).add_(shift.to(output.dtype).reshape(view))
            shift = wanted[name] - total / count
            shifts[name] = shift
            return output.add_(shift.to(output.dtype).reshape(view))  # later layers see the corrected output
        return hook

    layers = dict(model.named_modules())
    with forward_hooks([(layers[name], hook_for(name, layers[name])) for name in names]), torch.no_grad():
        outputs = run_model(model, inputs)
    with torch.no_grad():
        for name in names:
            kind, tensor = where[name]
            if kind == "norm":  # BN(a·y + b): the same BatchNorm with folded running statistics
                mean, variance = folded_statistics(tensor.running_mean.double().numpy(),
                                                   tensor.running_var.double().numpy(), tensor.eps,
                                                   *(part.numpy() for part in shifts[name]))
                tensor.running_mean.copy_(torch.as_tensor(mean))
                tensor.running_var.copy_(torch.as_tensor(variance))
                continue
            shift = shifts[name].to(tensor.dtype)
            if kind == "bias":
                tensor.add_(shift)
            else:
                tensor.sub_(shift)
    return outputs
