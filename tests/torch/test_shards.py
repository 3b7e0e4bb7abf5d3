"""Sharded safetensors: streaming writer vs the safetensors library, index checks, one clear error per defect."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from weightzip.torch.shards import (
    INDEX_FILE,
    ShardError,
    ShardLayout,
    open_safetensors,
    read_header,
    write_safetensors,
    write_sharded,
)
from weightzip.torch.shards import (
    tensors as checkpoint_tensors,
)


def _tensors():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(6, 4), "a.bias": torch.randn(6).to(torch.bfloat16),
            "b.weight": torch.randn(3, 6).half(), "steps": torch.tensor(7), "mask": torch.tensor([True, False])}


def _sharded_dir(tmp_path, tensors):
    layout = ShardLayout((("model-00001-of-00002.safetensors", ("a.weight", "a.bias"), {"format": "pt"}),
                          ("model-00002-of-00002.safetensors", ("b.weight", "steps", "mask"), {"format": "pt"})),
                         {"total_size": 0})
    specs = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    write_sharded(tmp_path, layout, specs, tensors.__getitem__)
    return layout


def test_streamed_file_reads_back_exactly_with_the_safetensors_library(tmp_path):
    tensors = _tensors()
    path = tmp_path / "m.safetensors"
    written = write_safetensors(path, [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], tensors.__getitem__,
                                {"format": "pt"})
    assert written == path.stat().st_size
    loaded = load_file(str(path))
    assert list(loaded) == sorted(tensors) or set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert read_header(path).metadata == {"format": "pt"}


def test_library_written_file_opens_and_streams_in_order(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    checkpoint = open_safetensors(tmp_path)
    assert not checkpoint.layout.sharded and set(checkpoint.names) == set(tensors)
    assert checkpoint.total_bytes == sum(t.numel() * t.element_size() for t in tensors.values())
    for name, tensor in checkpoint_tensors(checkpoint):
        assert torch.equal(tensor, tensors[name])


def test_sharded_round_trip_keeps_layout_and_index(tmp_path):
    tensors = _tensors()
    layout = _sharded_dir(tmp_path, tensors)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["weight_map"]["steps"] == "model-00002-of-00002.safetensors"
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    checkpoint = open_safetensors(tmp_path)
    assert checkpoint.layout.shards == layout.shards
    assert ShardLayout.from_json(json.loads(json.dumps(checkpoint.layout.to_json())), "x") == checkpoint.layout
    assert {name: t for name, t in checkpoint_tensors(checkpoint)}.keys() == tensors.keys()


@pytest.mark.parametrize("defect, message", [
    ("missing_shard", "names shard 'model-00002-of-00002.safetensors', which does not exist"),
    ("moved_tensor", "shard model-00001-of-00002.safetensors lacks 1 tensor(s) the index places there, e.g. 'steps'"),
    ("unlisted_tensor", "the index does not list it"),
    ("absent_tensor", "lacks 1 tensor(s) the index places there"),
    ("path_escape", "must be a plain file name"),
    ("truncated_shard", "its header describes"),
    ("not_json", "not a JSON shard index"),
])
def test_shards_disagreeing_with_their_index_are_refused(tmp_path, defect, message):
    tensors = _tensors()
    _sharded_dir(tmp_path, tensors)
    index_path = tmp_path / INDEX_FILE
    index = json.loads(index_path.read_text())
    second = tmp_path / "model-00002-of-00002.safetensors"
    if defect == "missing_shard":
        second.unlink()
    elif defect == "moved_tensor":
        index["weight_map"]["steps"] = "model-00001-of-00002.safetensors"
    elif defect == "unlisted_tensor":
        del index["weight_map"]["mask"]
    elif defect == "absent_tensor":
        index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    elif defect == "path_escape":
        index["weight_map"]["steps"] = "../model-00002-of-00002.safetensors"
    elif defect == "truncated_shard":
        second.write_bytes(second.read_bytes()[:-3])
    if defect == "not_json":
        index_path.write_text("{nope")
    else:
        index_path.write_text(json.dumps(index))
    with pytest.raises(ShardError, match=re.escape(message)):
        open_safetensors(tmp_path)


def test_foreign_file_is_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ShardError, match="not a safetensors file"):
        open_safetensors(path)


def test_tensors_kept_past_the_iteration_stay_valid(tmp_path):
    tensors = _tensors()
    _sharded_dir(tmp_path, tensors)
    kept = dict(checkpoint_tensors(open_safetensors(tmp_path)))  # every view outlives its step and the generator
    import gc

    gc.collect()
    for name, tensor in tensors.items():
        assert torch.equal(kept[name], tensor)
