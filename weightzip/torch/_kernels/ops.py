"""Palettized linear, convolution and embedding as torch custom ops (``torch.ops.weightzip.*``).

Registered with :func:`torch.library.custom_op` and a fake (meta) implementation, so ``torch.compile``
treats each as one opaque node (no graph break) and ``torch.export`` keeps them in the exported program.
The tensors of a palettized weight (packed indices, codebook, column offsets) are ordinary op inputs; the
layout's integers travel as ``int`` arguments.

Strategy, per op:

- linear, up to :data:`GEMV_MAX_BATCH` rows of input: the fused GEMV kernel (the weight is read once per
  4 input rows, decoded 32 values at a time in registers);
- linear, inputs up to :data:`L2_INPUT_BYTES`: each weight row decoded once into L1 and multiplied with
  all input rows (one parallel region: on a shared CPU every extra fork/join waits for a descheduled thread);
- linear, larger inputs: tiled GEMM: decode a tile of at most :data:`TILE_ELEMENTS` weights (4 MiB of
  float32, L3-sized) into a scratch buffer, multiply it with BLAS (``F.linear``), move on;
- convolution: the same tiles over output channels (whole channel groups), each run through
  ``F.conv1d/conv2d``; a weight smaller than a tile is decoded in one piece;
- embedding: the kernel decodes exactly the looked-up rows.

Float32 inputs and codebooks use the compiled kernels; other dtypes, or a missing build, use torch ops
on the same tiles (:func:`~weightzip.torch._kernels.layout.decode_rows_torch`).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from weightzip.core.errors import IndexOutOfRangeError
from weightzip.torch import _kernels
from weightzip.torch._kernels.layout import PackedLayout, decode_rows_torch, sparse_dense_torch

GEMV_MAX_BATCH = 4
L2_INPUT_BYTES = 1 << 19  # inputs up to this size: row-decoding GEMM kernel (they stay in L2)
TILE_ELEMENTS = 1 << 20  # weights decoded at a time otherwise: 4 MiB of float32


def eager(x: torch.Tensor) -> bool:
    """Whether a layer may call the implementation directly instead of ``torch.ops.weightzip.*``.

    Only for plain CPU tensors in eager mode with nothing to differentiate: the dispatcher's path to a
    Python custom op costs about 0.1 ms a call, more than a small layer's whole GEMV. Under
    ``torch.compile``/``torch.export``/tracing (fake, functional or proxy tensors), or when gradients
    are wanted (the op then raises on backward instead of silently returning no gradient), the op is used.
    """
    return (type(x) is torch.Tensor and x.is_cpu and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and not (x.requires_grad and torch.is_grad_enabled()))


def _layout(bits: int, rows: int, cols: int, codebook: torch.Tensor, rows_per_group: int) -> PackedLayout:
    return _cached_layout(bits, rows, cols, codebook.shape[-1], rows_per_group)


@functools.lru_cache(maxsize=4096)
def _cached_layout(bits: int, rows: int, cols: int, clusters: int, rows_per_group: int) -> PackedLayout:
    return PackedLayout(bits, rows, cols, clusters, rows_per_group)


def _use_kernels(*tensors: torch.Tensor) -> bool:
    # Called on every forward of every layer: plain attribute checks (a generator over `t.device.type`
    # cost ~8 us a call, as much as decoding a small layer).
    for t in tensors:
        if t.dtype is not torch.float32 or not t.is_cpu:
            return False
    if not _kernels.available():
        _kernels.warn_fallback_once()
        return False
    return True


def tile_rows(cols: int) -> int:
    """Weight rows decoded at a time: about TILE_ELEMENTS weights, rounded down to a multiple of 64 (or 16) rows
    so that BLAS / oneDNN get the channel counts their blocked kernels are fastest at."""
    rows = max(1, TILE_ELEMENTS // cols)
    for multiple in (64, 16):
        if rows >= multiple:
            return rows // multiple * multiple
    return rows


def decode_tile(packed: torch.Tensor, layout: PackedLayout, codebook: torch.Tensor, col_offsets: Optional[torch.Tensor],
                first: int, count: int, fast: bool) -> torch.Tensor:
    """Weight rows ``first .. first + count`` as a dense (count, cols) tensor."""
    if fast:  # one thread: the BLAS / oneDNN call on the tile that follows is the parallel part
        return _kernels.decode_rows(packed, layout.stride, layout.bits, layout.cols, codebook, layout.clusters,
                                    layout.rows_per_group, col_offsets, first_row=first, count=count, threads=1)
    return decode_rows_torch(packed, layout, codebook, col_offsets, slice(first, first + count))


def linear(x: torch.Tensor, packed: torch.Tensor, codebook: torch.Tensor,
                      col_offsets: Optional[torch.Tensor], bits: int, rows: int, cols: int,
                      rows_per_group: int) -> torch.Tensor:
    """``x @ W.T`` for the palettized W (rows x cols); x of shape (..., cols)."""
    layout = _layout(bits, rows, cols, codebook, rows_per_group)
    flat = x.reshape(-1, cols)
    fast = _use_kernels(flat, codebook)
    if fast and flat.shape[0] <= GEMV_MAX_BATCH:
        y = _kernels.gemv(packed, layout.stride, bits, rows, cols, codebook, layout.clusters, rows_per_group,
                          col_offsets, flat.contiguous())
        return y.reshape(*x.shape[:-1], rows)
    if fast and flat.numel() * 4 <= L2_INPUT_BYTES:
        y = _kernels.gemm_rows(packed, layout.stride, bits, rows, cols, codebook, layout.clusters, rows_per_group,
                               col_offsets, flat.contiguous())
        return y.reshape(*x.shape[:-1], rows)
    step = tile_rows(cols)
    pieces = []
    for first in range(0, rows, step):
        count = min(step, rows - first)
        tile = decode_tile(packed, layout, codebook, col_offsets, first, count, fast)
        pieces.append(F.linear(flat, tile.to(x.dtype)))
    y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
    return y.reshape(*x.shape[:-1], rows)


palettized_linear = torch.library.custom_op("weightzip::palettized_linear", mutates_args=())(linear)


def linear_eager(x: torch.Tensor, packed: torch.Tensor, codebook: torch.Tensor, col_offsets: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor], bits: int, rows: int, cols: int, rows_per_group: int,
                 stride: int) -> torch.Tensor:
    """``x @ W.T + bias`` in eager mode (only where :func:`eager` allows; `stride` is the layout's row stride).

    Up to :data:`GEMV_MAX_BATCH` contiguous float32 input rows go straight to the GEMV kernel with the bias
    added inside it: one library call, no intermediate tensor. That path is kept short on purpose: on a
    4096x4096 layer at batch 1 whose weight and the interpreter's data were just evicted by another layer,
    the generic route (:func:`linear`, then a separate ``+ bias``) cost ~20 % over the kernel itself, measured
    with thread CPU time. Anything else (more rows, other dtypes, a bias that autograd must see) takes
    :func:`linear` and the ``+ bias`` as before.
    """
    if (_kernels.loaded() is not None and x.dtype is torch.float32 and codebook.dtype is torch.float32
            and x.shape[-1] == cols and x.is_contiguous() and codebook.is_cpu and x.numel() <= GEMV_MAX_BATCH * cols
            and (bias is None or (bias.dtype is torch.float32 and bias.is_cpu
                                  and not (bias.requires_grad and torch.is_grad_enabled())))):
        y = _kernels.gemv(packed, stride, bits, rows, cols, codebook, codebook.shape[-1], rows_per_group, col_offsets,
                          x.reshape(-1, cols), bias=bias)
        return y.reshape(*x.shape[:-1], rows)
    y = linear(x, packed, codebook, col_offsets, bits, rows, cols, rows_per_group)
    return y if bias is None else y + bias


@palettized_linear.register_fake
def _(x, packed, codebook, col_offsets, bits, rows, cols, rows_per_group):
    return x.new_empty(*x.shape[:-1], rows)


_CONV = {1: F.conv1d, 2: F.conv2d}


def conv(x: torch.Tensor, packed: torch.Tensor, codebook: torch.Tensor,
                    col_offsets: Optional[torch.Tensor], bias: Optional[torch.Tensor], bits: int,
                    weight_shape: list[int], rows_per_group: int, stride: list[int], padding: list[int],
                    dilation: list[int], groups: int) -> torch.Tensor:
    """``F.conv1d/conv2d(x, W, bias, ...)`` (zero padding) with W decoded a tile of output channels at a time."""
    convolve = _CONV[len(weight_shape) - 2]
    rows, cols = weight_shape[0], 1
    for size in weight_shape[1:]:
        cols *= size
    layout = _layout(bits, rows, cols, codebook, rows_per_group)
    fast = _use_kernels(x, codebook)
    if rows * cols <= TILE_ELEMENTS:
        weight = decode_tile(packed, layout, codebook, col_offsets, 0, rows, fast).reshape(weight_shape)
        return convolve(x, weight, bias, stride, padding, dilation, groups)
    per_group_out, per_group_in = rows // groups, weight_shape[1]
    groups_per_tile = max(1, TILE_ELEMENTS // (per_group_out * cols))
    pieces = []
    for first_group in range(0, groups, groups_per_tile):
        count = min(groups_per_tile, groups - first_group)
        if groups == 1:  # tile over output channels
            step = tile_rows(cols)
            for first in range(0, rows, step):
                n = min(step, rows - first)
                weight = decode_tile(packed, layout, codebook, col_offsets, first, n, fast)
                piece_bias = None if bias is None else bias[first:first + n]
                pieces.append(convolve(x, weight.reshape(n, *weight_shape[1:]), piece_bias, stride, padding, dilation, 1))
            break
        first, n = first_group * per_group_out, count * per_group_out
        weight = decode_tile(packed, layout, codebook, col_offsets, first, n, fast)
        inputs = x[:, first_group * per_group_in:(first_group + count) * per_group_in]
        piece_bias = None if bias is None else bias[first:first + n]
        pieces.append(convolve(inputs, weight.reshape(n, *weight_shape[1:]), piece_bias, stride, padding, dilation, count))
    return torch.cat(pieces, dim=1)


palettized_conv = torch.library.custom_op("weightzip::palettized_conv", mutates_args=())(conv)


@palettized_conv.register_fake
def _(x, packed, codebook, col_offsets, bias, bits, weight_shape, rows_per_group, stride, padding, dilation, groups):
    weight = x.new_empty(weight_shape)
    return _CONV[len(weight_shape) - 2](x, weight, bias, stride, padding, dilation, groups)


def embedding(ids: torch.Tensor, packed: torch.Tensor, codebook: torch.Tensor,
                         col_offsets: Optional[torch.Tensor], bits: int, rows: int, cols: int,
                         rows_per_group: int) -> torch.Tensor:
    """``W[ids]``: only the looked-up rows are decoded."""
    flat = ids.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= rows):
        raise IndexOutOfRangeError(f"embedding index out of range: ids must lie in [0, {rows}), got "
                         f"[{int(flat.min())}, {int(flat.max())}]")
    layout = _layout(bits, rows, cols, codebook, rows_per_group)
    if _use_kernels(codebook):
        out = _kernels.decode_rows(packed, layout.stride, bits, cols, codebook, layout.clusters, rows_per_group,
                                   col_offsets, row_ids=flat.contiguous())
    else:
        out = decode_rows_torch(packed, layout, codebook, col_offsets, flat)
    return out.reshape(*ids.shape, cols)


palettized_embedding = torch.library.custom_op("weightzip::palettized_embedding", mutates_args=())(embedding)


@palettized_embedding.register_fake
def _(ids, packed, codebook, col_offsets, bits, rows, cols, rows_per_group):
    return codebook.new_empty(*ids.shape, cols)


def sparse_linear(x: torch.Tensor, row_ptr: torch.Tensor, gaps: torch.Tensor, values: torch.Tensor,
                  codebook: torch.Tensor, rows: int, cols: int, rows_per_group: int) -> torch.Tensor:
    """``x @ W.T`` for a pruned palettized W in CSR with relative indices (see
    :class:`~weightzip.torch._kernels.layout.SparsePalette`): only the kept weights are visited."""
    flat = x.reshape(-1, cols)
    if _use_kernels(flat, codebook):
        y = _kernels.sparse_gemm(row_ptr, gaps, values, rows, codebook, rows_per_group, flat)
    else:
        weight = sparse_dense_torch(row_ptr, gaps, values, codebook, rows, cols, rows_per_group)
        y = F.linear(flat, weight.to(x.dtype))
    return y.reshape(*x.shape[:-1], rows)


palettized_sparse_linear = torch.library.custom_op("weightzip::palettized_sparse_linear", mutates_args=())(
    sparse_linear)


@palettized_sparse_linear.register_fake
def _(x, row_ptr, gaps, values, codebook, rows, cols, rows_per_group):
    return x.new_empty(*x.shape[:-1], rows)


RNN_MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


def _step(mode: str, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
    """One time step of the recurrence from the input and hidden projections (biases included)."""
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if mode == "GRU":
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h, None
    pre = gi + gh
    return (torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)), None


def rnn(x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor],
        ih_packed: torch.Tensor, ih_codebook: torch.Tensor, ih_offsets: Optional[torch.Tensor], ih_bits: int,
        ih_rows_per_group: int, hh_packed: torch.Tensor, hh_codebook: torch.Tensor,
        hh_offsets: Optional[torch.Tensor], hh_bits: int, hh_rows_per_group: int,
        b_ih: Optional[torch.Tensor], b_hh: Optional[torch.Tensor], mode: str, reverse: bool
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer and direction of an RNN/LSTM/GRU with palettized weights: x (T, B, input) and h0/c0 (B, H)
    give (outputs (T, B, H), h_T, c_T; c_T is empty but for LSTM). The input projection of every step is
    one palettized GEMM; the time loop (each step's hidden projection through the fused GEMV, then the gates)
    in the kernel (``_kernels.rnn_steps``), or a step loop of torch ops without the build or for other dtypes."""
    steps, batch, inputs = x.shape
    hidden = h0.shape[-1]
    gates = {"LSTM": 4, "GRU": 3}.get(mode, 1) * hidden
    gi = linear(x.reshape(steps * batch, inputs), ih_packed, ih_codebook, ih_offsets, ih_bits, gates, inputs,
                ih_rows_per_group).reshape(steps, batch, gates)
    if b_ih is not None:
        gi = gi + b_ih
    if _use_kernels(gi, h0, hh_codebook, *(t for t in (c0, b_hh) if t is not None)):
        # The whole time loop in the kernel (GEMV + gate arithmetic per step), no Python per step.
        layout = _layout(hh_bits, gates, hidden, hh_codebook, hh_rows_per_group)
        out, h, c = _kernels.rnn_steps(mode, gi, hh_packed, layout.stride, hh_bits, hh_codebook, layout.clusters,
                                       hh_rows_per_group, hh_offsets, b_hh, h0, c0 if mode == "LSTM" else None,
                                       reverse=reverse)
        return out, h, (c if mode == "LSTM" else x.new_empty(0))
    h, c = h0, c0
    outputs = [h0] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        gh = linear(h, hh_packed, hh_codebook, hh_offsets, hh_bits, gates, hidden, hh_rows_per_group)
        if b_hh is not None:
            gh = gh + b_hh
        h, c = _step(mode, gi[t], gh, h, c)
        outputs[t] = h
    out = torch.stack(outputs) if steps else x.new_empty(0, batch, hidden)
    c_out = c.clone() if mode == "LSTM" else x.new_empty(0)
    return out, h.clone(), c_out


palettized_rnn = torch.library.custom_op("weightzip::palettized_rnn", mutates_args=())(rnn)


@palettized_rnn.register_fake
def _(x, h0, c0, ih_packed, ih_codebook, ih_offsets, ih_bits, ih_rows_per_group, hh_packed, hh_codebook,
      hh_offsets, hh_bits, hh_rows_per_group, b_ih, b_hh, mode, reverse):
    steps, batch, hidden = x.shape[0], x.shape[1], h0.shape[-1]
    c_shape = (batch, hidden) if mode == "LSTM" else (0,)
    return x.new_empty(steps, batch, hidden), x.new_empty(batch, hidden), x.new_empty(c_shape)
