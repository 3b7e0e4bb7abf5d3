"""The torch-free safetensors route: compress and decompress a checkpoint with NumPy only, values exact where
they must be (bfloat16 with its NaN payloads, integer and kept tensors), clustered ones within their bound."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from weightzip.shards import open_safetensors  # noqa: E402


def _bfloat16_with_nans(shape) -> torch.Tensor:
    tensor = torch.randn(shape).to(torch.bfloat16)
    bits = tensor.view(torch.int16).clone()
    bits.view(-1)[:3] = torch.tensor([0x7FC1, -0x3F, 0x7F81], dtype=torch.int16)  # NaNs with payloads and signs
    return bits.view(torch.bfloat16)


def test_cli_round_trip_imports_no_torch_and_keeps_exact_tensors_exact(tmp_path):
    torch.manual_seed(0)
    state = {"attn.weight": torch.randn(64, 48), "gate.weight": torch.randn(32, 16).to(torch.bfloat16),
             "norm.weight": _bfloat16_with_nans((48,)), "steps": torch.arange(5, dtype=torch.int64),
             "half.weight": torch.randn(8, 8).to(torch.float16),
             "bn.num_batches_tracked": torch.tensor(7)}  # 0-d, as every BatchNorm has
    source, packed, restored = tmp_path / "model.safetensors", tmp_path / "model.wz", tmp_path / "back.safetensors"
    save_file(state, str(source))
    code = ("import sys; from weightzip.cli import main; "
            f"assert main(['compress', {str(source)!r}, '--clusters', '8', '-o', {str(packed)!r}]) == 0; "
            f"assert main(['decompress', {str(packed)!r}, '-o', {str(restored)!r}]) == 0; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"')) == []
    back = load_file(str(restored))
    assert {name: (t.dtype, t.shape) for name, t in back.items()} == \
        {name: (t.dtype, t.shape) for name, t in state.items()}
    assert torch.equal(back["steps"], state["steps"])
    assert torch.equal(back["bn.num_batches_tracked"], state["bn.num_batches_tracked"])
    # rank 1: kept exactly, bfloat16 NaNs with their signs and payloads too
    assert torch.equal(back["norm.weight"].view(torch.int16), state["norm.weight"].view(torch.int16))
    for name in ("attn.weight", "gate.weight", "half.weight"):  # 2-D: clustered, in their own dtypes
        assert back[name].unique().numel() <= 8
        assert torch.mean((back[name].float() - state[name].float()) ** 2) < 0.05
    assert torch.mean((back["attn.weight"] - state["attn.weight"]) ** 2) < 0.05


def test_arrays_are_the_torch_tensors_values(tmp_path):
    torch.manual_seed(1)
    state = {"a": torch.randn(4, 5), "b": _bfloat16_with_nans((6,)), "c": torch.arange(7, dtype=torch.int32),
             "d": torch.zeros(0, 3)}
    save_file(state, str(tmp_path / "m.safetensors"))
    checkpoint = open_safetensors(tmp_path / "m.safetensors")
    arrays = {name: np.array(array) for name, array in checkpoint.arrays()}
    for name, tensor in state.items():
        expected = tensor.to(torch.float32) if tensor.dtype == torch.bfloat16 else tensor
        assert arrays[name].dtype == expected.numpy().dtype and arrays[name].shape == tuple(tensor.shape)
        assert arrays[name].tobytes() == expected.numpy().tobytes()  # bit for bit, NaN payloads included


def test_open_wz_per_tensor_bounds_each_tensor_not_their_sum(tmp_path):
    from weightzip.format import WzFormatError, open_wz, write_wz

    path = tmp_path / "two.wz"
    tensors = {"a": np.arange(60, dtype=np.float32).reshape(6, 10), "b": np.ones((5, 10), np.float32)}
    write_wz(path, tensors)
    with pytest.raises(WzFormatError, match="element limit"):
        open_wz(path, max_elements=100)  # 110 together
    with open_wz(path, max_elements=100, per_tensor=True) as wz:
        assert all(np.array_equal(wz.read(name), value) for name, value in tensors.items())
    with pytest.raises(WzFormatError, match="element limit"):
        open_wz(path, max_elements=59, per_tensor=True)  # 'a' alone has 60


def test_read_metadata_bounds_each_tensor_not_their_sum(tmp_path, monkeypatch):
    from weightzip.format import WzFormatError, read_metadata, reader, write_wz

    path = tmp_path / "two.wz"
    write_wz(path, {"a": np.zeros((6, 10), np.float32), "b": np.ones((5, 10), np.float32)}, {"k": 1})
    monkeypatch.setattr(reader, "DEFAULT_MAX_ELEMENTS", 100)  # 110 together, each below
    assert read_metadata(path) == {"k": 1}
    monkeypatch.setattr(reader, "DEFAULT_MAX_ELEMENTS", 59)
    with pytest.raises(WzFormatError, match="element limit"):
        read_metadata(path)


def test_decompress_to_a_model_directory_bounds_each_tensor_not_their_sum(tmp_path, monkeypatch):
    """The sharded route writes one decoded tensor at a time: a .wz whose tensors together exceed the element
    limit is written back (a 1 B-weight checkpoint holds more than 268 M), one tensor over it is refused."""
    from weightzip.format import WzFormatError, reader
    from weightzip.torch.hf import compress_safetensors, decompress_safetensors

    torch.manual_seed(2)
    shards = {"model-00001-of-00002.safetensors": {"a.weight": torch.randn(6, 10)},
              "model-00002-of-00002.safetensors": {"b.weight": torch.randn(5, 10), "b.bias": torch.randn(10)}}
    for file, tensors in shards.items():
        save_file(tensors, str(tmp_path / file))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0},
                                 "weight_map": {name: file for file, tensors in shards.items() for name in tensors}}))
    compress_safetensors(index, tmp_path / "m.wz", number_of_clusters=4)
    monkeypatch.setattr(reader, "DEFAULT_MAX_ELEMENTS", 100)  # 120 together, each at most 60
    written = decompress_safetensors(tmp_path / "m.wz", tmp_path / "out")
    assert sorted(written) == sorted([*shards, index.name])
    for file, tensors in shards.items():
        back = load_file(str(tmp_path / "out" / file))
        assert set(back) == set(tensors)
        for name, tensor in tensors.items():
            assert back[name].shape == tensor.shape
            if name.endswith("bias"):  # kept exactly
                assert torch.equal(back[name], tensor)
            else:  # 4 clusters of N(0, 1) values: about 0.12 of the variance remains as error
                assert torch.mean((back[name] - tensor) ** 2) < 0.2 * torch.mean(tensor ** 2)
    monkeypatch.setattr(reader, "DEFAULT_MAX_ELEMENTS", 59)  # 'a.weight' alone has 60
    with pytest.raises(WzFormatError, match="element limit"):
        decompress_safetensors(tmp_path / "m.wz", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
