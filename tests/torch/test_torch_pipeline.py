"""The README's PyTorch flow end to end on a tiny model: prune -> cluster -> .wz -> fresh model -> palettize."""

import numpy as np
import torch
from torch import nn

from weightzip.core import ClusterConfig, cluster_array
from weightzip.torch import (
    CentroidInitialization,
    ConstantSparsity,
    cluster_weights,
    compress_state_dict,
    decompress,
    palettize,
    prune_low_magnitude,
    strip_clustering,
    strip_pruning,
    update_pruning_step,
)


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))


def train(model, x, y, steps, lr, before_step=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        if before_step is not None:
            before_step(model)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


FIDELITY = 0.05  # largest accuracy loss against the float model


def test_deep_compression_flow(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = mlp(0)
    train(model, x, y, 60, 0.1)
    float_accuracy = accuracy(model, x, y)
    assert float_accuracy > 0.9  # the float model learned the task: the baseline of the bounds below

    prune_low_magnitude(model, ConstantSparsity(0.7, begin_step=0, frequency=10))
    train(model, x, y, 30, 0.05, before_step=update_pruning_step)
    strip_pruning(model)
    zeros = model[0].weight == 0
    pruned = [layer.weight.detach().numpy().copy() for layer in (model[0], model[2])]
    cluster_weights(model, 4, CentroidInitialization.LINEAR, per_channel=True, preserve_sparsity=True)
    # Before any training the clustered weights are the core's clustering of the pruned weights.
    for layer, weights in zip((model[0], model[2]), pruned):
        expected = cluster_array(weights, ClusterConfig(4, "linear", axis=0, preserve_sparsity=True)).decode()
        np.testing.assert_array_equal(layer.weight.detach().numpy(), expected)
    train(model, x, y, 30, 0.02)
    assert torch.equal(model[0].weight == 0, zeros)
    assert accuracy(model, x, y) >= float_accuracy - FIDELITY
    for layer in (model[0], model[2]):
        rows = layer.weight.detach().numpy()
        assert max(len(np.unique(row)) for row in rows) <= 4
        assert len(np.unique(rows[rows != 0])) >= 2

    compress_state_dict(model, tmp_path / "model.wz")
    fresh = mlp(1)
    fresh.load_state_dict(decompress(tmp_path / "model.wz"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert accuracy(fresh, x, y) >= float_accuracy - FIDELITY
    small = palettize(strip_clustering(model))
    with torch.no_grad():
        torch.testing.assert_close(small(x), fresh(x))
