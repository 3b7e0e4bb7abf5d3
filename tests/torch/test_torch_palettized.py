"""Palettized inference layers: torch-side unpacking, exact outputs, memory, conversion rules."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from weightzip.core.bitpack import pack_bits
from weightzip.core.errors import InvalidClusterCountError, WeightzipError
from weightzip.torch import (
    PalettizedConv2d,
    PalettizedLinear,
    cluster_weights,
    palettize,
    strip_clustering,
    weight_memory_bytes,
)
from weightzip.torch.bitunpack import padded_stream, unpack


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 16), count=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_torch_unpack_reads_the_core_bit_layout(bits, count, seed):
    values = np.random.default_rng(seed).integers(0, 1 << bits, size=count)
    stream = padded_stream(values, bits)
    assert bytes(stream[: (count * bits + 7) // 8]) == pack_bits(values, bits)
    assert stream.size % bits == 0
    np.testing.assert_array_equal(unpack(torch.from_numpy(stream), count, bits).numpy(), values)


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(8, 12, 1, stride=2), nn.Flatten(), nn.Linear(12 * 4 * 4, 10),
    )


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("clusters,per_channel", [(4, False), (16, True), (7, True)])
def test_palettized_model_reproduces_the_clustered_outputs(clusters, per_channel, strip):
    model = cluster_weights(net(), clusters, per_channel=per_channel).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    if strip:
        strip_clustering(model)
    dense_bytes = weight_memory_bytes(strip_clustering(copy.deepcopy(model)))
    palettize(model)
    kinds = [type(m) for m in model.modules()]
    if strip:  # recovered from distinct values: only where a palette stores smaller than float32
        assert isinstance(model[0], PalettizedConv2d) and isinstance(model[6], PalettizedLinear)
    else:  # clustered layers are always converted
        assert kinds.count(PalettizedConv2d) == 3 and kinds.count(PalettizedLinear) == 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)
    assert weight_memory_bytes(model) < dense_bytes
    bits = model[6].bits
    assert bits <= max(1, (clusters - 1).bit_length())


def test_weight_memory_drops_by_about_32_over_bits():
    torch.manual_seed(0)
    layer = cluster_weights(nn.Linear(256, 128), 16)
    dense_bytes = 256 * 128 * 4
    palettized = palettize(layer)
    assert isinstance(palettized, PalettizedLinear) and palettized.bits == 4
    assert palettized.packed.numel() == 256 * 128 * 4 // 8 + 8  # + the 8 bytes kernels may over-read
    assert dense_bytes / weight_memory_bytes(palettized) > 7.5


def test_state_dict_round_trip_of_a_palettized_model():
    model = palettize(cluster_weights(net(), 8)).eval()
    other = palettize(cluster_weights(net(seed=3), 8)).eval()
    other.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_unclustered_layers_stay_dense_unless_requested():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 32), nn.Linear(32, 4), nn.Linear(4, 4))
    cluster_weights(model, 4, layers=["1"])
    strip_clustering(model)
    palettize(model)
    assert isinstance(model[0], nn.Linear) and isinstance(model[1], PalettizedLinear)
    assert isinstance(model[2], nn.Linear)  # 16 distinct values, but a palette would not be smaller
    with pytest.raises(InvalidClusterCountError, match="'0.weight' is not clustered"):
        palettize(model, layers=["0"])
    with pytest.raises(WeightzipError, match="no Linear, Conv1d, Conv2d, Embedding, RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell layer"):
        palettize(nn.Sequential(nn.Conv3d(2, 2, 1)), layers=[nn.Conv3d])


def test_unused_centroids_are_dropped_losslessly():
    from weightzip.core import ClusterConfig, cluster_array
    from weightzip.torch.palettized import drop_unused_centroids

    depthwise = torch.randn(6, 1, 3, 3).numpy()
    clustered = cluster_array(depthwise, ClusterConfig(256, axis=0))
    compact = drop_unused_centroids(clustered)
    assert compact.codebook.shape == (6, 9)  # 9 weights per channel
    np.testing.assert_array_equal(compact.decode(), clustered.decode())
    assert np.all(np.diff(compact.codebook, axis=1) >= 0)
    layer = palettize(cluster_weights(nn.Conv2d(6, 6, 3, groups=6), 256, per_channel=True))
    assert layer.bits == 4 and layer.codebook.shape == (6, 9)
    already = cluster_array(np.linspace(-1, 1, 64).reshape(8, 8), ClusterConfig(4))
    assert drop_unused_centroids(already) is already


def test_codebook_tensor_shares_a_writeable_array_and_copies_anything_else_once_into_the_dtype():
    from weightzip.torch.palettized_layers import codebook_tensor

    rng = np.random.default_rng(0)
    codebook = rng.standard_normal((3, 16)).astype(np.float32)
    shared = codebook_tensor(codebook)
    assert shared.dtype == torch.float32 and np.shares_memory(shared.numpy(), codebook)
    read_only = codebook.copy()
    read_only.flags.writeable = False  # as a view of a file mapped read-only
    copied = codebook_tensor(read_only)
    assert copied.dtype == torch.float32 and not np.shares_memory(copied.numpy(), read_only)
    assert torch.equal(copied, torch.from_numpy(codebook))
    swapped = codebook.astype(">f4")  # other byte order: copied, values kept
    assert torch.equal(codebook_tensor(swapped), torch.from_numpy(codebook))
    half = codebook_tensor(read_only, torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, torch.from_numpy(codebook).half())
    wide = codebook_tensor(codebook.astype(np.float64))  # float64 palette, float32 layer: one cast
    assert torch.equal(wide, torch.from_numpy(codebook))

