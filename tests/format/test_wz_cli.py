"""The CLI on hostile and odd .wz files: `inspect` prints names verbatim but never as markup or escape
sequences, sorts them naturally, has --json; `decompress` validates the metadata it trusts; bad inputs and
unwritable outputs end in one line and exit 2."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from weightzip.cli import main
from weightzip.format import write_wz
from weightzip.torch.checkpoint import compress_state_dict, decompress

HOSTILE_NAMES = ["blocks.10.weight", "blocks.2.weight", "blocks[attn].weight", "[/]", "[bold]x[/bold]",
                 "\x1b[31mred\x1b[0m", "bidi\u202etxt", "ln.bias", "empty", "scalar"]


def hostile_file(path):
    tensors = {name: np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4) for name in HOSTILE_NAMES}
    tensors.update({"ln.bias": np.zeros(768, np.float32), "empty": np.zeros((0, 5), np.float32),
                    "scalar": np.array(2.5, np.float32)})
    write_wz(path, tensors, {"framework": "\x1b]0;title\x07torch"})
    return path


def one_line_error(capsys, command):
    err = capsys.readouterr().err
    assert err.startswith(f"weightzip {command}: error: ") and err.count("\n") == 1, err
    return err


def test_inspect_shows_names_verbatim_without_markup_or_escape_sequences(tmp_path, capsys):
    path = hostile_file(tmp_path / "m.wz")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    for shown in ("blocks[attn].weight", "[/]", "[bold]x[/bold]", "\\x1b[31mred\\x1b[0m", "bidi\\u202etxt",
                  "\\x1b]0;title\\x07torch"):
        assert shown in out
    names = [line.split()[0] for line in out.splitlines()[2:] if line.split()]
    assert names.index("blocks.2.weight") < names.index("blocks.10.weight")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "infx" not in out and "all zero" in rows["ln.bias"] and "empty" in rows["empty"]
    assert rows["scalar"].split()[1] == "scalar"


def test_inspect_never_wraps_when_piped(tmp_path):
    path = tmp_path / "m.wz"
    long_name = "encoder.layers.11.attention.self.query.weight.with.a.very.long.name" * 2
    write_wz(path, {long_name: np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)})
    result = subprocess.run([sys.executable, "-m", "weightzip.cli", "inspect", str(path)], capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "40"}, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + 2 + 2  # summary, column titles, 2 tensors, container, total
    assert lines[0].startswith(str(path)) and "2 tensors" in lines[0]
    assert any(line.startswith(long_name) for line in lines)


def test_inspect_json_matches_the_file(tmp_path, capsys):
    path = hostile_file(tmp_path / "m.wz")
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == path.stat().st_size and report["framework"] == "\x1b]0;title\x07torch"
    assert report["container_bytes"] + sum(t["bytes"] for t in report["tensors"]) == report["bytes"]
    by_name = {t["name"]: t for t in report["tensors"]}
    assert set(by_name) == set(HOSTILE_NAMES)
    assert by_name["ln.bias"]["compression_rate"] is None and by_name["ln.bias"]["nonzero"] == 0
    assert by_name["blocks[attn].weight"]["shape"] == [3, 4] and by_name["scalar"]["shape"] == []
    names = [t["name"] for t in report["tensors"]]
    assert names.index("blocks.2.weight") < names.index("blocks.10.weight")


@pytest.mark.parametrize("torch_dtypes, message", [
    (["bfloat16"], "must be a map"), ({"w": "complex128"}, "complex128"), ({"w": 5}, "5"),
    ({"missing": "bfloat16"}, "no such tensor")])
def test_decompress_validates_torch_metadata(tmp_path, capsys, torch_dtypes, message):
    path = tmp_path / "m.wz"
    write_wz(path, {"w": np.ones((2, 2), np.float32)}, {"framework": "torch", "torch_dtypes": torch_dtypes})
    assert main(["decompress", str(path), "-o", str(tmp_path / "out.safetensors")]) == 2
    assert message in one_line_error(capsys, "decompress")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("model, variables, message", [
    (None, [], "serialized Keras model"), ("Sequential", [], "serialized Keras model"),
    ({"class_name": "NoSuchLayer", "config": {}}, [], "cannot be rebuilt"),
    ({"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": "x"}}]}}, [],
     "cannot be rebuilt"),
    ({"class_name": "Sequential", "config": {"layers": []}}, "w", "list of variable paths")])
def test_decompress_validates_keras_metadata(tmp_path, capsys, model, variables, message):
    path = tmp_path / "m.wz"
    write_wz(path, {"w": np.ones((2, 2), np.float32)}, {"framework": "keras", "model": model, "variables": variables})
    assert main(["decompress", str(path), "-o", str(tmp_path / "out.keras")]) == 2
    assert message in one_line_error(capsys, "decompress")
    assert not (tmp_path / "out.keras").exists()


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{not json", b"\xff" * 8 + b"{}",
                                     b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"w":{"dtype":"F32","shape":[4],'])
def test_malformed_safetensors_is_one_line(tmp_path, capsys, content):
    source = tmp_path / "model.safetensors"
    source.write_bytes(content)
    assert main(["compress", str(source), "-o", str(tmp_path / "m.wz"), "--clusters", "4"]) == 2
    assert "not a valid .safetensors file" in one_line_error(capsys, "compress")
    assert not (tmp_path / "m.wz").exists()


def test_full_output_directory_is_one_line(tmp_path, capsys, monkeypatch):
    path = hostile_file(tmp_path / "m.wz")
    write_wz(tmp_path / "t.wz", {"w": np.ones((4, 4), np.float32)}, {"framework": "torch", "torch_dtypes": {}})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main(["decompress", str(tmp_path / "t.wz"), "-o", str(tmp_path / "out.pt")]) == 2
    assert "No space left on device" in one_line_error(capsys, "decompress")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.wz", "t.wz"] and path.exists()


def test_file_size_limit_is_one_line(tmp_path, capsys):
    # A real RLIMIT_FSIZE (ulimit -f): writing past it fails with EFBIG (Python ignores SIGXFSZ).
    import resource

    write_wz(tmp_path / "m.wz", {"w": np.ones((256, 256), np.float32)}, {"framework": "torch", "torch_dtypes": {}})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        code = main(["decompress", str(tmp_path / "m.wz"), "-o", str(tmp_path / "out.pt")])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert code == 2
    assert "File too large" in one_line_error(capsys, "decompress")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.wz"]


def test_bfloat16_nan_payloads_come_back_bit_exactly(tmp_path):
    bits = torch.tensor([0x7F81, -1, 0x7FC0, 0x7F80, 0xFF81 - 65536, 0x3F80, 0x0001, -32768, 0x7FFF],
                        dtype=torch.int16)
    state = {"w": bits.view(torch.bfloat16).reshape(3, 3), "b": bits.view(torch.bfloat16)}
    path = tmp_path / "m.wz"
    compress_state_dict(state, path)
    restored = decompress(path)
    for name, tensor in state.items():
        assert restored[name].dtype == torch.bfloat16
        assert torch.equal(restored[name].view(torch.int16), tensor.view(torch.int16)), name
