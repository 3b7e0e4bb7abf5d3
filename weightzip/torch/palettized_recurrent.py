"""Palettized recurrent layers: ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and their cells with bit-packed weights.

Each ``weight_ih*`` / ``weight_hh*`` is held as a weight-only :class:`~weightzip.torch.palettized.PalettizedLinear`
child under its own name (``lstm.weight_ih_l0.packed``, ``.codebook``); biases stay parameters. Every layer
and direction runs as one ``torch.ops.weightzip.palettized_rnn`` call (opaque to ``torch.compile``, kept by
``torch.export``, whatever the sequence length): the input projection of all steps as one palettized GEMM,
then the time loop inside the compiled kernel (``wz_rnn``: per step the fused GEMV of the hidden state and
the gate arithmetic of PyTorch's documented equations; a Python step loop of torch ops without the build).
Not covered (refused by name): LSTM ``proj_size``, ``PackedSequence`` inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from weightzip.core import ClusteredTensor
from weightzip.core.errors import WeightzipError
from weightzip.torch._kernels import ops as _ops
from weightzip.torch._kernels.layout import Palette
from weightzip.torch.palettized_layers import PalettizedLinear

_MODES = {nn.LSTM: "LSTM", nn.GRU: "GRU", nn.LSTMCell: "LSTM", nn.GRUCell: "GRU"}


def _mode(module: nn.Module) -> str:
    kind = parametrize.type_before_parametrizations(module)
    if kind in _MODES:
        return _MODES[kind]
    return "RNN_TANH" if module.nonlinearity == "tanh" else "RNN_RELU"


def why_not_recurrent(module: nn.Module) -> str | None:
    """Why `module` (an RNN/LSTM/GRU or cell) has no palettized counterpart, or None."""
    kind = parametrize.type_before_parametrizations(module)
    if kind not in RECURRENT_LAYERS:
        return f"{kind.__name__} has no palettized layer"
    if getattr(module, "proj_size", 0):
        return "LSTM with proj_size"
    return None


def _weight_store(palette: ClusteredTensor | Palette, dtype, device) -> nn.Module:
    return PalettizedLinear(palette, None, dtype=dtype, device=device)


def _parameter_copy(tensor: torch.Tensor | None) -> nn.Parameter | None:
    return None if tensor is None else nn.Parameter(tensor.detach().clone(), requires_grad=tensor.requires_grad)


class _PalettizedRecurrent(nn.Module):
    """Shared construction: one weight-only PalettizedLinear per weight, biases copied."""

    def _init_weights(self, dense: nn.Module, palettes: dict, dtype) -> None:
        reason = why_not_recurrent(dense)
        if reason:
            raise WeightzipError(f"cannot palettize {parametrize.type_before_parametrizations(dense).__name__}: "
                                 f"{reason}")
        self.mode = _mode(dense)
        self.input_size, self.hidden_size, self.bias = dense.input_size, dense.hidden_size, dense.bias
        self.weight_names = self._weight_names(dense)
        missing = [name for name in self.weight_names if name not in palettes]
        if missing:
            raise WeightzipError(f"no palette for {', '.join(missing)} of the {type(dense).__name__}")
        for name in self.weight_names:
            self.add_module(name, _weight_store(palettes[name], dtype, "cpu"))
        for name, parameter in dense.named_parameters(recurse=False):
            if name.startswith("bias"):
                self.register_parameter(name, _parameter_copy(parameter))

    def _op_weights(self, suffix: str) -> tuple:
        ih, hh = getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}")
        return (ih.packed, ih.codebook, ih.col_offsets, ih.bits, ih.layout.rows_per_group,
                hh.packed, hh.codebook, hh.col_offsets, hh.bits, hh.layout.rows_per_group,
                getattr(self, f"bias_ih{suffix}", None), getattr(self, f"bias_hh{suffix}", None))

    def _run(self, x, h0, c0, suffix: str, reverse: bool):
        op = _ops.rnn if _ops.eager(x) else torch.ops.weightzip.palettized_rnn
        return op(x, h0, c0, *self._op_weights(suffix), self.mode, reverse)

    def weight_bytes(self) -> int:
        return sum(getattr(self, name).weight_bytes() for name in self.weight_names)


class PalettizedRNNBase(_PalettizedRecurrent):
    """``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (layers, directions, batch_first, inter-layer dropout) with
    palettized weights."""

    def __init__(self, dense: nn.RNNBase, palettes: dict[str, ClusteredTensor | Palette], *,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_layers, self.batch_first = dense.num_layers, dense.batch_first
        self.dropout, self.bidirectional = dense.dropout, dense.bidirectional
        self._init_weights(dense, palettes, dtype)
        self.train(dense.training)

    @staticmethod
    def _weight_names(dense: nn.Module) -> list[str]:
        return [name for name in dense._flat_weights_names if name.startswith("weight")]

    def forward(self, input, hx=None):
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise WeightzipError("palettized recurrent layers take padded tensors, not a PackedSequence")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if self.batch_first and batched:
            x = x.transpose(0, 1)
        directions = 2 if self.bidirectional else 1
        shape = (self.num_layers * directions, x.shape[1], self.hidden_size)
        lstm = self.mode == "LSTM"
        if hx is None:
            h0 = x.new_zeros(shape)
            c0 = x.new_zeros(shape) if lstm else None
        else:
            h0, c0 = hx if lstm else (hx, None)
            if not batched:
                h0, c0 = h0.unsqueeze(1), (c0.unsqueeze(1) if c0 is not None else None)
        layer_input, h_n, c_n = x, [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                out, h, c = self._run(layer_input, h0[index], c0[index] if lstm else None, suffix, bool(direction))
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        output = layer_input.transpose(0, 1) if self.batch_first and batched else layer_input
        h_n, c_n = torch.stack(h_n), (torch.stack(c_n) if lstm else None)
        if not batched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if lstm else None
        return output, ((h_n, c_n) if lstm else h_n)

    def extra_repr(self) -> str:
        return (f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, batch_first={self.batch_first}")


class PalettizedRNNCellBase(_PalettizedRecurrent):
    """``nn.RNNCell`` / ``nn.LSTMCell`` / ``nn.GRUCell`` with palettized weights."""

    def __init__(self, dense: nn.RNNCellBase, palettes: dict[str, ClusteredTensor | Palette], *,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self._init_weights(dense, palettes, dtype)
        self.train(dense.training)

    @staticmethod
    def _weight_names(dense: nn.Module) -> list[str]:
        return ["weight_ih", "weight_hh"]

    def forward(self, input, hx=None):
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        lstm = self.mode == "LSTM"
        if hx is None:
            h0 = x.new_zeros(x.shape[0], self.hidden_size)
            c0 = x.new_zeros(x.shape[0], self.hidden_size) if lstm else None
        else:
            h0, c0 = hx if lstm else (hx, None)
            if not batched:
                h0, c0 = h0.unsqueeze(0), (c0.unsqueeze(0) if c0 is not None else None)
        _, h, c = self._run(x.unsqueeze(0), h0, c0, "", False)
        if not batched:
            h, c = h.squeeze(0), (c.squeeze(0) if lstm else c)
        return (h, c) if lstm else h

    def extra_repr(self) -> str:
        return f"{self.mode}, {self.input_size}, {self.hidden_size}"


RECURRENT_LAYERS = (nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell)


def palettized_recurrent(dense: nn.Module, palettes: dict, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The palettized counterpart of an RNN/LSTM/GRU (or cell) from a palette per weight name."""
    if isinstance(dense, nn.RNNBase):
        return PalettizedRNNBase(dense, palettes, dtype=dtype)
    return PalettizedRNNCellBase(dense, palettes, dtype=dtype)
