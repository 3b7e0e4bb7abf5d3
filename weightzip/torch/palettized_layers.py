"""The palettized layers themselves (Linear, Conv1d, Conv2d, Embedding): bit-packed indices + codebook in
memory, forward passes through the custom ops of :mod:`weightzip.torch._kernels.ops`. :func:`weightzip.torch.palettize`
(:mod:`weightzip.torch.palettized`) and :func:`weightzip.torch.load_palettized` build them; the recurrent
layers (:mod:`~weightzip.torch.palettized_recurrent`) keep their weights in :class:`PalettizedLinear` stores."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weightzip.core import ClusteredTensor, index_dtype
from weightzip.core.errors import WeightzipError
from weightzip.torch import _kernels
from weightzip.torch._kernels import ops as _ops  # also registers torch.ops.weightzip.*
from weightzip.torch._kernels.layout import Palette, decode_rows_torch, unpack_rows
from weightzip.torch.tensors import to_numpy

_NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_TORCH_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def codebook_tensor(codebook, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """A palette's codebook as a `dtype` tensor on `device`, copied at most once.

    A writeable native float array is used as it is (``.to`` converts only when dtype or device differ; a
    palette's own array, e.g. a view of a loaded file, is then shared, not duplicated). Anything else
    (read-only, other byte order, integer) is copied once, straight into `dtype` when NumPy has it,
    never through a float64 intermediate (twice the bytes and two casts).
    """
    array = np.asarray(codebook)
    if array.dtype in _NUMPY_FLOATS and array.flags.writeable and array.dtype.isnative:
        tensor = torch.from_numpy(array)
    else:
        tensor = torch.from_numpy(np.array(array, dtype=_TORCH_FLOATS.get(dtype, np.float64)))
    return tensor.to(device=device, dtype=dtype)


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
        self.register_buffer("codebook", codebook_tensor(palette.codebook, dtype, device))
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
        if _ops.eager(x):
            # The buffers read from the module's own dict (registered by _init_palette): nn.Module.__getattr__
            # is a Python call each, and this path is timed against a ~2 ms kernel (see ops.linear_eager).
            buffers, layout = self._buffers, self.layout
            return _ops.linear_eager(x, buffers["packed"], buffers["codebook"], buffers["col_offsets"], self.bias,
                                     self.bits, self.out_features, self.in_features, layout.rows_per_group,
                                     layout.stride)
        y = torch.ops.weightzip.palettized_linear(x, *self._op_args(), self.out_features, self.in_features,
                                                  self.layout.rows_per_group)
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
        self._whole = self._whole_decoder()

    def _whole_decoder(self):
        """A :class:`~weightzip.torch._kernels.WholeDecoder` when the eager forward may decode the weight in one
        piece with the compiled kernels (float32 on the CPU, at most one tile), else None."""
        rows, cols = self.layout.rows, self.layout.cols
        if (self.codebook.dtype is not torch.float32 or not self.codebook.is_cpu or rows * cols > _ops.TILE_ELEMENTS
                or not _kernels.available()):
            return None
        return _kernels.WholeDecoder(self.packed, self.layout.stride, self.bits, rows, cols, self.codebook,
                                     self.layout.clusters, self.layout.rows_per_group, self.col_offsets,
                                     self.weight_shape)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._whole = self._whole_decoder()  # moved or cast: the buffers are new tensors
        return result

    def __getstate__(self):  # pickling (torch.save of the module): the decoder holds a ctypes function
        state = super().__getstate__()
        state["_whole"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._whole = self._whole_decoder()

    @classmethod
    def _from_dense(cls, conv: nn.Module, clustered: ClusteredTensor):
        weight = conv.weight
        return cls(clustered, conv.bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                   groups=conv.groups, padding_mode=conv.padding_mode, dtype=weight.dtype, device=weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._whole is not None and self.padding_mode == "zeros" and x.dtype is torch.float32 and _ops.eager(x):
            decoder = self._whole
            buffers = self._buffers
            if decoder.serves(buffers["packed"], buffers["codebook"], buffers["col_offsets"]):
                # The eager fast path of a small float32 layer: decoded in one kernel call, then torch's conv
                # (what ops.conv does for a weight of at most one tile, without its per-call Python).
                return self._DENSE_FN(x, decoder(), self.bias, self.stride, self.padding, self.dilation, self.groups)
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

    _DENSE, _DIMS, _DENSE_FN = nn.Conv1d, 1, staticmethod(F.conv1d)

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d, clustered: ClusteredTensor) -> "PalettizedConv1d":
        return cls._from_dense(conv, clustered)


class PalettizedConv2d(_PalettizedConv):
    """``nn.Conv2d`` whose weight is stored as bit-packed codebook indices."""

    _DENSE, _DIMS, _DENSE_FN = nn.Conv2d, 2, staticmethod(F.conv2d)

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
