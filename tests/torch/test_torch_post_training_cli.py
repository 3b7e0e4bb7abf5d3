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
    # its layers hooked as an nn.Module's (weightzip.torch.exported), TorchScript's through its torch.export twin
    assert "error compensation (GPTQ on the clustered grid): 1 tensors'" in printed
    assert "bias correction: 2 layers' output means restored" in printed
    assert ("TorchScript: measured and compressed as its torch.export graph" in printed) == (kind == "torchscript")
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


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of 24 small RGB images (larger than the model's 8x8 input, of another aspect ratio)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for index in range(24):
        smooth = rng.integers(0, 256, size=(3, 4, 3)).repeat(4, axis=0).repeat(5, axis=1)  # 12 x 20 pixels
        Image.fromarray(smooth.astype(np.uint8)).save(folder / f"photo_{index:02d}.png")
    return folder


IMAGENET_OPTIONS = ["--image-mean", "0.485,0.456,0.406", "--image-std", "0.229,0.224,0.225",
                    "--image-resize", "center-crop"]


def test_torchscript_takes_a_folder_of_images_at_the_input_shape_with_their_normalisation(files, photos, tmp_path,
                                                                                           capsys):
    from weightzip.calibration import ImagePreprocessing, load_calibration
    from weightzip.torch.post_training import compress_post_training

    model, scripted, _, _, _, _ = files
    output = tmp_path / "photos.wz"
    assert main(["compress", str(scripted), "-o", str(output), "--calibration", str(photos), "--input-shape", "3,8,8",
                 "--bits-per-weight", "4", *IMAGENET_OPTIONS]) == 0
    printed = capsys.readouterr().out
    assert "fidelity on 6 held-out samples" in printed
    assert "bias correction: 2 layers' output means restored" in printed  # through its torch.export twin
    recorded = read_metadata(output)["post_training"]["fidelity"]
    # the same inputs through the Python API: the CLI normalised and cropped them as asked
    preprocessing = ImagePreprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="center-crop")
    inputs = load_calibration(photos, (3, 8, 8), preprocessing=preprocessing)
    assert inputs.shape == (24, 3, 8, 8) and inputs.min() < -1.0  # normalised, not [0, 1]
    _, report = compress_post_training(torch.jit.load(str(scripted)), inputs, bits_per_weight=4)
    assert report.fidelity.relative_output_error == pytest.approx(recorded["relative_output_error"], abs=1e-6)
    plain = tmp_path / "plain.wz"
    assert main(["compress", str(scripted), "-o", str(plain), "--calibration", str(photos), "--input-shape", "3,8,8",
                 "--bits-per-weight", "4"]) == 0
    other = read_metadata(plain)["post_training"]["fidelity"]["relative_output_error"]
    assert other != pytest.approx(recorded["relative_output_error"], abs=1e-6)  # [0, 1] pixels, stretched


def test_image_options_that_cannot_apply_exit_2_and_write_nothing(files, photos, tmp_path, capsys):
    _, scripted, exported, calibration, _, _ = files
    output = tmp_path / "never.wz"
    cases = [
        (["--calibration", str(photos)], "--input-shape"),  # TorchScript states no input size
        (["--input-shape", "3,8,8", "--image-mean", "0.5"], "add --calibration, or drop them"),
        (["--calibration", str(calibration), "--image-std", "0.5"], "applies to a folder of images"),
        (["--calibration", str(photos), "--input-shape", "3,8,8", "--image-std", "0,1,1"], "std must be positive"),
        (["--calibration", str(photos), "--input-shape", "3,8,8", "--image-mean", "0.5,0.5"], "has 2 values"),
    ]
    for options, message in cases:
        assert main(["compress", str(scripted), "-o", str(output), *options]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not output.exists()
    assert main(["compress", str(exported), "-o", str(output), "--calibration", str(photos),
                 "--input-shape", "3,16,16"]) == 2  # a .pt2 program states its input: 3 x 8 x 8
    assert "contradicts the model's input" in capsys.readouterr().err and not output.exists()
    with pytest.raises(SystemExit) as exit_:
        main(["compress", str(scripted), "--input-shape", "3,x,8"])
    assert exit_.value.code == 2 and "expected comma-separated positive sizes" in capsys.readouterr().err
