"""The sparse palettized Linear (pruned weights in CSR with relative indices): kernel, layer, palettize,
load_palettized, compile/export, and the torch fallback."""

import numpy as np
import pytest
import torch
from torch import nn

from weightzip.core import ClusteredTensor
from weightzip.torch import (
    PalettizedLinear,
    PalettizedSparseLinear,
    _kernels,
    compress_state_dict,
    load_palettized,
    palettize,
)
from weightzip.torch._kernels import ops
from weightzip.torch._kernels.layout import sparse_palette


def pruned_palette(rng, shape, k, density, axis):
    """Indices whose centroid 0 (index 0 of every codebook) covers all but `density` of the weights."""
    groups = 1 if axis is None else shape[0]
    codebook = rng.standard_normal((groups, k)).astype(np.float32)
    codebook[:, 0] = 0.0
    indices = rng.integers(1, k, size=shape)
    indices[rng.random(shape) >= density] = 0
    return ClusteredTensor(codebook, indices.astype(np.uint8), axis, 1)


@pytest.mark.parametrize("shape,k,density,axis,batch", [
    ((37, 700), 16, 0.1, 0, 1), ((37, 700), 16, 0.1, 0, 11), ((20, 1200), 5, 0.002, None, 3),  # long gaps: fillers
    ((9, 64), 255, 0.5, 0, 9), ((6, 300), 4, 0.0, None, 2),  # 255 clusters (filler index 255); all pruned
])
def test_sparse_kernel_equals_the_dense_decoded_weight(shape, k, density, axis, batch):
    rng = np.random.default_rng(shape[1] + k)
    clustered = pruned_palette(rng, shape, k, density, axis)
    palette = sparse_palette(clustered)
    kept = int((clustered.decode() != 0).sum())
    fillers = palette.entries - kept
    assert fillers >= 0 and (fillers > 0) == (0 < density < 0.01)  # gaps > MAX_GAP only at 0.2 % kept
    dense = torch.from_numpy(clustered.decode())
    layer = PalettizedSparseLinear(palette)
    torch.testing.assert_close(layer.weight, dense, rtol=0, atol=0)
    x = torch.randn(batch, shape[1])
    expected = x @ dense.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert _kernels.available()
    args = (layer.row_ptr, layer.gaps, layer.values, layer.codebook, shape[0], shape[1], layer.rows_per_group)
    torch.testing.assert_close(ops.sparse_linear(x.double(), *args[:3], layer.codebook.double(), *args[4:]),
                               expected.double(), rtol=1e-5, atol=1e-5)  # float64: the torch-op fallback


def pruned_linear(seed, density):
    torch.manual_seed(seed)
    layer = nn.Linear(96, 40)
    rng = np.random.default_rng(seed)
    centroids = torch.tensor(rng.standard_normal(7), dtype=torch.float32)
    with torch.no_grad():
        values = centroids[torch.randint(0, 7, layer.weight.shape)]
        values[torch.rand(layer.weight.shape) >= density] = 0.0
        layer.weight.copy_(values)
    return layer


def test_palettize_makes_a_pruned_linear_sparse_when_that_stores_smaller_and_it_compiles_and_exports():
    sparse = palettize(nn.Sequential(pruned_linear(1, 0.05), nn.ReLU()), inplace=False)
    assert isinstance(sparse[0], PalettizedSparseLinear)
    dense_kept = palettize(nn.Sequential(pruned_linear(1, 0.6)), inplace=False)
    assert isinstance(dense_kept[0], PalettizedLinear)  # 60 % kept: bit-packed indices store smaller
    assert isinstance(palettize(nn.Sequential(pruned_linear(1, 0.05)), sparse=False)[0], PalettizedLinear)
    reference = nn.Sequential(pruned_linear(1, 0.05), nn.ReLU()).eval()
    x = torch.randn(5, 96)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(sparse(x), expected, rtol=1e-5, atol=1e-6)
        compiled = torch.compile(sparse, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-6)
    program = torch.export.export(sparse, (x,))
    assert "weightzip.palettized_sparse_linear.default" in {str(n.target) for n in program.graph.nodes}
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-6)


def test_load_palettized_makes_a_pruned_linear_sparse(tmp_path):
    model = nn.Sequential(pruned_linear(2, 0.05), nn.ReLU(), nn.Linear(40, 3))
    path = tmp_path / "pruned.wz"
    compress_state_dict(model, path)
    with torch.device("meta"):
        fresh = nn.Sequential(nn.Linear(96, 40), nn.ReLU(), nn.Linear(40, 3))
    load_palettized(fresh, path)
    assert isinstance(fresh[0], PalettizedSparseLinear) and fresh[0].bias is not None
    x = torch.randn(4, 96)
    with torch.no_grad():
        torch.testing.assert_close(fresh[0](x), model[0](x), rtol=1e-5, atol=1e-6)


def test_the_sparse_layer_holds_its_palettes_codebook_without_a_copy():
    clustered = pruned_palette(np.random.default_rng(3), (12, 40), 8, 0.2, 0)
    palette = sparse_palette(clustered)
    layer = PalettizedSparseLinear(palette)
    assert layer.codebook.dtype == torch.float32
    assert np.shares_memory(layer.codebook.numpy(), palette.codebook)
    x = torch.randn(3, 40)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ torch.from_numpy(clustered.decode()).T, rtol=1e-5, atol=1e-5)
    as_double = PalettizedSparseLinear(palette, dtype=torch.float64)  # another dtype: one converted copy
    assert as_double.codebook.dtype == torch.float64 and not np.shares_memory(as_double.codebook.numpy(),
                                                                               palette.codebook)
    assert torch.equal(as_double.codebook, torch.from_numpy(palette.codebook).double())
