"""cluster_weights / strip_clustering on torch modules: values, gradients, layer coverage, saving."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from weightzip.core import ClusterConfig, cluster_array
from weightzip.core.errors import WeightzipError
from weightzip.torch import (
    CentroidInitialization,
    ClusteredWeight,
    UnsupportedLayerError,
    cluster_weights,
    clustered_tensors,
    clustered_weights,
    strip_clustering,
)


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)
    )


def distinct_per_channel(tensor, axis):
    moved = torch.movedim(tensor.detach(), axis, 0).reshape(tensor.shape[axis], -1)
    return max(torch.unique(row).numel() for row in moved)


def test_per_tensor_matches_core_cluster_array():
    model = small_net()
    original = model[4].weight.detach().clone()
    cluster_weights(model, 8, CentroidInitialization.DENSITY_BASED)
    expected = cluster_array(original.numpy(), ClusterConfig(8, init="density")).decode()
    np.testing.assert_allclose(model[4].weight.detach().numpy(), expected, rtol=0, atol=1e-7)
    assert torch.unique(model[4].weight).numel() <= 8
    assert torch.unique(model[0].weight).numel() <= 8


def test_biases_and_norm_layers_are_not_clustered():
    model = small_net()
    bias = model[0].bias.detach().clone()
    cluster_weights(model, 4)
    names = {name for name, _ in model.named_parameters()}
    assert "0.bias" in names and "4.bias" in names and "1.weight" in names
    assert set(clustered_weights(model)) == {"0.weight", "4.weight"}
    assert torch.equal(model[0].bias, bias)
    assert model[1].weight.unique().numel() == 1  # BatchNorm scale untouched (initialised to ones)


@pytest.mark.parametrize("layer,axis", [
    (nn.Linear(12, 7), 0),
    (nn.Conv1d(4, 6, 3), 0),
    (nn.Conv2d(4, 6, 3, groups=2), 0),
    (nn.Conv2d(6, 6, 3, groups=6), 0),          # depthwise
    (nn.Conv3d(2, 4, 2), 0),
    (nn.ConvTranspose1d(4, 6, 3), 1),
    (nn.ConvTranspose2d(4, 6, 3), 1),
    (nn.ConvTranspose2d(4, 6, 3, groups=2), 0),  # grouped transposed: per input channel
    (nn.ConvTranspose3d(2, 4, 2), 1),
    (nn.Embedding(30, 8), 1),
])
def test_per_channel_codebooks_follow_the_channel_axis(layer, axis):
    torch.manual_seed(1)
    cluster_weights(layer, 3, per_channel=True)
    (name, parametrization), = clustered_weights(layer).items()
    assert name == "weight" and parametrization.config.axis == axis
    assert parametrization.centroids.shape == (layer.weight.shape[axis], 3)
    assert distinct_per_channel(layer.weight, axis) <= 3


def test_grouped_codebooks_share_rows_between_consecutive_channels():
    layer = nn.Linear(10, 9)
    cluster_weights(layer, 4, per_channel=True, group_size=4)
    parametrization = clustered_weights(layer)["weight"]
    assert parametrization.centroids.shape == (3, 4)  # ceil(9 / 4) groups
    weight = layer.weight.detach()
    for start in (0, 4, 8):
        assert torch.unique(weight[start:start + 4]).numel() <= 4


def reference_centroid_gradient(parametrization, weight_grad):
    """Σ of the weight gradients per centroid, by an explicit loop over the codes."""
    codes = parametrization.flat_codes().expand(parametrization.shape).reshape(-1).numpy()
    grads = weight_grad.reshape(-1).numpy().astype(np.float64)
    expected = np.zeros(parametrization.centroids.numel())
    for code, g in zip(codes, grads):
        expected[code] += g
    return expected.reshape(parametrization.centroids.shape)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_centroid_gradient_is_sum_or_mean_of_member_gradients(aggregation):
    torch.manual_seed(2)
    layer = nn.Linear(16, 8)
    cluster_weights(layer, 5, per_channel=True, gradient_aggregation=aggregation)
    parametrization = clustered_weights(layer)["weight"]
    x = torch.randn(32, 16)

    dense = nn.Linear(16, 8)
    with torch.no_grad():
        dense.weight.copy_(layer.weight)
        dense.bias.copy_(layer.bias)
    dense(x).pow(2).sum().backward()
    layer(x).pow(2).sum().backward()

    expected = reference_centroid_gradient(parametrization, dense.weight.grad)
    if aggregation == "mean":
        sizes = parametrization.cluster_sizes.numpy()
        assert sizes.sum() == layer.weight.numel()
        expected = expected / np.maximum(sizes, 1)
    np.testing.assert_allclose(parametrization.centroids.grad.numpy(), expected, rtol=1e-5, atol=1e-5)


def train_steps(model, inputs, steps=5, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(inputs).pow(2).mean().backward()
        optimizer.step()


def test_training_moves_centroids_but_keeps_assignment_and_k():
    model = small_net()
    cluster_weights(model, 6)
    before = {name: (p.centroids.detach().clone(), p.indices.clone()) for name, p in clustered_weights(model).items()}
    train_steps(model, torch.randn(8, 3, 6, 6))
    for name, p in clustered_weights(model).items():
        centroids, indices = before[name]
        assert not torch.equal(p.centroids, centroids), name
        assert torch.equal(p.indices, indices), name
    assert torch.unique(model[4].weight).numel() <= 6


def test_preserve_sparsity_keeps_zeros_exactly_zero_through_training():
    torch.manual_seed(3)
    layer = nn.Linear(20, 10)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < 0.5] = 0.0
    zeros = layer.weight == 0
    cluster_weights(layer, 4, per_channel=True, preserve_sparsity=True)
    train_steps(layer, torch.randn(16, 20), steps=5, lr=0.5)
    weight = layer.weight.detach()
    assert torch.equal(weight == 0, zeros)
    assert distinct_per_channel(weight, 0) <= 4


def test_strip_clustering_leaves_plain_parameters_with_clustered_values():
    model = small_net()
    cluster_weights(model, 5)
    train_steps(model, torch.randn(4, 3, 6, 6), steps=2)
    x = torch.randn(2, 3, 6, 6)
    model.eval()
    clustered_output = model(x)
    strip_clustering(model)
    assert not clustered_weights(model)
    assert isinstance(model[4].weight, nn.Parameter) and model[4].weight.requires_grad
    assert set(model.state_dict()) == set(small_net().state_dict())
    assert torch.unique(model[4].weight).numel() <= 5
    torch.testing.assert_close(model(x), clustered_output, rtol=0, atol=0)


def test_strip_keeps_frozen_weights_frozen_and_parameters():
    layer = nn.Linear(6, 3)
    layer.weight.requires_grad_(False)
    cluster_weights(layer, 2)
    strip_clustering(layer)
    assert isinstance(layer.weight, nn.Parameter) and not layer.weight.requires_grad
    assert "weight" in dict(layer.named_parameters())


def test_state_dict_round_trip_into_a_fresh_clustered_model():
    model = small_net(seed=0)
    cluster_weights(model, 7, per_channel=True, preserve_sparsity=True)
    train_steps(model, torch.randn(4, 3, 6, 6), steps=3)
    model.eval()
    state = copy.deepcopy(model.state_dict())

    fresh = cluster_weights(small_net(seed=9), 7, per_channel=True, preserve_sparsity=True).eval()
    x = torch.randn(2, 3, 6, 6)
    assert not torch.equal(fresh(x), model(x))
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    for name, p in clustered_weights(fresh).items():
        assert torch.equal(p.cluster_sizes, clustered_weights(model)[name].cluster_sizes)


def test_assigning_a_tensor_reclusters_it():
    layer = nn.Linear(8, 8)
    cluster_weights(layer, 3)
    parametrization = clustered_weights(layer)["weight"]
    centroids = parametrization.centroids
    new = torch.linspace(-1, 1, 64).reshape(8, 8)
    layer.weight = new
    assert parametrization.centroids is centroids  # optimizer references stay valid
    np.testing.assert_allclose(layer.weight.detach().numpy(),
                               cluster_array(new.numpy(), ClusterConfig(3)).decode(), atol=1e-7)


def test_clustered_tensors_export_sorted_codebooks_that_decode_to_the_weights():
    model = small_net()
    cluster_weights(model, 4, per_channel=True)
    with torch.no_grad():  # scramble the order of the centroids, as training can
        for p in clustered_weights(model).values():
            p.centroids.mul_(-1.0)
    exported = clustered_tensors(model)
    for name, clustered in exported.items():
        assert np.all(np.diff(clustered.codebook, axis=1) >= 0), name
        module = model[int(name.split(".")[0])]
        np.testing.assert_array_equal(clustered.decode(), module.weight.detach().numpy())


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_recurrent_and_attention_layers():
    torch.manual_seed(4)
    lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, proj_size=3)
    gru = nn.GRU(6, 5)
    attention = nn.MultiheadAttention(8, 2)
    cluster_weights(lstm, 4)
    cluster_weights(gru, 4, per_channel=True)
    cluster_weights(attention, 4)
    assert set(clustered_weights(lstm)) == {
        f"weight_{kind}_l{layer}{suffix}" for kind in ("ih", "hh", "hr") for layer in (0, 1) for suffix in ("", "_reverse")
    }
    assert set(clustered_weights(gru)) == {"weight_ih_l0", "weight_hh_l0"}
    assert set(clustered_weights(attention)) == {"in_proj_weight", "out_proj.weight"}

    sequence = torch.randn(7, 2, 6)
    output, _ = lstm(sequence)
    output.sum().backward()
    assert all(p.centroids.grad is not None for p in clustered_weights(lstm).values())
    gru(sequence)[0].sum().backward()
    assert clustered_weights(gru)["weight_hh_l0"].centroids.grad is not None

    tokens = torch.randn(5, 2, 8)
    attention.eval()
    with torch.no_grad():
        clustered_output, _ = attention(tokens, tokens, tokens)
    reference = copy.deepcopy(attention)
    strip_clustering(reference)
    with torch.no_grad():
        torch.testing.assert_close(reference(tokens, tokens, tokens)[0], clustered_output)

    # The LSTM follows its clustered weights after training (its flat-weight cache is refreshed).
    with torch.no_grad():
        clustered_weights(lstm)["weight_ih_l0"].centroids.add_(0.5)
    stripped = strip_clustering(copy.deepcopy(lstm))
    torch.testing.assert_close(lstm(sequence)[0], stripped(sequence)[0])


def test_layers_selects_by_name_and_type():
    model = small_net()
    cluster_weights(model, 3, layers=["4"])
    assert set(clustered_weights(model)) == {"4.weight"}
    model = small_net()
    cluster_weights(model, 3, layers=nn.Conv2d)
    assert set(clustered_weights(model)) == {"0.weight"}
    outer = nn.Sequential(small_net(), nn.Linear(5, 2))
    cluster_weights(outer, 3, layers="0")  # a container: everything supported inside it
    assert set(clustered_weights(outer)) == {"0.0.weight", "0.4.weight"}


def test_requesting_unsupported_or_missing_layers_is_an_error_naming_them():
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(BatchNorm2d\)"):
        cluster_weights(small_net(), 3, layers=["1"])
    with pytest.raises(UnsupportedLayerError, match="BatchNorm2d"):
        cluster_weights(small_net(), 3, layers=[nn.BatchNorm2d])
    with pytest.raises(WeightzipError, match="no module named 'nope'"):
        cluster_weights(small_net(), 3, layers=["nope"])
    with pytest.raises(UnsupportedLayerError, match="no supported weights"):
        cluster_weights(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), 3)


def test_bad_arguments_and_double_clustering_are_refused():
    with pytest.raises(ValueError, match="gradient_aggregation"):
        cluster_weights(small_net(), 3, gradient_aggregation="median")
    with pytest.raises(ValueError, match="group_size only applies"):
        cluster_weights(small_net(), 3, group_size=2)
    with pytest.raises(WeightzipError, match="number_of_clusters"):
        cluster_weights(small_net(), 0)
    with pytest.raises(ValueError, match="unknown centroid initialization"):
        cluster_weights(small_net(), 3, init="nearest")
    model = cluster_weights(small_net(), 3)
    with pytest.raises(WeightzipError, match=r"'0.weight' is already parametrized by \['ClusteredWeight'\]"):
        cluster_weights(model, 3)


def test_half_precision_weights_keep_their_dtype():
    layer = nn.Linear(8, 4).to(torch.bfloat16)
    cluster_weights(layer, 4)
    assert layer.weight.dtype == torch.bfloat16
    assert clustered_weights(layer)["weight"].centroids.dtype == torch.bfloat16
    assert torch.unique(layer.weight.float()).numel() <= 4


def test_clustered_weight_rejects_wrong_shapes():
    parametrization = ClusteredWeight((4, 4), ClusterConfig(2))
    with pytest.raises(WeightzipError, match="shape"):
        parametrization.right_inverse(torch.randn(3, 4))


@pytest.mark.slow
def test_forward_and_backward_under_torch_compile_match_eager():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    cluster_weights(model, 4, per_channel=True, gradient_aggregation="mean")
    x = torch.randn(8, 16)
    eager_loss = model(x).square().sum()
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model)
    loss = compiled(x).square().sum()
    loss.backward()
    torch.testing.assert_close(loss, eager_loss)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def test_stripping_a_deep_copy_leaves_the_original_clustered():
    model = cluster_weights(small_net(), 4).eval()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    stripped = strip_clustering(copy.deepcopy(model))
    assert set(clustered_weights(model)) == {"0.weight", "4.weight"}
    assert not clustered_weights(stripped)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(stripped(x), expected, rtol=0, atol=0)


def test_a_spec_clusters_exactly_as_the_same_keywords_and_keywords_override_it():
    from weightzip.core.specs import ClusteringSpec

    spec = ClusteringSpec(4, "density", per_channel=True, preserve_sparsity=False, seed=0)
    by_spec, by_keywords = cluster_weights(small_net(), spec=spec), cluster_weights(
        small_net(), 4, "density", per_channel=True, seed=0)
    for name, value in by_keywords.state_dict().items():
        assert torch.equal(by_spec.state_dict()[name], value)
    overridden = cluster_weights(small_net(), spec=spec, number_of_clusters=2)
    assert all(p.number_of_clusters == 2 for p in clustered_weights(overridden).values())
    assert distinct_per_channel(overridden[4].weight, 0) <= 2
    with pytest.raises(WeightzipError, match="fixed assignment"):
        cluster_weights(small_net(), spec=spec, reassignment="every_step")


def test_torch_calls_mutate_by_default_and_inplace_false_leaves_the_module_as_it_was():
    from weightzip.torch import palettize, prune_low_magnitude

    for call in (lambda m, **kw: cluster_weights(m, 4, **kw), lambda m, **kw: prune_low_magnitude(m, **kw)):
        model = small_net()
        before = {name: value.clone() for name, value in model.state_dict().items()}
        copied = call(model, inplace=False)
        assert copied is not model and not clustered_weights(model)
        assert not any(hasattr(module, "parametrizations") for module in model.modules())
        assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
        assert any(hasattr(module, "parametrizations") for module in copied.modules())
        assert call(model) is model and any(hasattr(module, "parametrizations") for module in model.modules())
    clustered = strip_clustering(cluster_weights(small_net(), 4))
    palettized = palettize(clustered, inplace=False)
    assert isinstance(clustered[4], nn.Linear) and type(palettized[4]).__name__ == "PalettizedLinear"
    assert palettize(clustered) is clustered and type(clustered[4]).__name__ == "PalettizedLinear"
    with pytest.raises(TypeError, match="inplace must be True or False"):
        cluster_weights(small_net(), 4, inplace="no")


def test_strip_calls_take_inplace_false_too():
    from weightzip.torch import prune_low_magnitude, strip_pruning, update_pruning_step

    clustered = cluster_weights(small_net(), 4)
    stripped = strip_clustering(clustered, inplace=False)
    assert set(clustered_weights(clustered)) == {"0.weight", "4.weight"} and not clustered_weights(stripped)
    assert torch.equal(stripped[4].weight, clustered[4].weight)
    pruned = prune_low_magnitude(small_net())
    update_pruning_step(pruned, 0)
    plain = strip_pruning(pruned, inplace=False)
    assert hasattr(pruned[4], "parametrizations") and not hasattr(plain[4], "parametrizations")
    assert torch.equal(plain[4].weight, pruned[4].weight) and float((plain[4].weight == 0).float().mean()) == 0.5


def test_layers_rules_give_each_layer_its_own_spec_by_name_class_or_convolution():
    from weightzip.core.rules import CONVOLUTION, LayerRules
    from weightzip.core.specs import ClusteringSpec

    rules = LayerRules({}).set_type(CONVOLUTION, {"number_of_clusters": 2, "per_channel": True})
    model = cluster_weights(small_net(), 8, layers=rules)
    sizes = {name: p.number_of_clusters for name, p in clustered_weights(model).items()}
    assert sizes == {"0.weight": 2, "4.weight": 8} and clustered_weights(model)["0.weight"].config.axis == 0
    only_linear = cluster_weights(small_net(), layers=LayerRules(None).set_type(nn.Linear, ClusteringSpec(3)))
    assert {name: p.number_of_clusters for name, p in clustered_weights(only_linear).items()} == {"4.weight": 3}
    by_name = cluster_weights(small_net(), 8, layers=LayerRules({}).set_name("4", None))
    assert set(clustered_weights(by_name)) == {"0.weight"}
    with pytest.raises(WeightzipError, match=r"names layers \['9'\]"):
        cluster_weights(small_net(), 8, layers=LayerRules({}).set_name("9", None))
    with pytest.raises(TypeError, match="keywords without number_of_clusters"):
        cluster_weights(small_net(), per_channel=True, layers=LayerRules(ClusteringSpec(3)))
    with pytest.raises(UnsupportedLayerError, match="select no supported weight"):
        cluster_weights(small_net(), 8, layers=LayerRules(None))
