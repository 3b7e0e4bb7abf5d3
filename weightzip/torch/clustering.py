"""Trained weight clustering for PyTorch: ``cluster_weights`` / ``strip_clustering`` (TFMOT's names).

Each selected weight is replaced, through :mod:`torch.nn.utils.parametrize`, by a :class:`ClusteredWeight`
that holds

- ``centroids``: a trainable ``(groups, k)`` parameter, one codebook row per tensor or per channel group;
- ``indices``: a buffer with one codebook index per weight (uint8 up to k = 256);
- ``frozen_zeros``: a ``(groups, k)`` mask of the centroids that must stay exactly 0 (``preserve_sparsity``);
- ``cluster_sizes``: how many weights use each centroid (for ``gradient_aggregation="mean"``).

and computes the weight as ``centroids[group, index]`` on every access. The original float weight is
dropped, so a clustered layer trains k numbers per codebook instead of one per weight. Autograd's
backward of the gather hands each centroid the **sum** of its members' gradients — exactly the centroid
update of Deep Compression (Han et al. 2016, eq. 3). ``gradient_aggregation="mean"`` divides that sum by
the cluster size, which makes the step size independent of how many weights share a centroid.

Re-assignment policy: **fixed**. The assignment of weights to centroids is computed once, by
:func:`weightzip.core.cluster_array` from the trained float weights, and kept for the whole fine-tuning,
as in Deep Compression; only the centroid values train. (TFMOT re-assigns from shadow float weights
each step; with the float weights gone there is nothing to re-assign from, and a fixed assignment keeps
the index tensor, and so the stored model, stable.) Assigning a new tensor to a clustered weight
(``layer.weight = w``) re-clusters ``w`` with the layer's configuration.

Biases are never clustered. A module passed in ``layers`` whose weights are not supported raises
:class:`~weightzip.torch.targets.UnsupportedLayerError`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from weightzip.core import CentroidInitialization, ClusterConfig, ClusteredTensor, cluster_array, index_dtype
from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError, WeightzipError
from weightzip.core.options import GradientAggregation, Reassignment
from weightzip.core.rules import LayerRules
from weightzip.core.specs import ClusteringSpec, build_spec
from weightzip.torch import parametrized
from weightzip.torch.targets import WeightTarget, copy_unless_inplace, targets_with_specs
from weightzip.torch.tensors import channel_groups, number_of_groups, to_numpy, torch_index_dtype


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by `scale` in the backward pass."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return table.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class ClusteredWeight(nn.Module):
    """Parametrization computing a weight from a trainable codebook and a fixed index per weight.

    Built empty for a tensor of `shape`; :meth:`right_inverse` (called by ``register_parametrization``
    and on ``layer.weight = tensor``) clusters a float tensor into it with the core's :func:`cluster_array`.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        config: ClusterConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        gradient_aggregation: GradientAggregation | str = GradientAggregation.SUM,
    ):
        super().__init__()
        if not dtype.is_floating_point:
            raise WeightzipError(f"only floating-point weights can be clustered, got dtype {dtype}")
        self.shape = tuple(int(s) for s in shape)
        axis = None if config.axis is None else config.axis % len(self.shape)
        self.config = dataclasses.replace(config, axis=axis)
        self.gradient_aggregation = GradientAggregation.parse(gradient_aggregation, "gradient_aggregation")
        k = config.number_of_clusters
        groups = number_of_groups(self.shape, axis, config.group_size)
        self.centroids = nn.Parameter(torch.zeros(groups, k, dtype=dtype, device=device))
        self.register_buffer("indices", torch.zeros(self.shape, dtype=torch_index_dtype(k), device=device))
        self.register_buffer("frozen_zeros", torch.zeros(groups, k, dtype=torch.bool, device=device))
        self.register_buffer("cluster_sizes", torch.zeros(groups, k, dtype=torch.int64, device=device))
        offsets = channel_groups(self.shape, axis, config.group_size) * k
        self.register_buffer("group_offsets", offsets.to(device), persistent=False)

    @property
    def number_of_clusters(self) -> int:
        return self.config.number_of_clusters

    def extra_repr(self) -> str:
        groups = self.centroids.shape[0]
        where = "per tensor" if self.config.axis is None else (
            f"axis={self.config.axis}, group_size={self.config.group_size}, {groups} codebooks")
        return (f"shape={self.shape}, number_of_clusters={self.number_of_clusters}, {where}, "
                f"preserve_sparsity={self.config.preserve_sparsity}, "
                f"gradient_aggregation={self.gradient_aggregation.value}")

    def flat_codes(self) -> torch.Tensor:
        """Index of every weight into ``centroids.reshape(-1)`` (int64, the weight's shape)."""
        return self.indices.long() + self.group_offsets

    def forward(self, *originals: torch.Tensor) -> torch.Tensor:
        table = self.centroids.masked_fill(self.frozen_zeros, 0.0)
        if self.gradient_aggregation is GradientAggregation.MEAN:
            scale = 1.0 / self.cluster_sizes.clamp(min=1).to(table.dtype)
            table = _ScaleGradient.apply(table, scale)
        return table.reshape(-1)[self.flat_codes()]

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> tuple[()]:
        """Cluster `weight` into this module's codebook and indices (in place); no tensor stays original."""
        if tuple(weight.shape) != self.shape:
            raise WeightzipError(f"cannot assign a tensor of shape {tuple(weight.shape)} to a clustered weight "
                                 f"of shape {self.shape}")
        self.load_clustered(cluster_array(to_numpy(weight), self.config))
        if self.config.preserve_sparsity:
            zero_codes = self.flat_codes()[weight == 0]
            self.frozen_zeros.view(-1)[zero_codes] = True
        return ()

    @torch.no_grad()
    def load_clustered(self, clustered: ClusteredTensor) -> None:
        """Copy a core :class:`ClusteredTensor` (same shape and codebook size) into this module."""
        if clustered.shape != self.shape or tuple(clustered.codebook.shape) != tuple(self.centroids.shape):
            raise WeightzipError(
                f"clustered tensor {clustered.shape} with codebook {clustered.codebook.shape} does not fit "
                f"a clustered weight {self.shape} with codebook {tuple(self.centroids.shape)}")
        self.centroids.copy_(torch.from_numpy(np.asarray(clustered.codebook, dtype=np.float64)))
        self.indices.copy_(torch.from_numpy(clustered.indices.astype(np.int64)))
        self.frozen_zeros.zero_()
        self.refresh_cluster_sizes()

    @torch.no_grad()
    def refresh_cluster_sizes(self) -> None:
        """Recount the weights using each centroid (after the indices changed)."""
        counts = torch.bincount(self.flat_codes().reshape(-1), minlength=self.centroids.numel())
        self.cluster_sizes.copy_(counts.reshape(self.centroids.shape))

    @torch.no_grad()
    def to_clustered_tensor(self) -> ClusteredTensor:
        """The current state as a core :class:`ClusteredTensor`, each codebook row sorted ascending."""
        table = self.centroids.masked_fill(self.frozen_zeros, 0.0)
        codebook = to_numpy(table)
        order = np.argsort(codebook, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(order.shape[0], 0), axis=1)
        groups = channel_groups(self.shape, self.config.axis, self.config.group_size).numpy()
        indices = self.indices.cpu().numpy().astype(np.int64)
        sorted_indices = rank[groups, indices].astype(index_dtype(self.number_of_clusters))
        return ClusteredTensor(np.take_along_axis(codebook, order, axis=1), sorted_indices,
                               self.config.axis, self.config.group_size)


def cluster_weights(
    module: nn.Module,
    number_of_clusters: int | None = None,
    init: CentroidInitialization | str | None = None,
    *,
    spec: ClusteringSpec | None = None,
    per_channel: bool | None = None,
    group_size: int | None = None,
    preserve_sparsity: bool | None = None,
    gradient_aggregation: GradientAggregation | str | None = None,
    reassignment: Reassignment | str | None = None,
    lloyd_iterations: int | None = None,
    seed: int | None = None,
    layers: Iterable[str | type] | str | type | None = None,
    inplace: bool = True,
) -> nn.Module:
    """Cluster the weights of `module` for trained quantization; returns the clustered module.

    spec: a :class:`~weightzip.core.specs.ClusteringSpec`; or its fields as keywords, the same names as the spec
        and as ``weightzip.keras.cluster_weights`` (keywords next to a spec override its fields):
    number_of_clusters: codebook size k (per tensor, or per channel group with `per_channel`).
    init: centroid initialisation, a :class:`CentroidInitialization` or its string value (default LINEAR).
    per_channel: one codebook per output channel (see :mod:`weightzip.torch.targets` for each layer's
        channel axis); `group_size` > 1 shares a codebook between that many consecutive channels.
    preserve_sparsity: zero weights stay exactly zero during training (one centroid per codebook is a
        frozen 0); use after pruning + :func:`~weightzip.torch.strip_pruning`.
    gradient_aggregation: "sum" (Deep Compression, default) or "mean" (see :class:`GradientAggregation`).
    reassignment: only "fixed" (the default here; see the module docstring): "every_step" is refused.
    lloyd_iterations, seed: see :class:`~weightzip.core.specs.ClusteringSpec`.
    layers: restrict to these module names or types (default: every supported layer); or a
        :class:`~weightzip.core.rules.LayerRules` giving each layer its spec (a ClusteringSpec, a mapping of fields
        overriding the call's spec, or None to leave it alone) by name, class or convolution category.
    inplace: True (the PyTorch front end's rule, as every call here that takes a module): `module` itself is
        clustered and returned; False clusters a deep copy and leaves `module` as it was.

    Create the optimizer *after* this call: the clustered weights' parameters are the new ``centroids``.
    """
    fields = dict(number_of_clusters=number_of_clusters, init=init, per_channel=per_channel, group_size=group_size,
                  preserve_sparsity=preserve_sparsity, gradient_aggregation=gradient_aggregation,
                  reassignment=reassignment, lloyd_iterations=lloyd_iterations, seed=seed)
    if spec is not None or number_of_clusters is not None or not isinstance(layers, LayerRules):
        spec = build_spec(ClusteringSpec, spec, "cluster_weights", **fields)
    elif any(value is not None for value in fields.values()):
        raise ArgumentTypeError("cluster_weights: clustering keywords without number_of_clusters apply to nothing; "
                                "give number_of_clusters (or spec=) as the base of the layers rules")
    module = copy_unless_inplace(module, inplace)
    chosen = targets_with_specs(module, layers, spec, ClusteringSpec, "cluster_weights")
    for target, layer_spec in chosen:
        if layer_spec.reassignment is Reassignment.EVERY_STEP:
            raise InvalidArgumentError("weightzip.torch clusters with a fixed assignment (reassignment='fixed'): the "
                                       "float weights are dropped, so there is nothing to re-assign from at every step")
        _refuse_if_parametrized(target)
    for target, layer_spec in chosen:
        weight = getattr(target.module, target.parameter_name)
        parametrization = ClusteredWeight(tuple(weight.shape), layer_spec.cluster_config(target.channel_axis),
                                          dtype=weight.dtype, device=weight.device,
                                          gradient_aggregation=layer_spec.gradient_aggregation)
        parametrization.centroids.requires_grad_(weight.requires_grad)
        parametrized.register(target.module, target.parameter_name, parametrization)
    return module


def _refuse_if_parametrized(target: WeightTarget) -> None:
    if parametrize.is_parametrized(target.module, target.parameter_name):
        kinds = [type(p).__name__ for p in target.module.parametrizations[target.parameter_name]]
        hint = ("strip_pruning(model) first" if "PruningMask" in kinds else
                "strip_clustering(model) first" if "ClusteredWeight" in kinds else
                "remove that parametrization first")
        raise WeightzipError(f"{target.qualified_name!r} is already parametrized by {kinds}; call {hint}")


def clustered_weights(module: nn.Module) -> dict[str, ClusteredWeight]:
    """Every :class:`ClusteredWeight` in `module`, keyed by the weight's qualified name (``"fc.weight"``)."""
    return parametrized.parametrizations_of(module, ClusteredWeight)


def clustered_tensors(module: nn.Module) -> dict[str, ClusteredTensor]:
    """The clustered weights of `module` as core :class:`ClusteredTensor` objects (for storage)."""
    return {name: p.to_clustered_tensor() for name, p in clustered_weights(module).items()}


def strip_clustering(module: nn.Module, *, inplace: bool = True) -> nn.Module:
    """Replace every clustered weight by a plain ``nn.Parameter`` holding its current clustered values.

    In place (returns `module`), or on a deep copy with ``inplace=False``. The result has ordinary ``state_dict`` keys (``fc.weight``) and at most
    k distinct values per codebook group in each formerly clustered weight.
    """
    return parametrized.remove(copy_unless_inplace(module, inplace), ClusteredWeight)
