"""Palettized RNN / LSTM / GRU and their cells: equal to the dense decoded layers, one custom op per layer
and direction under torch.compile / torch.export, built by palettize and by load_palettized."""

import pytest
import torch
from torch import nn

from weightzip.core.errors import WeightzipError
from weightzip.torch import (
    PalettizedRNNBase,
    PalettizedRNNCellBase,
    cluster_weights,
    compress_state_dict,
    load_palettized,
    palettize,
    strip_clustering,
    weight_memory_bytes,
)

LAYERS = {
    "lstm 2 layers bidirectional batch_first": (lambda: nn.LSTM(12, 8, num_layers=2, bidirectional=True,
                                                                batch_first=True), (3, 5, 12)),
    "gru": (lambda: nn.GRU(12, 8), (5, 3, 12)),
    "gru batch 6": (lambda: nn.GRU(12, 8), (4, 6, 12)),  # the kernel's GEMV in two blocks of batch rows
    "rnn relu unbatched": (lambda: nn.RNN(12, 8, nonlinearity="relu"), (5, 12)),
    "lstm cell": (lambda: nn.LSTMCell(12, 8), (3, 12)),
    "gru cell unbatched": (lambda: nn.GRUCell(12, 8), (12,)),
    "rnn cell": (lambda: nn.RNNCell(12, 8), (3, 12)),
}


def flat(output):
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in flat(item)]


@pytest.mark.parametrize("name", list(LAYERS))
def test_palettized_recurrent_layers_equal_the_dense_decoded_layers(name):
    make, shape = LAYERS[name]
    torch.manual_seed(len(name))
    dense = strip_clustering(cluster_weights(make(), 8)).eval()
    palettized = palettize(dense, inplace=False)
    assert isinstance(palettized, (PalettizedRNNBase, PalettizedRNNCellBase))
    assert weight_memory_bytes(palettized) < weight_memory_bytes(dense) / 3
    x = torch.randn(*shape)
    hidden = None
    if isinstance(dense, nn.RNNCellBase) and len(shape) == 2:  # with a given state too
        h = torch.randn(shape[0], 8)
        hidden = (h, torch.randn(shape[0], 8)) if isinstance(dense, nn.LSTMCell) else h
    with torch.no_grad():
        expected, got = dense(x, hidden), palettized(x, hidden)
    for a, b in zip(flat(expected), flat(got), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_a_palettized_lstm_compiles_without_graph_breaks_and_exports_as_custom_ops():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 12), nn.LSTM(12, 8, num_layers=2, bidirectional=True))
    dense = strip_clustering(cluster_weights(model, 8)).eval()

    class Last(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out, (h, c) = self.inner[1](self.inner[0](x))
            return out, h, c

    palettized = Last(palettize(dense, inplace=False))
    reference = Last(dense)
    x = torch.randn(7, 2, 6)
    with torch.no_grad():
        expected = reference(x)
        compiled = torch.compile(palettized, backend="aot_eager", fullgraph=True)
        for a, b in zip(expected, compiled(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    program = torch.export.export(palettized, (x,))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("weightzip.palettized_rnn.default") == 4  # 2 layers x 2 directions
    with torch.no_grad():
        for a, b in zip(expected, program.module()(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_load_palettized_builds_recurrent_layers_from_the_file(tmp_path):
    torch.manual_seed(2)
    model = nn.ModuleDict({"gru": nn.GRU(10, 6, batch_first=True), "cell": nn.LSTMCell(6, 4)})
    path = tmp_path / "rnn.wz"
    clustered = cluster_weights(model, 8)
    compress_state_dict(clustered, path)
    reference = strip_clustering(clustered).eval()
    with torch.device("meta"):
        fresh = nn.ModuleDict({"gru": nn.GRU(10, 6, batch_first=True), "cell": nn.LSTMCell(6, 4)})
    load_palettized(fresh, path)
    assert isinstance(fresh["gru"], PalettizedRNNBase) and isinstance(fresh["cell"], PalettizedRNNCellBase)
    assert fresh["gru"].bias_hh_l0.device.type == "cpu"
    x = torch.randn(2, 5, 10)
    with torch.no_grad():
        out, h = fresh["gru"](x)
        torch.testing.assert_close(out, reference["gru"](x)[0], rtol=1e-5, atol=1e-6)
        for a, b in zip(fresh["cell"](h[0]), reference["cell"](h[0]), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_lstm_with_projections_is_refused_by_name():
    dense = strip_clustering(cluster_weights(nn.LSTM(6, 8, proj_size=4), 4))
    with pytest.raises(WeightzipError, match="LSTM with proj_size"):
        palettize(dense, layers=nn.LSTM)
    assert isinstance(palettize(dense), nn.LSTM)  # without `layers`: left dense


def test_the_kernel_time_loop_equals_the_torch_ops_step_loop(monkeypatch):
    # With the compiled kernels the whole time loop runs in C++; without them, a step loop of torch ops.
    from weightzip.torch import _kernels

    torch.manual_seed(11)
    dense = strip_clustering(cluster_weights(nn.LSTM(12, 8, num_layers=2), 8)).eval()
    palettized = palettize(dense, inplace=False)
    x = torch.randn(6, 2, 12)
    with torch.no_grad():
        fast = flat(palettized(x))
        monkeypatch.setattr(_kernels, "_load", lambda: "not built (test)")
        _kernels.warn_fallback_once.cache_clear()
        with pytest.warns(RuntimeWarning, match="not built"):
            slow = flat(palettized(x))
        _kernels.warn_fallback_once.cache_clear()
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
