"""The README's PyTorch flow end to end on a tiny model: prune -> cluster -> .wz -> fresh model -> palettize."""

import torch
from torch import nn

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


def test_deep_compression_flow(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = mlp(0)
    train(model, x, y, 60, 0.1)
    assert accuracy(model, x, y) > 0.9

    prune_low_magnitude(model, ConstantSparsity(0.7, begin_step=0, frequency=10))
    train(model, x, y, 30, 0.05, before_step=update_pruning_step)
    strip_pruning(model)
    zeros = model[0].weight == 0
    cluster_weights(model, 4, CentroidInitialization.LINEAR, per_channel=True, preserve_sparsity=True)
    train(model, x, y, 30, 0.02)
    assert torch.equal(model[0].weight == 0, zeros)
    assert accuracy(model, x, y) > 0.9

    compress_state_dict(model, tmp_path / "model.wz")
    fresh = mlp(1)
    fresh.load_state_dict(decompress(tmp_path / "model.wz"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    small = palettize(strip_clustering(model))
    with torch.no_grad():
        torch.testing.assert_close(small(x), fresh(x))
