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


# ---------------------------------------------------------------- one meaning per option, on both front ends


@pytest.fixture
def torch_checkpoint(tmp_path):
    """A state_dict with a convolution weight (ndim 4), a matrix and a bias, no exact zeros."""
    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(8, 3, 3, 3), "fc.weight": torch.randn(10, 40), "fc.bias": torch.randn(10)}
    path = tmp_path / "state.pt"
    torch.save(state, path)
    return path, state


def _decoded_torch(output):
    from weightzip.torch.checkpoint import decompress

    return decompress(output)


@pytest.mark.parametrize("options, message", [
    (["--clusters", "0"], "--clusters must be an integer in [1, 65536], got 0"),
    (["--conv-clusters", "-3"], "--conv-clusters must be an integer in [1, 65536], got -3"),
    (["--group-size", "0"], "--group-size must be an integer >= 1, got 0"),
    (["--sparsity", "-1"], "--sparsity must be a fraction in [0, 1), got -1.0"),
    (["--sparsity", "nan"], "--sparsity must be a fraction in [0, 1), got nan"),
    (["--conv-sparsity", "1"], "--conv-sparsity must be a fraction in [0, 1), got 1.0"),
    (["--prune-epochs", "2"], "--prune-epochs only apply to retraining: add --data"),
    (["--per-channel", "--data", "mnist-5k"], "--per-channel only apply to post-training clustering"),
    (["--group-size", "4", "--data", "mnist-5k"], "--group-size only apply to post-training clustering"),
    (["--sparsity", "0.5", "--clusters", "1"], "--clusters 1 leaves no shared weight besides the pruned zero"),
])
@pytest.mark.parametrize("front_end", ["keras", "torch"])
def test_options_that_cannot_apply_are_refused_in_one_line(front_end, options, message, keras_model_file,
                                                           torch_checkpoint, tmp_path, capsys):
    source = keras_model_file if front_end == "keras" else torch_checkpoint[0]
    output = tmp_path / "refused.wz"
    assert main(["compress", str(source), "-o", str(output), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not output.exists()


def test_torch_without_sparsity_reserves_no_zero_centroid(torch_checkpoint, tmp_path):
    source, state = torch_checkpoint
    output = tmp_path / "k1.wz"
    assert main(["compress", str(source), "-o", str(output), "--clusters", "1"]) == 0  # failed before
    decoded = _decoded_torch(output)
    assert torch.allclose(decoded["fc.weight"], state["fc.weight"].mean().expand(10, 40))
    output2 = tmp_path / "k2.wz"
    assert main(["compress", str(source), "-o", str(output2), "--clusters", "2"]) == 0
    values = _decoded_torch(output2)["fc.weight"].unique()
    assert values.numel() == 2 and not (values == 0).any()  # both centroids serve the weights


def test_torch_conv_options_apply_to_weights_of_rank_3_and_more(torch_checkpoint, tmp_path):
    source, state = torch_checkpoint
    output = tmp_path / "conv.wz"
    assert main(["compress", str(source), "-o", str(output), "--clusters", "5", "--conv-clusters", "3",
                 "--sparsity", "0.25", "--conv-sparsity", "0.5"]) == 0
    decoded = _decoded_torch(output)
    conv, fc = decoded["conv.weight"], decoded["fc.weight"]
    assert conv.unique().numel() == 3 and fc.unique().numel() == 5  # each with its pruned zero
    assert (conv == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert (fc == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert torch.equal(decoded["fc.bias"], state["fc.bias"])


def _keras_conv_model_file(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    path = tmp_path / "conv.keras"
    model.save(path)
    return path


def test_clusters_reach_convolutions_on_both_front_ends(tmp_path, torch_checkpoint):
    source = _keras_conv_model_file(tmp_path)
    assert main(["compress", str(source), "-o", str(tmp_path / "k.wz"), "--clusters", "5"]) == 0
    decoded = load_wz(tmp_path / "k.wz")
    assert len(np.unique(decoded.layers[1].kernel.numpy())) == 5  # the Conv2D, as the Dense
    assert len(np.unique(decoded.layers[3].kernel.numpy())) == 5
    assert main(["compress", str(torch_checkpoint[0]), "-o", str(tmp_path / "t.wz"), "--clusters", "5"]) == 0
    assert _decoded_torch(tmp_path / "t.wz")["conv.weight"].unique().numel() == 5


def test_keras_post_training_applies_init_and_group_size(tmp_path):
    from weightzip.core import ClusterConfig, cluster_array
    from weightzip.keras.loading import load_model

    source = _keras_conv_model_file(tmp_path)
    dense_kernel = load_model(source).layers[3].kernel.numpy()
    for init in ("linear", "optimal"):
        output = tmp_path / f"{init}.wz"
        assert main(["compress", str(source), "-o", str(output), "--clusters", "4", "--init", init]) == 0
        expected = cluster_array(dense_kernel, ClusterConfig(4, init=init)).decode()
        np.testing.assert_allclose(load_wz(output).layers[3].kernel.numpy(), expected, rtol=1e-6)
    output = tmp_path / "groups.wz"
    assert main(["compress", str(source), "-o", str(output), "--clusters", "2", "--group-size", "5"]) == 0
    kernel = load_wz(output).layers[3].kernel.numpy()  # (288, 10): channels 0-4 and 5-9 share a codebook
    assert [len(np.unique(kernel[:, group * 5:group * 5 + 5])) for group in (0, 1)] == [2, 2]
    assert len(np.unique(kernel)) == 4


def test_keras_pipeline_gets_init_and_clusters_for_convolutions(keras_model_file, tmp_path, monkeypatch):
    import weightzip.keras.pipeline.deep_compression as deep_compression

    seen = {}

    def fake_compress(model, data, output, *, config, **kwargs):
        seen["config"] = config
        raise deep_compression.WeightzipError("stopped by the test")

    monkeypatch.setattr(deep_compression, "compress", fake_compress)
    assert main(["compress", str(keras_model_file), "-o", str(tmp_path / "p.wz"), "--data", "mnist-5k",
                 "--clusters", "7", "--sparsity", "0.3", "--init", "kmeans++"]) == 2
    config = seen["config"]
    assert (config.clusters, config.conv_clusters, config.sparsity, config.conv_sparsity) == (7, 7, 0.3, 0.3)
    assert config.init.value == "kmeans++"


def test_output_exists_is_checked_before_any_work(tmp_path, capsys):
    for name in ("broken.pt", "broken.keras", "broken.safetensors"):
        source = tmp_path / name
        source.write_bytes(b"not a model at all")
        output = tmp_path / f"{name}.wz"
        output.write_bytes(b"keep me")
        assert main(["compress", str(source), "-o", str(output)]) == 2
        assert "already exists" in capsys.readouterr().err  # not a complaint about the unreadable input
        assert output.read_bytes() == b"keep me"


def test_post_training_api_default_init_is_optimal_as_in_the_cli():
    import inspect

    from weightzip.core import CentroidInitialization
    from weightzip.keras.pipeline.post_training import compress_post_training
    from weightzip.torch.checkpoint import compress_state_dict

    for function in (compress_state_dict, compress_post_training):
        assert inspect.signature(function).parameters["init"].default is CentroidInitialization.OPTIMAL
    assert build_parser().parse_args(["compress", "m.pt"]).init is None  # the CLI leaves it to the path


def test_torch_api_default_init_gives_the_optimal_codebook(tmp_path):
    from weightzip.core import ClusterConfig, cluster_array
    from weightzip.torch.checkpoint import compress_state_dict, decompress

    weight = torch.randn(20, 30, generator=torch.Generator().manual_seed(2))
    compress_state_dict({"w": weight}, tmp_path / "w.wz", number_of_clusters=4)
    expected = cluster_array(weight.numpy(), ClusterConfig(4, init="optimal")).decode()
    np.testing.assert_allclose(decompress(tmp_path / "w.wz")["w"].numpy(), expected, rtol=1e-6)


# ---------------------------------------------------------------- quiet by default, -v to show framework logs


def _run_cli(*arguments: str, cwd):
    """The CLI in a fresh interpreter (TensorFlow's C++ logging set up as a user's run would have it)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_", "ABSL"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.run([sys.executable, "-m", "weightzip.cli", *arguments], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_keras_commands_print_nothing_on_stderr_unless_verbose(keras_model_file, tmp_path):
    for arguments in (["compress", str(keras_model_file), "-o", "m.wz", "--clusters", "8"],
                      ["inspect", "m.wz"],
                      ["decompress", "m.wz", "-o", "m.tflite"]):
        result = _run_cli(*arguments, cwd=tmp_path)
        assert result.returncode == 0 and result.stderr == "", (arguments, result.stderr)
        assert result.stdout
    verbose = _run_cli("-v", "decompress", "m.wz", "-o", "verbose.tflite", cwd=tmp_path)
    assert verbose.returncode == 0 and verbose.stderr != ""  # the converter's own log lines


def test_size_change_says_larger_when_the_file_came_out_larger():
    from weightzip.cli import _size_change

    assert _size_change(4200, 1000) == "4.2x smaller than"
    assert _size_change(1000, 1000) == "1.0x smaller than"
    assert _size_change(1000, 1300) == "1.3x larger than"  # a tiny model: the format's own bytes dominate
