"""Palettized inference layers: bit-packed indices + codebook in memory, never the whole float weight.

A clustered layer with k shared weights needs only ``ceil(log2 k)`` bits per weight plus a small
codebook. The layers here keep exactly that at run time: a ``packed`` uint8 buffer (each weight row
bit-packed with the core's layout, :mod:`weightzip.torch._kernels.layout`), a ``codebook`` ``(groups, k)``
and, for codebooks along an axis other than 0, per-column codebook offsets. Their forward passes are
the custom ops of :mod:`weightzip.torch._kernels.ops` (``torch.ops.weightzip.*``; they work under
``torch.compile`` and ``torch.export``): a fused lookup-table GEMV for small batches, tiles of at most
1 MiB of decoded weights multiplied with BLAS / oneDNN for larger ones and for convolutions, and a gather
of the decoded rows for embeddings. Weight memory drops by about ``32 / bits`` against float32
(``benchmarks/bench_palettized_runtime.py`` measures memory and latency against dense float32 and
torch's dynamic int8).

:func:`palettize` converts the Linear (pruned ones to the sparse layer of
:mod:`~weightzip.torch.palettized_sparse` where that stores smaller), Conv1d, Conv2d (grouped and depthwise
included), Embedding and recurrent (:mod:`~weightzip.torch.palettized_recurrent`) layers of a model that is clustered (``cluster_weights``) or clustered and stripped (``strip_clustering``:
the codebook is recovered exactly from the distinct values, per tensor or per channel, whichever stores
smaller). :func:`weightzip.torch.load_palettized` builds the same layers straight from a ``.wz`` file.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from weightzip.core import ClusteredTensor, index_dtype
from weightzip.core.errors import InvalidClusterCountError, WeightzipError
from weightzip.core.palette import drop_unused_centroids, smallest_exact_palette  # noqa: F401 (re-exported)
from weightzip.torch._kernels import ops as _ops  # also registers torch.ops.weightzip.*
from weightzip.torch._kernels.layout import Palette, decode_rows_torch, unpack_rows
from weightzip.torch.clustering import ClusteredWeight
from weightzip.torch.palettized_recurrent import RECURRENT_LAYERS, palettized_recurrent, why_not_recurrent
from weightzip.torch.palettized_sparse import PalettizedSparseLinear, smaller_sparse
from weightzip.torch.targets import copy_unless_inplace, find_targets
from weightzip.torch.tensors import to_numpy


class PalettizedWeight(nn.Module):
    """Storage of a palettized weight shared by the palettized layers: packed indices, codebook, offsets."""

    def _init_palette(self, clustered: ClusteredTensor | Palette, dtype: torch.dtype, device) -> None:
        palette = clustered if isinstance(clustered, Palette) else Palette.from_clustered(clustered)
        self.layout = palette.layout
        self.weight_shape = palette.shape
        self.bits = palette.layout.bits
        self.axis = palette.axis
        self.group_size = palette.group_size
        self.register_buffer("packed", torch.from_numpy(palette.packed).to(device))
        codebook = torch.from_numpy(np.asarray(palette.codebook, dtype=np.float64))
        self.register_buffer("codebook", codebook.to(device=device, dtype=dtype))
        offsets = None if palette.col_offsets is None else torch.from_numpy(palette.col_offsets).to(device)
        self.register_buffer("col_offsets", offsets, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The whole float weight, decoded on every access (for inspection; the forward never builds it)."""
        rows = decode_rows_torch(self.packed, self.layout, self.codebook, self.col_offsets, slice(None))
        return rows.reshape(self.weight_shape)

    def to_clustered_tensor(self) -> ClusteredTensor:
        """The stored palette as a core :class:`ClusteredTensor` (indices unpacked)."""
        indices = unpack_rows(self.packed.cpu().numpy(), self.layout).reshape(self.weight_shape)
        k = self.codebook.shape[1]
        return ClusteredTensor(to_numpy(self.codebook), indices.astype(index_dtype(k)), self.axis, self.group_size)

    def weight_bytes(self) -> int:
        """Bytes held for the weight at run time: packed indices + codebook (+ per-column offsets)."""
        tensors = [t for t in (self.packed, self.codebook, self.col_offsets) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _op_args(self) -> tuple:
        return self.packed, self.codebook, self.col_offsets, self.bits

    def _palette_repr(self) -> str:
        k = self.codebook.shape[1]
        where = "per tensor" if self.axis is None else f"axis={self.axis}, group_size={self.group_size}"
        return f"k={k}, bits={self.bits}, {where}"


class PalettizedLinear(PalettizedWeight):
    """``nn.Linear`` whose weight is stored as bit-packed codebook indices."""

    def __init__(self, clustered: ClusteredTensor | Palette, bias: torch.Tensor | None = None, *,
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
        op = _ops.linear if _ops.eager(x) else torch.ops.weightzip.palettized_linear
        y = op(x, *self._op_args(), self.out_features, self.in_features, self.layout.rows_per_group)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._palette_repr()}"


class _PalettizedConv(PalettizedWeight):
    """Shared part of the palettized ``nn.Conv1d`` / ``nn.Conv2d`` (all padding modes, groups, depthwise)."""

    _DENSE: type[nn.Module]

    def __init__(self, clustered: ClusteredTensor | Palette, bias: torch.Tensor | None = None, *, stride=1, padding=0,
                 dilation=1, groups: int = 1, padding_mode: str = "zeros",
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        dims = self._DIMS
        if len(clustered.shape) != dims + 2:
            raise WeightzipError(f"a {self._DENSE.__name__} weight is {dims + 2}-D, got shape {clustered.shape}")
        reference = self._DENSE(clustered.shape[1] * groups, clustered.shape[0], clustered.shape[2:], stride,
                                padding, dilation, groups, bias=False, padding_mode=padding_mode, device="meta")
        self.in_channels, self.out_channels = reference.in_channels, reference.out_channels
        self.kernel_size, self.stride, self.padding = reference.kernel_size, reference.stride, reference.padding
        self.dilation, self.groups, self.padding_mode = reference.dilation, reference.groups, reference.padding_mode
        self._reversed_padding_repeated_twice = list(reference._reversed_padding_repeated_twice)
        self._init_palette(clustered, dtype, device)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().to(device))

    @classmethod
    def _from_dense(cls, conv: nn.Module, clustered: ClusteredTensor):
        weight = conv.weight
        return cls(clustered, conv.bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                   groups=conv.groups, padding_mode=conv.padding_mode, dtype=weight.dtype, device=weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            # Explicit padding first (reflect/replicate/circular, or 'same'): the op then pads nothing.
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * self._DIMS
        op = _ops.conv if _ops.eager(x) else torch.ops.weightzip.palettized_conv
        return op(
            x, self.packed, self.codebook, self.col_offsets, self.bias, self.bits, list(self.weight_shape),
            self.layout.rows_per_group, list(self.stride), list(padding), list(self.dilation), self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, {self._palette_repr()}")


class PalettizedConv1d(_PalettizedConv):
    """``nn.Conv1d`` whose weight is stored as bit-packed codebook indices."""

    _DENSE, _DIMS = nn.Conv1d, 1

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d, clustered: ClusteredTensor) -> "PalettizedConv1d":
        return cls._from_dense(conv, clustered)


class PalettizedConv2d(_PalettizedConv):
    """``nn.Conv2d`` whose weight is stored as bit-packed codebook indices."""

    _DENSE, _DIMS = nn.Conv2d, 2

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, clustered: ClusteredTensor) -> "PalettizedConv2d":
        return cls._from_dense(conv, clustered)


class PalettizedEmbedding(PalettizedWeight):
    """``nn.Embedding`` whose table is stored as bit-packed codebook indices; a lookup decodes only the
    rows it gathers. ``max_norm`` (which rewrites the table in place) is refused."""

    def __init__(self, clustered: ClusteredTensor | Palette, *, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if len(clustered.shape) != 2:
            raise WeightzipError(f"an Embedding weight is 2-D, got shape {clustered.shape}")
        self.num_embeddings, self.embedding_dim = clustered.shape
        self.padding_idx = padding_idx
        self._init_palette(clustered, dtype, device)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, clustered: ClusteredTensor) -> "PalettizedEmbedding":
        if embedding.max_norm is not None:
            raise WeightzipError("cannot palettize an Embedding with max_norm: it renormalises its table in place")
        weight = embedding.weight
        return cls(clustered, padding_idx=embedding.padding_idx, dtype=weight.dtype, device=weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        op = _ops.embedding if _ops.eager(ids) else torch.ops.weightzip.palettized_embedding
        return op(ids, *self._op_args(), self.num_embeddings, self.embedding_dim, self.layout.rows_per_group)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._palette_repr()}"


# Dense layer type -> palettized layer and its constructor from (dense layer, ClusteredTensor).
PALETTIZED_LAYERS: dict[type[nn.Module], tuple[type[PalettizedWeight], callable]] = {
    nn.Linear: (PalettizedLinear, PalettizedLinear.from_linear),
    nn.Conv1d: (PalettizedConv1d, PalettizedConv1d.from_conv1d),
    nn.Conv2d: (PalettizedConv2d, PalettizedConv2d.from_conv2d),
    nn.Embedding: (PalettizedEmbedding, PalettizedEmbedding.from_embedding),
}


def palette_of(module: nn.Module, channel_axis: int, max_clusters: int = 256,
               name: str = "weight") -> ClusteredTensor | None:
    """The module's weight as codebook + indices, or None when it is not clustered.

    A clustered weight gives its own codebook. A plain weight is palettized exactly by the core's
    :func:`palettize_exact`, per tensor or per channel along `channel_axis`, whichever stores smaller;
    it counts as not clustered when both hold more than `max_clusters` distinct values per codebook or
    would not store smaller than the dense float32 weight.
    """
    if parametrize.is_parametrized(module, name):
        stack = module.parametrizations[name]
        if len(stack) == 1 and isinstance(stack[0], ClusteredWeight):
            return drop_unused_centroids(stack[0].to_clustered_tensor())
        raise WeightzipError(f"cannot palettize a weight parametrized by {[type(p).__name__ for p in stack]}; "
                             "strip it first")
    return exact_palette(to_numpy(getattr(module, name)), channel_axis, max_clusters)


def exact_palette(values: np.ndarray, channel_axis: int | None, max_clusters: int = 256) -> ClusteredTensor | None:
    """`values` as an exact codebook + indices where that stores smaller (see
    :func:`weightzip.core.palette.smallest_exact_palette`), else None."""
    return smallest_exact_palette(values, max_clusters, channel_axis=channel_axis)


def palettize(module: nn.Module, *, max_clusters: int = 256,
              layers: Iterable[str | type] | str | type | None = None, inplace: bool = True,
              sparse: bool = True) -> nn.Module:
    """Replace the clustered Linear, Conv1d, Conv2d and Embedding layers of `module` by palettized ones
    (in place by default, as every PyTorch call here; ``inplace=False`` palettizes a deep copy).

    With `sparse` (the default), a pruned Linear whose kept weights in CSR with relative indices store
    smaller than its bit-packed indices becomes a
    :class:`~weightzip.torch.palettized_sparse.PalettizedSparseLinear`.

    Returns `module` (or its copy), or the palettized layer when `module` itself is one. A layer named in `layers` that
    is not clustered (more than `max_clusters` distinct values per tensor and per channel) is an error;
    without `layers`, such layers simply stay dense.
    """
    module = copy_unless_inplace(module, inplace)
    found = find_targets(module, layers)
    targets = [t for t in found if parametrize.type_before_parametrizations(t.module) in PALETTIZED_LAYERS]
    recurrent: dict[str, list] = {}
    for target in found:
        if parametrize.type_before_parametrizations(target.module) in RECURRENT_LAYERS:
            recurrent.setdefault(target.module_name, []).append(target)
    if layers is not None and not targets and not recurrent:
        names = ", ".join(kind.__name__ for kind in (*PALETTIZED_LAYERS, *RECURRENT_LAYERS))
        raise WeightzipError(f"no {names} layer among {layers!r}")
    replaced = module
    for target in targets:
        palette = palette_of(target.module, target.channel_axis, max_clusters)
        if palette is None:
            if layers is not None:
                raise _not_clustered(target.qualified_name, max_clusters)
            continue
        kind = parametrize.type_before_parametrizations(target.module)
        _, build = PALETTIZED_LAYERS[kind]
        sparse_form = smaller_sparse(palette) if sparse and kind is nn.Linear else None
        if sparse_form is not None:
            new = PalettizedSparseLinear(sparse_form, target.module.bias, dtype=target.module.weight.dtype,
                                         device=target.module.weight.device)
        else:
            new = build(target.module, palette)
        replaced = _replace(module, target.module_name, target.module, new, replaced)
    for module_name, weights in recurrent.items():
        dense = weights[0].module
        palettes = {t.parameter_name: palette_of(dense, t.channel_axis, max_clusters, t.parameter_name)
                    for t in weights}
        unclustered = [t.qualified_name for t in weights if palettes[t.parameter_name] is None]
        reason = why_not_recurrent(dense)
        if unclustered or reason:
            if layers is not None:
                if reason:
                    raise WeightzipError(f"cannot palettize {module_name!r}: {reason}")
                raise _not_clustered(unclustered[0], max_clusters)
            continue
        dtype = next(p for name, p in dense.named_parameters() if "weight" in name).dtype
        new = palettized_recurrent(dense, palettes, dtype)
        replaced = _replace(module, module_name, dense, new, replaced)
    return replaced


def _not_clustered(name: str, max_clusters: int) -> InvalidClusterCountError:
    return InvalidClusterCountError(
        f"{name!r} is not clustered: more than {max_clusters} distinct values per tensor and per channel, or a "
        "palette would not store smaller; cluster it first")


def _replace(root: nn.Module, module_name: str, old: nn.Module, new: nn.Module, replaced: nn.Module) -> nn.Module:
    """Put `new` where `old` is (`module_name` under `root`); returns the new root when `old` was the root."""
    new.train(old.training)
    if not module_name:
        return new
    parent_name, _, child = module_name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
    return replaced


def weight_memory_bytes(module: nn.Module) -> int:
    """Bytes of the weights of Linear/Conv/Embedding layers as held at run time (dense or palettized)."""
    total = 0
    for submodule in module.modules():
        if isinstance(submodule, (PalettizedWeight, PalettizedSparseLinear)):
            total += submodule.weight_bytes()
        elif isinstance(submodule, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)):
            total += submodule.weight.numel() * submodule.weight.element_size()
        elif isinstance(submodule, (nn.RNNBase, nn.RNNCellBase)):
            weights = [p for name, p in submodule.named_parameters(recurse=False) if name.startswith("weight")]
            total += sum(p.numel() * p.element_size() for p in weights)
    return total
