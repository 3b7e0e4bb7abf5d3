"""compress_state_dict / decompress: PyTorch checkpoints through .wz files."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from weightzip.core import ClusteredTensor
from weightzip.core.errors import WeightzipError
from weightzip.torch import (
    ConstantSparsity,
    cluster_weights,
    clustered_tensors,
    compress_state_dict,
    decompress,
    decompress_to_file,
    load_checkpoint,
    module_tensors,
    palettize,
    prune_low_magnitude,
    read_clustered,
    strip_clustering,
    update_pruning_step,
)


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 32),
                         nn.ReLU(), nn.Linear(32, 10))


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_clustered_module_round_trips_into_the_plain_architecture(tmp_path):
    model = cluster_weights(net(), 8, per_channel=True)
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    path = tmp_path / "model.wz"
    size = compress_state_dict(model, path)
    assert size == path.stat().st_size

    stored = read_clustered(path)
    exported = clustered_tensors(model)
    assert set(exported) == {"0.weight", "4.weight", "6.weight"}
    for name, clustered in exported.items():
        assert isinstance(stored[name], ClusteredTensor)
        np.testing.assert_array_equal(stored[name].codebook, clustered.codebook)
        np.testing.assert_array_equal(stored[name].indices, clustered.indices)

    plain = net(seed=1)
    plain.load_state_dict(decompress(path), strict=True)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(outputs(plain, x), outputs(model, x), rtol=0, atol=0)


def test_stripped_model_is_stored_as_palettes_and_smaller_than_torch_save(tmp_path):
    model = strip_clustering(cluster_weights(net(), 16))
    compress_state_dict(model, tmp_path / "m.wz")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    stored = read_clustered(tmp_path / "m.wz")
    assert isinstance(stored["4.weight"], ClusteredTensor) and stored["4.weight"].number_of_clusters <= 16
    assert isinstance(stored["4.bias"], torch.Tensor)
    assert (tmp_path / "m.wz").stat().st_size < (tmp_path / "m.pt").stat().st_size / 4
    restored = decompress(tmp_path / "m.wz")
    for name, value in model.state_dict().items():
        assert torch.equal(restored[name], value), name


def test_post_training_clustering_of_a_checkpoint_file(tmp_path):
    model = net()
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    compress_state_dict(tmp_path / "ckpt.pt", tmp_path / "ckpt.wz", number_of_clusters=4, per_channel=True)
    restored = decompress(tmp_path / "ckpt.wz")
    original = model.state_dict()
    assert set(restored) == set(original)
    for name, value in original.items():
        if value.dim() >= 2:
            rows = restored[name].reshape(value.shape[0], -1)
            assert max(torch.unique(row).numel() for row in rows) <= 4, name
        else:
            assert torch.equal(restored[name], value), name  # biases, BN statistics, counters exact


def test_safetensors_and_bfloat16_round_trip(tmp_path):
    state = {"w": torch.randn(8, 8).to(torch.bfloat16), "b": torch.arange(4, dtype=torch.int64)}
    save_file(state, tmp_path / "s.safetensors")
    compress_state_dict(tmp_path / "s.safetensors", tmp_path / "s.wz", number_of_clusters=4)
    restored = decompress(tmp_path / "s.wz")
    assert restored["w"].dtype == torch.bfloat16 and torch.unique(restored["w"].float()).numel() <= 4
    assert torch.equal(restored["b"], state["b"])
    decompress_to_file(tmp_path / "s.wz", tmp_path / "back.safetensors")
    back = load_checkpoint(tmp_path / "back.safetensors")
    assert torch.equal(back["w"], restored["w"])
    decompress_to_file(tmp_path / "s.wz", tmp_path / "back.pt")
    assert torch.equal(load_checkpoint(tmp_path / "back.pt")["b"], state["b"])


def test_pruned_and_palettized_modules_store_plain_names(tmp_path):
    pruned = prune_low_magnitude(net(), ConstantSparsity(0.8, 0))
    update_pruning_step(pruned)
    assert set(module_tensors(pruned)) == set(net().state_dict())
    compress_state_dict(pruned, tmp_path / "p.wz")
    restored = decompress(tmp_path / "p.wz")
    assert float((restored["4.weight"] == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)

    palettized = palettize(cluster_weights(net(), 4))
    compress_state_dict(palettized, tmp_path / "q.wz")
    plain = net(seed=2)
    plain.load_state_dict(decompress(tmp_path / "q.wz"), strict=True)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(outputs(plain, x), outputs(palettized, x))


def test_refuses_to_overwrite_and_reports_bad_inputs(tmp_path):
    model = net()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    compress_state_dict(tmp_path / "m.pt", tmp_path / "m.wz")
    with pytest.raises(WeightzipError, match="already exists"):
        compress_state_dict(tmp_path / "m.pt", tmp_path / "m.wz")
    with pytest.raises(WeightzipError, match="input file"):
        compress_state_dict(tmp_path / "m.pt", tmp_path / "m.pt", overwrite=True)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightzipError, match="not a loadable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"epoch": 1}, tmp_path / "nostate.pt")
    with pytest.raises(WeightzipError, match="expected a state_dict"):
        load_checkpoint(tmp_path / "nostate.pt")
    with pytest.raises(WeightzipError, match="unknown checkpoint type"):
        decompress_to_file(tmp_path / "m.wz", tmp_path / "m.npz")
    with pytest.raises(TypeError, match="source must be"):
        compress_state_dict(42, tmp_path / "x.wz")
    assert load_checkpoint(tmp_path / "m.pt").keys() == model.state_dict().keys()  # input untouched


def test_post_training_pruning_then_clustering_keeps_zeros(tmp_path):
    state = net().state_dict()
    compress_state_dict(state, tmp_path / "p.wz", number_of_clusters=8, sparsity=0.6)
    restored = decompress(tmp_path / "p.wz")
    weight = restored["4.weight"]
    assert float((weight == 0).float().mean()) == pytest.approx(0.6, abs=1e-3)
    assert torch.unique(weight).numel() <= 8
    kept = state["4.weight"].abs() >= state["4.weight"].abs().flatten().kthvalue(int(0.6 * weight.numel()) + 1).values
    assert torch.equal(weight != 0, kept)  # the largest magnitudes survive
    with pytest.raises(WeightzipError, match="sparsity must be"):
        compress_state_dict(state, tmp_path / "q.wz", sparsity=1.5)


def test_save_wz_load_wz_are_the_torch_front_ends_verbs_over_compress_state_dict(tmp_path):
    from weightzip.torch import load_wz, save_wz

    model = cluster_weights(net(), 8, per_channel=True)
    size = save_wz(model, tmp_path / "a.wz")
    assert size == (tmp_path / "a.wz").stat().st_size == compress_state_dict(model, tmp_path / "b.wz")
    assert (tmp_path / "a.wz").read_bytes() == (tmp_path / "b.wz").read_bytes()
    fresh = net(seed=1)
    fresh.load_state_dict(load_wz(tmp_path / "a.wz"), strict=True)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(outputs(fresh, x), outputs(model, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightzipError, match="already exists"):
        save_wz(model, tmp_path / "a.wz")
    save_wz(strip_clustering(model), tmp_path / "a.wz", overwrite=True, number_of_clusters=4)
    assert all(torch.unique(value).numel() <= 4 for name, value in load_wz(tmp_path / "a.wz").items()
               if name.endswith("weight") and value.dim() >= 2)


def test_cluster_and_sparsity_rules_choose_per_tensor_by_name_class_and_convolution(tmp_path):
    from weightzip.core.rules import CONVOLUTION, LayerRules

    model = net()
    clusters = LayerRules(16).set_type(CONVOLUTION, 4).set_name("6", None)
    compress_state_dict(model, tmp_path / "r.wz", number_of_clusters=clusters, sparsity=LayerRules(None).set_type(
        nn.Linear, 0.5))
    stored = read_clustered(tmp_path / "r.wz")
    assert stored["0.weight"].number_of_clusters <= 4 and stored["4.weight"].number_of_clusters <= 16
    assert not isinstance(stored["6.weight"], ClusteredTensor)             # None: left as it was
    assert float((stored["4.weight"].decode() == 0).mean()) == pytest.approx(0.5, abs=1e-3)
    assert float((stored["6.weight"] == 0).float().mean()) == pytest.approx(0.5, abs=1e-2)
    same = compress_state_dict(model, tmp_path / "c.wz", number_of_clusters=16, conv_number_of_clusters=4)
    assert same == compress_state_dict(model, tmp_path / "d.wz", number_of_clusters=LayerRules(16).set_type(
        CONVOLUTION, 4))
    with pytest.raises(WeightzipError, match=r"sparsity\['fc'\] must be a number in \[0, 1\)"):
        compress_state_dict(model, tmp_path / "e.wz", sparsity=LayerRules(0.5).set_name("fc", 2.0))
    with pytest.raises(WeightzipError, match=r"names layers \['fc'\]"):
        compress_state_dict(model, tmp_path / "e.wz", sparsity=LayerRules(0.5).set_name("fc", 0.2))
    with pytest.raises(WeightzipError, match="a layer-class rule needs the nn.Module"):
        compress_state_dict(model.state_dict(), tmp_path / "e.wz", number_of_clusters=LayerRules(8).set_type(
            nn.Linear, 4))
