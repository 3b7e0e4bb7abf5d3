"""Magnitude pruning with schedules for PyTorch: ``prune_low_magnitude`` / ``update_pruning_step`` /
``strip_pruning`` (TFMOT's names; the masks and schedules are the core's).

Each selected weight gets a :class:`PruningMask` parametrization: the float weight stays trainable (as
``parametrizations.weight.original``) and the layer sees ``original`` where the mask keeps it and +0.0
elsewhere, so pruned weights get no gradient. The mask is recomputed by :func:`weightzip.core.pruning.magnitude_mask` (or
:func:`~weightzip.core.pruning.n_m_mask`) whenever the schedule says so; at that moment the pruned
originals are also set to zero, as TFMOT does, so a later, sparser mask ranks them last.

Training loop::

    prune_low_magnitude(model, PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000, frequency=100))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for batch in data:
        update_pruning_step(model)      # like TFMOT's UpdatePruningStep: once per step, before forward
        loss = ...; loss.backward(); optimizer.step(); optimizer.zero_grad()
    strip_pruning(model)                # plain weights with exact zeros

Sparsity-preserving clustering, Deep Compression's second stage on a pruned model, is then
``cluster_weights(model, k, preserve_sparsity=True)``: the zeros keep a frozen zero centroid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError, WeightzipError
from weightzip.core.pruning import InvalidSparsityError, PruningSchedule, magnitude_mask, n_m_mask
from weightzip.core.specs import PruningSpec, build_spec
from weightzip.torch import parametrized
from weightzip.torch.targets import copy_unless_inplace, targets_with_specs
from weightzip.torch.tensors import to_numpy

_POOLINGS = {"avg": "avg", "max": "max"}


@dataclass(frozen=True)
class PruningSettings:
    """How one weight is pruned.

    schedule: when and how much (core :class:`PruningSchedule`).
    channel_axis: with `per_channel`, every slice along it is pruned to the same sparsity; None ranks the
        whole tensor together (TFMOT's behaviour).
    block_shape: prune whole blocks (one entry per weight dimension); None for single weights.
    pooling: "avg" or "max" block score.
    m_by_n / input_axis: ``(n, m)`` structured sparsity along `input_axis` (the schedule then only says
        *when* to prune; the sparsity is 1 - n/m).
    """

    schedule: PruningSchedule
    channel_axis: int | None = None
    block_shape: tuple[int, ...] | None = None
    pooling: str = "avg"
    m_by_n: tuple[int, int] | None = None
    input_axis: int = 1

    def __post_init__(self):
        if not isinstance(self.schedule, PruningSchedule):
            raise ArgumentTypeError(f"pruning_schedule must be a weightzip PruningSchedule (ConstantSparsity, "
                            f"PolynomialDecay), got {self.schedule!r}")
        if self.pooling not in _POOLINGS:
            raise InvalidSparsityError(f"block_pooling_type must be 'AVG' or 'MAX', got {self.pooling!r}")

    def keep_mask(self, weights: np.ndarray, sparsity: float) -> np.ndarray:
        """The core's keep-mask for `weights` at `sparsity`."""
        if self.m_by_n is not None:
            n, m = self.m_by_n
            return n_m_mask(weights, n, m, axis=self.input_axis)
        return magnitude_mask(weights, sparsity, axis=self.channel_axis, block_shape=self.block_shape,
                              pooling=self.pooling)


class PruningMask(nn.Module):
    """Parametrization ``where(mask, original, 0)`` with a persistent keep-mask and the step it was last updated at."""

    def __init__(self, shape: tuple[int, ...], settings: PruningSettings, *, device=None):
        super().__init__()
        self.settings = settings
        self.register_buffer("mask", torch.ones(tuple(shape), dtype=torch.bool, device=device))
        self.register_buffer("step", torch.tensor(-1, dtype=torch.int64, device=device))

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mask.shape)}, schedule={self.settings.schedule}"

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # where, not a product: a pruned negative weight must become +0.0, not -0.0 (whose bit pattern
        # sparse storage would count as an entry).
        return torch.where(self.mask, original, torch.zeros((), dtype=original.dtype, device=original.device))

    def sparsity(self) -> float:
        """Fraction of weights the current mask removes."""
        return 1.0 - float(self.mask.float().mean())

    @torch.no_grad()
    def update(self, original: torch.Tensor, step: int) -> bool:
        """Record `step`; when the schedule prunes at it, recompute the mask and zero the pruned originals."""
        self.step.fill_(step)
        should_prune, sparsity = self.settings.schedule(step)
        if not should_prune:
            return False
        keep = self.settings.keep_mask(to_numpy(self.forward(original)), sparsity)
        self.mask.copy_(torch.from_numpy(np.ascontiguousarray(keep)))
        original.masked_fill_(~self.mask, 0.0)
        return True


def prune_low_magnitude(
    module: nn.Module,
    pruning_schedule: PruningSchedule | None = None,
    block_size: tuple[int, int] | None = None,
    block_pooling_type: str | None = None,
    sparsity_m_by_n: tuple[int, int] | None = None,
    *,
    spec: PruningSpec | None = None,
    per_channel: bool | None = None,
    layers: Iterable[str | type] | str | type | None = None,
    inplace: bool = True,
) -> nn.Module:
    """Prepare the weights of `module` for magnitude pruning; returns the prepared module.

    spec: a :class:`~weightzip.core.specs.PruningSpec`; or its fields as keywords, the same names as on Keras
        (TFMOT's; keywords next to a spec override its fields):
    pruning_schedule: core :class:`ConstantSparsity` / :class:`PolynomialDecay`; default 50 % from step 0.
    block_size: ``(rows, cols)`` blocks over the weight's first two axes (output, input), pruned together.
    block_pooling_type: "AVG" or "MAX" (any case): how a block's magnitudes are scored.
    sparsity_m_by_n: ``(n, m)``, e.g. ``(2, 4)``: keep n of every m consecutive weights along each
        weight's input axis (see :mod:`weightzip.torch.targets`).
    per_channel: prune every output channel to the same sparsity.
    layers: restrict to these module names or types (default: every supported layer); or a
        :class:`~weightzip.core.rules.LayerRules` giving each layer its PruningSpec (or a mapping of fields overriding
        the call's, or None to leave it alone) by name, class or convolution category.
    inplace: True (the PyTorch front end's rule): `module` itself is prepared and returned; False prepares a
        deep copy and leaves `module` as it was.

    Nothing is pruned until :func:`update_pruning_step` reaches a step at which the schedule prunes.
    """
    spec = build_spec(PruningSpec, spec, "prune_low_magnitude", pruning_schedule=pruning_schedule,
                      block_size=block_size, block_pooling_type=block_pooling_type,
                      sparsity_m_by_n=sparsity_m_by_n, per_channel=per_channel)
    module = copy_unless_inplace(module, inplace)
    chosen = targets_with_specs(module, layers, spec, PruningSpec, "prune_low_magnitude")
    for target, _ in chosen:
        if parametrize.is_parametrized(target.module, target.parameter_name):
            kinds = [type(p).__name__ for p in target.module.parametrizations[target.parameter_name]]
            raise WeightzipError(f"{target.qualified_name!r} is already parametrized by {kinds}; "
                                 "strip it (strip_pruning / strip_clustering) first")
    for target, spec in chosen:
        m_by_n = spec.sparsity_m_by_n
        weight = getattr(target.module, target.parameter_name)
        block_shape = None if spec.block_size is None else spec.block_size + (1,) * (weight.dim() - 2)
        settings = PruningSettings(spec.pruning_schedule, target.channel_axis if spec.per_channel else None,
                                   block_shape, spec.block_pooling_type.value, m_by_n, target.input_axis)
        if m_by_n is not None and weight.shape[target.input_axis] % m_by_n[1]:
            raise InvalidSparsityError(
                f"{target.qualified_name!r}: {m_by_n[0]}:{m_by_n[1]} sparsity needs its input axis "
                f"({target.input_axis}, length {weight.shape[target.input_axis]}) to be a multiple of {m_by_n[1]}")
        parametrized.register(target.module, target.parameter_name,
                              PruningMask(tuple(weight.shape), settings, device=weight.device))
    return module


def pruning_masks(module: nn.Module) -> dict[str, PruningMask]:
    """Every :class:`PruningMask` in `module`, keyed by the weight's qualified name."""
    return parametrized.parametrizations_of(module, PruningMask)


def update_pruning_step(module: nn.Module, step: int | None = None) -> int:
    """Advance every pruned weight to the next training step (or to `step`) and re-prune where due.

    Call once per training iteration, before the forward pass (TFMOT's ``UpdatePruningStep``). The step
    is stored with each mask, so a run resumed from a ``state_dict`` continues where it stopped.
    Returns the step now in force.
    """
    masks = _masks_with_originals(module)
    if not masks:
        raise WeightzipError("the module has no pruned weights: call prune_low_magnitude first")
    if step is None:
        step = max(int(mask.step) for mask, _ in masks) + 1
    elif isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidArgumentError(f"step must be an integer >= 0, got {step!r}")
    for mask, original in masks:
        mask.update(original, step)
    return step


def _masks_with_originals(module: nn.Module) -> list[tuple[PruningMask, torch.Tensor]]:
    found = []
    for submodule in module.modules():
        if not parametrize.is_parametrized(submodule):
            continue
        for stack in submodule.parametrizations.values():
            if isinstance(stack[0], PruningMask):
                found.append((stack[0], stack.original))
    return found


def layer_sparsities(module: nn.Module) -> dict[str, float]:
    """Current mask sparsity of every pruned weight, keyed by qualified name."""
    return {name: mask.sparsity() for name, mask in pruning_masks(module).items()}


def strip_pruning(module: nn.Module, *, inplace: bool = True) -> nn.Module:
    """Replace every pruned weight by a plain ``nn.Parameter`` holding the masked weight (exact +0.0 zeros); in place
    (returns `module`), or on a deep copy with ``inplace=False``."""
    return parametrized.remove(copy_unless_inplace(module, inplace), PruningMask)
