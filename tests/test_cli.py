"""The `weightzip` command, run in-process through `main(argv)`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import torch

from weightzip.cli import build_parser, main
from weightzip.format import read_metadata
from weightzip.keras.storage import load_wz


@pytest.fixture
def keras_model_file(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    path = tmp_path / "model.keras"
    model.save(path)
    return path


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "compress", "decompress", "inspect"):
        assert command in out


def test_keras_post_training_compress_inspect_decompress(keras_model_file, tmp_path, capsys):
    original_bytes = keras_model_file.read_bytes()
    output = tmp_path / "model.wz"
    assert main(["compress", str(keras_model_file), "-o", str(output), "--sparsity", "0.5", "--clusters", "4"]) == 0
    assert keras_model_file.read_bytes() == original_bytes  # the input is untouched
    assert read_metadata(output)["framework"] == "keras"

    decoded = load_wz(output)
    kernel = decoded.layers[0].kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01)
    assert len(np.unique(kernel)) <= 4

    assert main(["inspect", str(output)]) == 0
    assert "kernel" in capsys.readouterr().out

    restored = tmp_path / "restored.keras"
    assert main(["decompress", str(output), "-o", str(restored)]) == 0
    x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    reloaded = keras.models.load_model(restored)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), decoded.predict(x, verbose=0))


def test_existing_output_is_refused_with_exit_2(keras_model_file, tmp_path, capsys):
    output = tmp_path / "model.wz"
    output.write_bytes(b"keep me")
    assert main(["compress", str(keras_model_file), "-o", str(output)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert output.read_bytes() == b"keep me"


def test_output_equal_to_input_is_refused(keras_model_file, capsys):
    assert main(["compress", str(keras_model_file), "-o", str(keras_model_file), "--overwrite"]) == 2
    assert "input file" in capsys.readouterr().err


def test_unknown_model_type_and_missing_file(tmp_path, capsys):
    unknown = tmp_path / "model.onnx"
    unknown.write_bytes(b"\x08\x07")
    assert main(["compress", str(unknown)]) == 2
    assert "unknown model type" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "absent.keras")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_bad_data_argument_is_explained(keras_model_file, tmp_path, capsys):
    assert main(["compress", str(keras_model_file), "-o", str(tmp_path / "m.wz"), "--data", "imagenet"]) == 2
    assert "mnist-5k" in capsys.readouterr().err


def test_corrupted_wz_gives_one_line_error(tmp_path, capsys):
    broken = tmp_path / "broken.wz"
    broken.write_bytes(b"\x89WZF\r\n\x1a\n" + b"\x00" * 10)
    assert main(["inspect", str(broken)]) == 2
    assert "error" in capsys.readouterr().err


def test_torch_checkpoint_roundtrip(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    state = {"fc.weight": torch.randn(16, 32), "fc.bias": torch.randn(16)}
    source = tmp_path / "model.safetensors"
    save_file(state, source)
    output = tmp_path / "model.wz"
    assert main(["compress", str(source), "-o", str(output), "--clusters", "8"]) == 0
    restored = tmp_path / "restored.safetensors"
    assert main(["decompress", str(output), "-o", str(restored)]) == 0
    loaded = load_file(restored)
    assert torch.equal(loaded["fc.bias"], state["fc.bias"])
    assert loaded["fc.weight"].unique().numel() <= 8
    # Optimal 8-level quantisation of N(0, 1) has a mean squared error of about 0.035.
    assert torch.mean((loaded["fc.weight"] - state["fc.weight"]) ** 2) < 0.05


def test_keras_wz_cannot_become_a_torch_checkpoint(keras_model_file, tmp_path, capsys):
    output = tmp_path / "model.wz"
    assert main(["compress", str(keras_model_file), "-o", str(output)]) == 0
    assert main(["decompress", str(output), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert ".keras or .tflite" in capsys.readouterr().err


def test_parser_defaults():
    args = build_parser().parse_args(["compress", "m.keras"])
    assert args.output is None and args.data is None and not args.overwrite


def test_keras_pipeline_with_builtin_data(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    source = tmp_path / "mlp.keras"
    model.save(source)
    output = tmp_path / "mlp.wz"
    assert main(["compress", str(source), "-o", str(output), "--data", "mnist-5k", "--sparsity", "0.5",
                 "--clusters", "4", "--prune-epochs", "1", "--cluster-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Huffman" in out and f"{output.stat().st_size:,} B" in out
    kernel = load_wz(output).layers[0].kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01) and len(np.unique(kernel)) <= 4
