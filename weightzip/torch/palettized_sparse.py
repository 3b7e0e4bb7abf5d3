"""The sparse palettized Linear: a pruned and clustered weight in CSR with relative indices.

Deep Compression stores a pruned layer as its kept weights only, each with its distance to the previous
one (relative indices, one byte; longer gaps bridged by filler entries) and its codebook index. This
layer keeps exactly that at run time (:class:`~weightzip.torch._kernels.layout.SparsePalette`: two bytes
an entry plus one row pointer a row), and its forward is ``torch.ops.weightzip.palettized_sparse_linear``,
whose kernel visits only the kept weights (rows in parallel, each batch row's input gathered by column).
:func:`~weightzip.torch.palettize` and :func:`~weightzip.torch.load_palettized` pick it for a Linear
whose sparse form stores smaller than its bit-packed one (about: fewer than ``bits / 16`` of the weights
kept).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from weightzip.core import ClusteredTensor
from weightzip.core.errors import WeightzipError
from weightzip.torch._kernels import ops as _ops
from weightzip.torch._kernels.layout import MAX_GAP, SparsePalette, packed_layout, sparse_dense_torch, sparse_palette
from weightzip.torch.palettized_layers import codebook_tensor


class PalettizedSparseLinear(nn.Module):
    """``nn.Linear`` whose pruned, clustered weight is stored as CSR with relative indices."""

    def __init__(self, clustered: ClusteredTensor | SparsePalette, bias: torch.Tensor | None = None, *,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        palette = clustered if isinstance(clustered, SparsePalette) else sparse_palette(clustered)
        if len(palette.shape) != 2:
            raise WeightzipError(f"a Linear weight is 2-D, got shape {palette.shape}")
        self.out_features, self.in_features = palette.shape
        self.rows_per_group, self.axis, self.group_size = palette.rows_per_group, palette.axis, palette.group_size
        self.register_buffer("row_ptr", torch.from_numpy(palette.row_ptr).to(device))
        self.register_buffer("gaps", torch.from_numpy(palette.gaps).to(device))
        self.register_buffer("values", torch.from_numpy(palette.values).to(device))
        self.register_buffer("codebook", codebook_tensor(palette.codebook, dtype, device))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().to(device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, clustered: ClusteredTensor) -> "PalettizedSparseLinear":
        weight = linear.weight
        return cls(clustered, linear.bias, dtype=weight.dtype, device=weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The whole float weight, decoded on every access (for inspection; the forward never builds it)."""
        return sparse_dense_torch(self.row_ptr, self.gaps, self.values, self.codebook, self.out_features,
                                  self.in_features, self.rows_per_group)

    def weight_bytes(self) -> int:
        """Bytes held for the weight at run time: row pointers, gaps, indices and codebook."""
        return sum(t.numel() * t.element_size() for t in (self.row_ptr, self.gaps, self.values, self.codebook))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = _ops.sparse_linear if _ops.eager(x) else torch.ops.weightzip.palettized_sparse_linear
        y = op(x, self.row_ptr, self.gaps, self.values, self.codebook, self.out_features, self.in_features,
               self.rows_per_group)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        where = "per tensor" if self.axis is None else f"axis={self.axis}, group_size={self.group_size}"
        kept = self.gaps.numel() / max(1, self.out_features * self.in_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, k={self.codebook.shape[1] - 1}, "
                f"{where}, entries={self.gaps.numel()} ({kept:.1%})")


def smaller_sparse(clustered: ClusteredTensor) -> SparsePalette | None:
    """The sparse form of a 2-D `clustered` weight when it stores smaller than the bit-packed one, else None
    (also None when it cannot be sparse: no zero centroid, more than 255 clusters, codebooks along axis 1)."""
    codebook = np.asarray(clustered.codebook)
    axis = clustered.axis
    if (len(clustered.shape) != 2 or clustered.number_of_clusters > MAX_GAP or not (codebook == 0).any()
            or (axis is not None and axis % 2 != 0)):  # codebooks along the columns
        return None
    layout, _ = packed_layout(clustered)
    packed_bytes = layout.packed_bytes + codebook.nbytes
    sparse = sparse_palette(clustered)
    return sparse if sparse.stored_bytes < packed_bytes else None
