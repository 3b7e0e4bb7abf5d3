"""TorchScript archives through the CLI: their state_dict in, the same archive with decoded weights out."""

import io
import pickle

import torch
from torch import nn

from weightzip.cli import main
from weightzip.torch.checkpoint import decompress
from weightzip.torch.torchscript import ARCHIVE_TENSOR, is_torchscript_archive


def _scripted(tmp_path, name="model.jit"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    model.eval()
    path = tmp_path / name
    torch.jit.save(torch.jit.script(model), path)
    return model, path


def test_archive_is_recognised_by_content_not_suffix(tmp_path):
    _, path = _scripted(tmp_path, "renamed.bin")
    assert is_torchscript_archive(path)
    state_path = tmp_path / "state.jit"
    torch.save({"w": torch.ones(2, 2)}, state_path)  # a zip too, but a plain state_dict
    assert not is_torchscript_archive(state_path)


def test_cli_round_trip_gives_back_a_runnable_archive_with_decoded_weights(tmp_path, capsys):
    model, source = _scripted(tmp_path)
    output = tmp_path / "model.wz"
    assert main(["compress", str(source), "-o", str(output), "--clusters", "16"]) == 0
    assert output.stat().st_size < source.stat().st_size / 2
    restored = tmp_path / "restored.pt"
    assert main(["decompress", str(output), "-o", str(restored)]) == 0
    loaded = torch.jit.load(restored)
    decoded = decompress(output)
    assert ARCHIVE_TENSOR not in decoded
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, decoded[name]), name
    assert decoded["4.weight"].unique().numel() == 16 and decoded["0.weight"].unique().numel() == 16
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, compressed = model(x), loaded(x)
    agreement = (reference.argmax(1) == compressed.argmax(1)).float().mean().item()
    assert agreement >= 0.9 and torch.norm(reference - compressed) / torch.norm(reference) < 0.1
    state_only = tmp_path / "restored.safetensors"
    assert main(["decompress", str(output), "-o", str(state_only)]) == 0  # the state_dict alone


def test_plain_pickles_are_never_unpickled(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": Evil()}))
    assert main(["compress", str(path), "-o", str(tmp_path / "e.wz")]) == 2
    captured = capsys.readouterr()
    assert "pwned" not in captured.out and "never arbitrary pickles" in captured.err
    assert captured.err.count("\n") == 1
    buffer = io.BytesIO()
    torch.save(nn.Linear(2, 2), buffer)  # a whole pickled module
    (tmp_path / "module.pt").write_bytes(buffer.getvalue())
    assert main(["compress", str(tmp_path / "module.pt"), "-o", str(tmp_path / "m.wz")]) == 2
    assert "not a loadable torch checkpoint" in capsys.readouterr().err
