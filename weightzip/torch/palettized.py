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
from torch import nn
from torch.nn.utils import parametrize

from weightzip.core import ClusteredTensor
from weightzip.core.errors import InvalidClusterCountError, WeightzipError
from weightzip.core.palette import drop_unused_centroids, smallest_exact_palette  # noqa: F401 (re-exported)
from weightzip.torch.clustering import ClusteredWeight
from weightzip.torch.palettized_layers import (  # noqa: F401  (re-exported: the layers live there)
    PALETTIZED_LAYERS,
    PalettizedConv1d,
    PalettizedConv2d,
    PalettizedEmbedding,
    PalettizedLinear,
    PalettizedWeight,
)
from weightzip.torch.palettized_recurrent import RECURRENT_LAYERS, palettized_recurrent, why_not_recurrent
from weightzip.torch.palettized_sparse import PalettizedSparseLinear, smaller_sparse
from weightzip.torch.targets import copy_unless_inplace, find_targets
from weightzip.torch.tensors import to_numpy


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
    :class:`~weightzip.torch.palettized_sparse.PalettizedSparseLinear`. A pruned convolution or embedding keeps
    the bit-packed form (its zeros are a codebook entry like any other): there is no sparse kernel for them.

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
