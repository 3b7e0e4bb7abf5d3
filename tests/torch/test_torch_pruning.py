"""prune_low_magnitude / update_pruning_step / strip_pruning, and pruning followed by clustering."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from weightzip.core.errors import WeightzipError
from weightzip.core.pruning import InvalidSparsityError, magnitude_mask
from weightzip.torch import (
    ConstantSparsity,
    PolynomialDecay,
    cluster_weights,
    clustered_weights,
    layer_sparsities,
    prune_low_magnitude,
    pruning_masks,
    strip_clustering,
    strip_pruning,
    update_pruning_step,
)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))


def sgd_step(model, optimizer, x):
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def zero_fraction(tensor):
    return float((tensor == 0).float().mean())


def test_nothing_is_pruned_before_the_first_step_then_the_core_mask_is_applied():
    model = mlp()
    original = model[0].weight.detach().clone()
    prune_low_magnitude(model, ConstantSparsity(0.75, begin_step=0))
    assert zero_fraction(model[0].weight) == 0.0
    assert update_pruning_step(model) == 0
    expected = magnitude_mask(original.numpy(), 0.75)
    np.testing.assert_array_equal(model[0].weight.detach().numpy() != 0, expected)
    assert layer_sparsities(model) == pytest.approx({"0.weight": 0.75, "2.weight": 0.75})


def test_polynomial_schedule_ramps_up_and_pruned_weights_get_no_gradient():
    model = mlp()
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=6, frequency=2)
    prune_low_magnitude(model, schedule)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(32, 16)
    seen = []
    for _ in range(8):
        step = update_pruning_step(model)
        sgd_step(model, optimizer, x)
        seen.append(layer_sparsities(model)["0.weight"])
        mask = pruning_masks(model)["0.weight"].mask
        original = model[0].parametrizations.weight.original
        assert torch.all(original.grad[~mask] == 0)
        assert pytest.approx(seen[-1], abs=1 / 384) == schedule.sparsity_at(step - step % 2)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(0.8, abs=1 / 384)
    strip_pruning(model)
    assert isinstance(model[0].weight, nn.Parameter)
    assert not torch.signbit(model[0].weight[model[0].weight == 0]).any()  # +0.0, never -0.0
    assert zero_fraction(model[0].weight) == pytest.approx(0.8, abs=1 / 384)
    assert set(model.state_dict()) == set(mlp().state_dict())


def test_pruned_zeros_stay_zero_while_training_between_updates():
    model = mlp()
    prune_low_magnitude(model, ConstantSparsity(0.5, begin_step=0, frequency=100))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 16)
    update_pruning_step(model)
    zeros = model[2].weight.detach() == 0
    for _ in range(4):
        update_pruning_step(model)
        sgd_step(model, optimizer, x)
    assert torch.equal(model[2].weight.detach() == 0, zeros)


def test_per_channel_block_and_n_m_patterns():
    torch.manual_seed(1)
    layer = nn.Linear(8, 6)
    prune_low_magnitude(layer, ConstantSparsity(0.5, 0), per_channel=True)
    update_pruning_step(layer)
    assert torch.all((layer.weight == 0).sum(dim=1) == 4)

    conv = nn.Conv2d(4, 6, 3)
    prune_low_magnitude(conv, ConstantSparsity(0.5, 0), block_size=(2, 2), block_pooling_type="MAX")
    update_pruning_step(conv)
    zero = (conv.weight == 0).permute(2, 3, 0, 1)  # (kh, kw, out, in): blocks of (2 out, 2 in) per tap
    blocks = zero.reshape(3, 3, 3, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(3, 3, 3, 2, 4)
    assert torch.all(blocks.all(dim=-1) | (~blocks).all(dim=-1))
    assert zero.float().mean() == 0.5

    linear = nn.Linear(8, 4)
    prune_low_magnitude(linear, sparsity_m_by_n=(2, 4))
    update_pruning_step(linear)
    assert torch.all((linear.weight != 0).reshape(4, 2, 4).sum(dim=-1) == 2)


def test_state_dict_resumes_mask_and_step():
    model = mlp()
    prune_low_magnitude(model, ConstantSparsity(0.6, begin_step=0, frequency=3))
    for _ in range(2):
        update_pruning_step(model)
    state = copy.deepcopy(model.state_dict())
    fresh = prune_low_magnitude(mlp(seed=5), ConstantSparsity(0.6, begin_step=0, frequency=3))
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh[0].weight, model[0].weight)
    assert update_pruning_step(fresh) == 2


def test_prune_strip_then_sparsity_preserving_clustering():
    model = mlp()
    prune_low_magnitude(model, ConstantSparsity(0.7, 0))
    update_pruning_step(model)
    with pytest.raises(WeightzipError, match="strip_pruning"):
        cluster_weights(model, 8)
    strip_pruning(model)
    zeros = model[0].weight.detach() == 0
    cluster_weights(model, 8, per_channel=True, preserve_sparsity=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.randn(16, 16)
    for _ in range(5):
        sgd_step(model, optimizer, x)
    assert torch.equal(model[0].weight.detach() == 0, zeros)
    assert all(p.frozen_zeros.any() for p in clustered_weights(model).values())
    strip_clustering(model)
    assert zero_fraction(model[0].weight) == pytest.approx(0.7, abs=1 / 384)


def test_bad_pruning_arguments():
    with pytest.raises(TypeError, match="PruningSchedule"):
        prune_low_magnitude(mlp(), 0.5)
    with pytest.raises(InvalidSparsityError, match="AVG' or 'MAX"):
        prune_low_magnitude(mlp(), block_size=(1, 2), block_pooling_type="median")
    with pytest.raises(InvalidSparsityError, match="multiple of 4"):
        prune_low_magnitude(nn.Linear(6, 4), sparsity_m_by_n=(2, 4))
    with pytest.raises(WeightzipError, match="no pruned weights"):
        update_pruning_step(mlp())
    model = prune_low_magnitude(mlp())
    with pytest.raises(ValueError, match="step must be"):
        update_pruning_step(model, -3)


def test_layers_rules_give_each_layer_its_own_pruning_spec():
    from weightzip.core.rules import LayerRules
    from weightzip.torch import ConstantSparsity, PruningSpec, layer_sparsities

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    rules = LayerRules({}).set_name("2", PruningSpec(ConstantSparsity(0.75, 0)))
    prune_low_magnitude(model, ConstantSparsity(0.5, 0), layers=rules)
    update_pruning_step(model, 0)
    assert layer_sparsities(model) == {"0.weight": 0.5, "2.weight": 0.75}
