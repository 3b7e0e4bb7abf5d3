"""`weightzip compress` on runnable PyTorch files (TorchScript, torch.export .pt2) with calibration inputs."""

import numpy as np
import pytest
import torch
from torch import nn

from weightzip.cli import main
from weightzip.format import read_metadata


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runnable")
    torch.manual_seed(0)
    model = Small().eval()
    scripted = folder / "small_ts.pt"
    torch.jit.save(torch.jit.script(model), scripted)
    exported = folder / "small.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(model, (torch.randn(4, 3, 8, 8),), dynamic_shapes=({0: batch},)), exported)
    calibration = folder / "calibration.npz"
    np.savez(calibration, x=np.random.default_rng(0).normal(size=(40, 3, 8, 8)).astype(np.float32))
    wrong = folder / "wrong.npz"
    np.savez(wrong, x=np.zeros((40, 4, 8, 8), np.float32))
    state = folder / "small.safetensors"
    from safetensors.torch import save_file
    save_file(model.state_dict(), state)
    return model, scripted, exported, calibration, wrong, state


@pytest.mark.parametrize("kind", ["torchscript", "pt2"])
def test_runnable_inputs_compress_to_a_target_with_measured_fidelity(files, tmp_path, capsys, kind):
    model, scripted, exported, calibration, _, _ = files
    source = scripted if kind == "torchscript" else exported
    output = tmp_path / "out.wz"
    assert main(["compress", str(source), "-o", str(output), "--calibration", str(calibration),
                 "--bits-per-weight", "4"]) == 0
    printed = capsys.readouterr().out
    assert "fidelity on 10 held-out samples" in printed and "bits per weight" in printed
    assert main(["inspect", str(output)]) == 0
    assert "post-training (4 bits per weight), " in capsys.readouterr().out  # the one fidelity line of inspect
    recorded = read_metadata(output)["post_training"]
    assert recorded["bits_per_weight"] <= 4.0 and recorded["fidelity"]["relative_output_error"] < 0.2
    restored = Small().eval()
    from weightzip.torch import decompress
    restored.load_state_dict(decompress(output), strict=True)
    probe = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        error = (restored(probe) - model(probe)).norm() / model(probe).norm()
    assert error < 0.2


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(files, tmp_path, capsys):
    _, scripted, _, calibration, wrong, state = files
    output = tmp_path / "never.wz"
    cases = [
        (["compress", str(scripted), "-o", str(output), "--calibration", str(wrong)], "cannot run"),
        (["compress", str(scripted), "-o", str(output), "--calibration", str(calibration), "--target-size", "100"],
         "cannot be met"),
        (["compress", str(state), "-o", str(output), "--calibration", str(calibration)], "need a model that can run"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not output.exists()


def test_per_kind_options_reach_pytorch_post_training_as_on_keras(files, tmp_path, capsys):
    model, scripted, _, calibration, _, _ = files
    output = tmp_path / "ruled.wz"
    assert main(["compress", str(scripted), "-o", str(output), "--calibration", str(calibration), "--clusters", "8",
                 "--conv-clusters", "4", "--sparsity", "0.5", "--conv-sparsity", "0.25"]) == 0
    assert "k=8, conv k=4" in capsys.readouterr().out
    from weightzip.torch import decompress

    weights = {name: tensor.numpy() for name, tensor in decompress(output).items()}
    assert len(np.unique(weights["conv.weight"])) == 4 and len(np.unique(weights["fc.weight"])) == 8
    assert float(np.mean(weights["fc.weight"] == 0)) == pytest.approx(0.5, abs=0.01)
    assert float(np.mean(weights["conv.weight"] == 0)) == pytest.approx(0.25, abs=0.02)
    fidelity = read_metadata(output)["post_training"]["fidelity"]
    assert fidelity["relative_output_error"] < 0.5  # measured against the float model on held-out inputs
