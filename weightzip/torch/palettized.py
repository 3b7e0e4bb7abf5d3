"""Palettized inference layers: bit-packed indices + codebook in memory, the weight expanded per forward.

A clustered layer with k shared weights needs only ``ceil(log2 k)`` bits per weight plus a small
codebook. :class:`PalettizedLinear` and :class:`PalettizedConv2d` keep exactly that at run time — a
``packed`` uint8 buffer (the core's bit packing, :mod:`weightzip.core.bitpack`) and a ``codebook``
``(groups, k)`` — and rebuild the float weight inside each forward pass (unpack with torch ops, then a
gather). Weight memory drops by about ``32 / bits`` against float32; the price is the expansion time per
call, which ``benchmarks/bench_torch_palettized.py`` measures.

:func:`palettize` converts the Linear and Conv2d layers of a model that is clustered (``cluster_weights``)
or clustered and stripped (``strip_clustering``: the codebook is recovered exactly from the distinct
values, per tensor or per output channel, whichever stores smaller).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from weightzip.core import ClusteredTensor, index_dtype
from weightzip.core.palette import drop_unused_centroids, smallest_exact_palette  # noqa: F401 (re-exported)
from weightzip.core.bitpack import bit_width
from weightzip.core.errors import InvalidClusterCountError, WeightzipError
from weightzip.torch.bitunpack import MAX_UNPACK_BITS, padded_stream, unpack
from weightzip.torch.clustering import ClusteredWeight
from weightzip.torch.targets import find_targets
from weightzip.torch.tensors import channel_groups, to_numpy


class PalettizedWeight(nn.Module):
    """Shared storage and expansion of a palettized weight (codebook rows along `axis`, `group_size`)."""

    def _init_palette(self, clustered: ClusteredTensor, dtype: torch.dtype, device) -> None:
        k = clustered.number_of_clusters
        self.weight_shape = tuple(int(s) for s in clustered.shape)
        self.bits = max(1, bit_width(k))
        if self.bits > MAX_UNPACK_BITS:
            raise WeightzipError(f"a palettized layer holds at most {1 << MAX_UNPACK_BITS} clusters, got {k}")
        self.axis = clustered.axis
        self.group_size = clustered.group_size
        stream = padded_stream(np.asarray(clustered.indices).ravel(), self.bits)
        self.register_buffer("packed", torch.from_numpy(stream).to(device))
        codebook = torch.from_numpy(np.asarray(clustered.codebook, dtype=np.float64))
        self.register_buffer("codebook", codebook.to(device=device, dtype=dtype))
        offsets = (channel_groups(self.weight_shape, self.axis, self.group_size) * k).to(torch.int32)
        self.register_buffer("group_offsets", offsets.to(device), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The expanded float weight (computed on every access)."""
        count = math.prod(self.weight_shape)
        codes = unpack(self.packed, count, self.bits).reshape(self.weight_shape).add_(self.group_offsets)  # int32
        return torch.index_select(self.codebook.reshape(-1), 0, codes.reshape(-1)).reshape(self.weight_shape)

    def to_clustered_tensor(self) -> ClusteredTensor:
        """The stored palette as a core :class:`ClusteredTensor` (indices unpacked)."""
        with torch.no_grad():
            count = math.prod(self.weight_shape)
            indices = unpack(self.packed, count, self.bits).reshape(self.weight_shape).cpu().numpy()
        k = self.codebook.shape[1]
        return ClusteredTensor(to_numpy(self.codebook), indices.astype(index_dtype(k)), self.axis, self.group_size)

    def weight_bytes(self) -> int:
        """Bytes held for the weight at run time: packed indices + codebook (+ the tiny group offsets)."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.codebook, self.group_offsets))

    def _palette_repr(self) -> str:
        k = self.codebook.shape[1]
        where = "per tensor" if self.axis is None else f"axis={self.axis}, group_size={self.group_size}"
        return f"k={k}, bits={self.bits}, {where}"


class PalettizedLinear(PalettizedWeight):
    """``nn.Linear`` whose weight is stored as bit-packed codebook indices."""

    def __init__(self, clustered: ClusteredTensor, bias: torch.Tensor | None = None, *,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if len(clustered.shape) != 2:
            raise WeightzipError(f"a Linear weight is 2-D, got shape {clustered.shape}")
        self.out_features, self.in_features = clustered.shape
        self._init_palette(clustered, dtype, device)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().to(device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, clustered: ClusteredTensor) -> "PalettizedLinear":
        weight = linear.weight
        return cls(clustered, linear.bias, dtype=weight.dtype, device=weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._palette_repr()}"


class PalettizedConv2d(PalettizedWeight):
    """``nn.Conv2d`` whose weight is stored as bit-packed codebook indices (all padding modes, groups)."""

    def __init__(self, clustered: ClusteredTensor, bias: torch.Tensor | None = None, *, stride=1, padding=0,
                 dilation=1, groups: int = 1, padding_mode: str = "zeros",
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if len(clustered.shape) != 4:
            raise WeightzipError(f"a Conv2d weight is 4-D, got shape {clustered.shape}")
        reference = nn.Conv2d(clustered.shape[1] * groups, clustered.shape[0], clustered.shape[2:], stride,
                              padding, dilation, groups, bias=False, padding_mode=padding_mode, device="meta")
        self.in_channels, self.out_channels = reference.in_channels, reference.out_channels
        self.kernel_size, self.stride, self.padding = reference.kernel_size, reference.stride, reference.padding
        self.dilation, self.groups, self.padding_mode = reference.dilation, reference.groups, reference.padding_mode
        self._reversed_padding_repeated_twice = reference._reversed_padding_repeated_twice
        self._init_palette(clustered, dtype, device)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().to(device))

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, clustered: ClusteredTensor) -> "PalettizedConv2d":
        weight = conv.weight
        return cls(clustered, conv.bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                   groups=conv.groups, padding_mode=conv.padding_mode, dtype=weight.dtype, device=weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, {self._palette_repr()}")


def palette_of(module: nn.Module, channel_axis: int, max_clusters: int = 256) -> ClusteredTensor | None:
    """The module's weight as codebook + indices, or None when it is not clustered.

    A clustered weight gives its own codebook. A plain weight is palettized exactly by the core's
    :func:`palettize_exact`, per tensor or per channel along `channel_axis`, whichever stores smaller;
    it counts as not clustered when both hold more than `max_clusters` distinct values per codebook or
    would not store smaller than the dense float32 weight.
    """
    if parametrize.is_parametrized(module, "weight"):
        stack = module.parametrizations["weight"]
        if len(stack) == 1 and isinstance(stack[0], ClusteredWeight):
            return drop_unused_centroids(stack[0].to_clustered_tensor())
        raise WeightzipError(f"cannot palettize a weight parametrized by {[type(p).__name__ for p in stack]}; "
                             "strip it first")
    return exact_palette(to_numpy(module.weight), channel_axis, max_clusters)


def exact_palette(values: np.ndarray, channel_axis: int | None, max_clusters: int = 256) -> ClusteredTensor | None:
    """`values` as an exact codebook + indices where that stores smaller (see
    :func:`weightzip.core.palette.smallest_exact_palette`), else None."""
    return smallest_exact_palette(values, max_clusters, channel_axis=channel_axis)


def palettize(module: nn.Module, *, max_clusters: int = 256,
              layers: Iterable[str | type] | str | type | None = None) -> nn.Module:
    """Replace the clustered Linear and Conv2d layers of `module` by palettized ones (in place).

    Returns `module`, or the palettized layer when `module` itself is one. A layer named in `layers` that
    is not clustered (more than `max_clusters` distinct values per tensor and per channel) is an error;
    without `layers`, such layers simply stay dense.
    """
    targets = [t for t in find_targets(module, layers)
               if parametrize.type_before_parametrizations(t.module) in (nn.Linear, nn.Conv2d)]
    if layers is not None and not targets:
        raise WeightzipError(f"no Linear or Conv2d layer among {layers!r}")
    replaced = module
    for target in targets:
        palette = palette_of(target.module, target.channel_axis, max_clusters)
        if palette is None:
            if layers is not None:
                raise InvalidClusterCountError(
                    f"{target.qualified_name!r} is not clustered: more than {max_clusters} distinct values per "
                    "tensor and per channel, or a palette would not store smaller; cluster it first")
            continue
        if isinstance(target.module, nn.Linear):
            new = PalettizedLinear.from_linear(target.module, palette)
        else:
            new = PalettizedConv2d.from_conv2d(target.module, palette)
        new.train(target.module.training)
        if target.module_name:
            parent_name, _, child = target.module_name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, new)
        else:
            replaced = new
    return replaced


def weight_memory_bytes(module: nn.Module) -> int:
    """Bytes of the weights of Linear/Conv layers as held at run time (dense or palettized)."""
    total = 0
    for submodule in module.modules():
        if isinstance(submodule, PalettizedWeight):
            total += submodule.weight_bytes()
        elif isinstance(submodule, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            total += submodule.weight.numel() * submodule.weight.element_size()
    return total
