"""Which weights of a PyTorch model weightzip compresses, and along which axis their channels lie.

Only the large matrices and kernels are clustered or pruned: biases, normalisation scales and other
small vectors are left in float, as in Deep Compression and TFMOT. Each supported layer type names its
weight parameters and the axis of its *output channels*, the axis that per-channel codebooks follow:

| layer | parameters | channel axis | input axis |
|---|---|---|---|
| ``Linear`` (incl. ``MultiheadAttention.out_proj``) | ``weight`` | 0 (out_features) | 1 |
| ``Conv1d/2d/3d`` (incl. grouped and depthwise) | ``weight`` | 0 (out_channels) | 1 |
| ``ConvTranspose1d/2d/3d`` | ``weight`` | 1 (out_channels); 0 (in_channels) when ``groups > 1``, where no single axis holds the output channels | 0 |
| ``Embedding``, ``EmbeddingBag`` | ``weight`` | 1 (embedding features: a codebook per feature, not per token) | 1 |
| ``RNN``, ``LSTM``, ``GRU`` | every ``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*`` | 0 (gate rows) | 1 |
| ``RNNCell``, ``LSTMCell``, ``GRUCell`` | ``weight_ih``, ``weight_hh`` | 0 (gate rows) | 1 |
| ``MultiheadAttention`` | ``in_proj_weight`` or ``q/k/v_proj_weight`` | 0 | 1 |

Subclasses of these layers are matched as their base type. The input axis is the one N:M structured
sparsity runs along.

`layers` may also be a :class:`~weightzip.core.rules.LayerRules`: a spec (or field overrides, or None to leave
the layer alone) per module by name, class or the convolution category, as for every other per-layer option.

Otherwise `layers` restricts the selection to modules given by qualified name (``"features.3"``; everything inside
a named container is included) or by type (``nn.Conv2d``; subclasses match). Asking explicitly for a
module that has weights weightzip does not handle is an error naming it, never a silent skip.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Iterable

from torch import nn

from weightzip.core.errors import ArgumentTypeError, UnsupportedLayerError, WeightzipError
from weightzip.core.rules import CONVOLUTION, LayerRules

__all__ = ["UnsupportedLayerError", "WeightTarget", "copy_unless_inplace", "find_targets", "targets_with_specs", "weights_of"]


@dataclass(frozen=True)
class WeightTarget:
    """One weight parameter to compress: its module, the parameter's name there, its channel axis."""

    module_name: str
    module: nn.Module
    parameter_name: str
    channel_axis: int
    input_axis: int = 1

    @property
    def qualified_name(self) -> str:
        """The parameter's name as in ``model.named_parameters()`` before parametrization."""
        return f"{self.module_name}.{self.parameter_name}" if self.module_name else self.parameter_name


_RNN_WEIGHT_PREFIXES = ("weight_ih_l", "weight_hh_l", "weight_hr_l")


def weights_of(module: nn.Module) -> list[tuple[str, int, int]] | None:
    """``[(parameter name, channel axis, input axis), ...]`` of a supported module itself (not its children).

    The input axis is the one a weight's inputs are summed over (N:M sparsity runs along it). None when
    the module type is not supported. Parameters that are absent (``None``) are omitted.
    """
    if isinstance(module, nn.Linear):
        names = [("weight", 0, 1)]
    elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        names = [("weight", 1 if module.groups == 1 else 0, 0)]
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        names = [("weight", 0, 1)]
    elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        names = [("weight", 1, 1)]
    elif isinstance(module, nn.RNNBase):
        names = [(name, 0, 1) for name in module._flat_weights_names if name.startswith(_RNN_WEIGHT_PREFIXES)]
    elif isinstance(module, nn.RNNCellBase):
        names = [("weight_ih", 0, 1), ("weight_hh", 0, 1)]
    elif isinstance(module, nn.MultiheadAttention):
        names = [(name, 0, 1) for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")]
    else:
        return None
    return [entry for entry in names if _has_tensor(module, entry[0])]


def _has_tensor(module: nn.Module, name: str) -> bool:
    if name in getattr(module, "parametrizations", {}):
        return True
    return getattr(module, name, None) is not None


def find_targets(model: nn.Module, layers: Iterable[str | type] | str | type | None = None) -> list[WeightTarget]:
    """The weights of `model` to compress, in module order.

    layers: None for every supported module; otherwise module names and/or module types. Raises
    :class:`UnsupportedLayerError` for a requested module with unsupported weights, ``KeyError``-like
    :class:`WeightzipError` for a name that is not in the model, and an error when nothing is selected.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if layers is None:
        selected = list(modules)
    else:
        selected = _select(model, modules, _as_list(layers))
    targets = []
    for name in selected:
        module = modules[name]
        for parameter_name, channel_axis, input_axis in weights_of(module) or []:
            targets.append(WeightTarget(name, module, parameter_name, channel_axis, input_axis))
    if not targets:
        what = "the model" if layers is None else f"the requested layers {layers!r}"
        raise UnsupportedLayerError(
            f"{what} contain no supported weights (Linear, Conv*, ConvTranspose*, Embedding, RNN/LSTM/GRU and their "
            "cells, MultiheadAttention)"
        )
    return targets


def _as_list(layers) -> list:
    if isinstance(layers, (str, type)):
        return [layers]
    try:
        return list(layers)
    except TypeError:
        raise ArgumentTypeError(f"layers must be module names and/or types, got {layers!r}") from None


def _select(model: nn.Module, modules: dict[str, nn.Module], requests: list) -> list[str]:
    chosen: set[str] = set()
    for request in requests:
        if isinstance(request, str):
            if request not in modules:
                raise WeightzipError(f"layers: the model has no module named {request!r}")
            roots = [request]
        elif isinstance(request, type) and issubclass(request, nn.Module):
            roots = [name for name, module in modules.items() if isinstance(module, request)]
            if not roots:
                raise WeightzipError(f"layers: the model has no module of type {request.__name__}")
        else:
            raise ArgumentTypeError(f"layers entries must be module names or nn.Module subclasses, got {request!r}")
        for root in roots:
            _check_supported(root, modules[root])
            prefix = f"{root}." if root else ""
            chosen.update(name for name in modules if name == root or name.startswith(prefix))
    return [name for name in modules if name in chosen]


def _check_supported(name: str, module: nn.Module) -> None:
    """A requested module must be supported, or a container whose own parameters are all biases etc."""
    if weights_of(module) is not None:
        return
    own = [p for p, _ in module.named_parameters(recurse=False)]
    if any("weight" in p for p in own):
        label = repr(name) if name else "the model itself"
        raise UnsupportedLayerError(
            f"module {label} ({type(module).__name__}) has weights {own} that weightzip cannot compress; "
            "supported: Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, Embedding(Bag), RNN/LSTM/GRU and their "
            "cells, MultiheadAttention"
        )


def copy_unless_inplace(model: nn.Module, inplace: bool) -> nn.Module:
    """`model` itself when `inplace` (the PyTorch front end's rule: ``cluster_weights``, ``prune_low_magnitude`` and
    ``palettize`` change the module they are given), else a deep copy to change, leaving `model` as it was."""
    if not isinstance(inplace, bool):
        raise ArgumentTypeError(f"inplace must be True or False, got {inplace!r}")
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return model if inplace else copy.deepcopy(model)


def targets_with_specs(model: nn.Module, layers, spec, spec_type: type, what: str) -> list[tuple[WeightTarget, object]]:
    """``(target, spec)`` for every weight a call selects: with `layers` None or names/types, each selected weight
    gets `spec`; with `layers` a :class:`~weightzip.core.rules.LayerRules`, each supported weight gets the value its
    module resolves to (by module name, module class, or the :data:`~weightzip.core.rules.CONVOLUTION` category):
    a `spec_type`, a mapping of field overrides of `spec`, or None (the weight is left alone)."""
    if not isinstance(layers, LayerRules):
        if spec is None:
            raise ArgumentTypeError(f"{what}: give the spec's fields (or spec=) unless layers= is a LayerRules")
        return [(target, spec) for target in find_targets(model, layers)]
    targets = find_targets(model, None)
    layers.check_names([name for name, _ in model.named_modules() if name], f"{what}: layers")
    chosen = []
    for target in targets:
        categories = (CONVOLUTION,) if isinstance(target.module, _CONVOLUTIONS) else ()
        value = layers.value_for(target.module_name, target.module, categories)
        if value is None:
            continue
        if isinstance(value, Mapping):
            value = spec_type(**value) if spec is None else dataclasses.replace(spec, **value)
        if not isinstance(value, spec_type):
            raise ArgumentTypeError(f"{what}: layers rule for {target.module_name!r} must be a {spec_type.__name__}, "
                                    f"a mapping of its fields, or None; got {value!r}")
        chosen.append((target, value))
    if not chosen:
        raise UnsupportedLayerError(f"{what}: the layers rules select no supported weight")
    return chosen


_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
