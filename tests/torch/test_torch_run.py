"""`weightzip run model.wz --input x.npy`: compressed TorchScript and .pt2 programs run on .npy inputs; bad
files and inputs end in one line, exit 2, before anything runs."""

import numpy as np
import pytest
import torch
from torch import nn

from weightzip.cli import main
from weightzip.core import ClusterConfig, cluster_array
from weightzip.format import write_wz
from weightzip.torch import compress_state_dict, decompress


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def decoded_output(model, wz, x):
    reference = small_model()
    reference.load_state_dict({name: t for name, t in decompress(wz).items()})
    with torch.no_grad():
        return reference(torch.from_numpy(x)).numpy()


def test_run_a_compressed_torchscript_archive_on_an_npy_input(tmp_path, capsys):
    archive, wz = tmp_path / "m.pt", tmp_path / "m.wz"
    torch.jit.save(torch.jit.script(small_model()), archive)
    assert main(["compress", str(archive), "-o", str(wz), "--clusters", "8"]) == 0
    x = np.random.default_rng(0).standard_normal((4, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["run", str(wz), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    out = capsys.readouterr().out
    assert "output 0: float32 [4, 3], range" in out
    assert "weights decoded (dense float): a TorchScript program's compiled modules cannot be swapped" in out
    message = failure(capsys, ["run", str(wz), "--dense", "--input", str(tmp_path / "x.npy")])
    assert "--dense does not apply" in message
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), decoded_output(small_model(), wz, x), rtol=1e-5,
                               atol=1e-6)


def test_run_a_pt2_program_with_the_weights_of_a_wz(tmp_path, capsys):
    model, wz, program = small_model(), tmp_path / "w.wz", tmp_path / "p.pt2"
    x = np.random.default_rng(1).standard_normal((2, 20)).astype(np.float32)
    torch.export.save(torch.export.export(model, (torch.from_numpy(x),)), program)
    compress_state_dict(model, wz, number_of_clusters=8)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(wz), "--program", str(program), "--input", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npz")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["arr_0"], decoded_output(model, wz, x), rtol=1e-5,
                               atol=1e-6)


class Mixed(nn.Module):
    """Conv (+BN), an embedding, a Linear, and a Linear whose weight is also read by another op (left dense)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.embed = nn.Embedding(12, 8)
        self.head = nn.Linear(8 * 16 + 8, 32)
        self.tied = nn.Linear(32, 32, bias=False)

    def forward(self, image, ids):
        features = torch.relu(self.norm(self.conv(image))).flatten(1)
        hidden = self.head(torch.cat([features, self.embed(ids).mean(1)], dim=1))
        return self.tied(hidden) + hidden @ self.tied.weight


def test_a_pt2_program_runs_palettized_and_says_which_weights_stay_dense(tmp_path, capsys):
    from weightzip.torch.run import load_program

    torch.manual_seed(3)
    model = Mixed().eval()
    image = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    ids = np.array([[1, 5, 11], [0, 3, 3]], np.int64)
    program, wz = tmp_path / "m.pt2", tmp_path / "m.wz"
    torch.export.save(torch.export.export(model, (torch.from_numpy(image), torch.from_numpy(ids))), program)
    compress_state_dict(model, wz, number_of_clusters=8, per_channel=True)
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "ids.npy", ids)
    reference = Mixed().eval()
    reference.load_state_dict(decompress(wz))
    with torch.no_grad():
        expected = reference(torch.from_numpy(image), torch.from_numpy(ids)).numpy()
    capsys.readouterr()
    inputs = ["--input", str(tmp_path / "image.npy"), "--input", str(tmp_path / "ids.npy")]
    assert main(["run", str(wz), "--program", str(program), *inputs, "-o", str(tmp_path / "y.npy")]) == 0
    out = capsys.readouterr().out
    assert "3 weights palettized; left dense: tied.weight (used by aten.linear.default, aten.matmul.default" in out
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)
    module, note = load_program(wz, program)
    called = {str(node.target) for node in module.graph.nodes if node.op == "call_function"}
    assert {"weightzip.palettized_conv.default", "weightzip.palettized_linear.default",
            "weightzip.palettized_embedding.default"} <= called
    names = dict(module.named_parameters())
    assert "conv.weight" not in names and "head.weight" not in names and "tied.weight" in names
    module, note = load_program(wz, program, dense=True)
    assert note.startswith("weights decoded (dense float)")
    assert not any("weightzip" in str(node.target) for node in module.graph.nodes)


def failure(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_mismatched_files_and_wrong_inputs_are_one_line_errors(tmp_path, capsys):
    model, program = small_model(), tmp_path / "p.pt2"
    x = np.zeros((2, 20), np.float32)
    torch.export.save(torch.export.export(model, (torch.from_numpy(x),)), program)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), np.float32))
    good, other = tmp_path / "good.wz", tmp_path / "other.wz"
    compress_state_dict(model, good, number_of_clusters=8)
    torch.manual_seed(1)
    compress_state_dict(nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5)), other, number_of_clusters=8)
    keras = tmp_path / "k.wz"
    write_wz(keras, {"dense/kernel": cluster_array(np.ones((4, 4), np.float32), ClusterConfig(2))},
             {"framework": "keras"})
    x_npy = str(tmp_path / "x.npy")
    message = failure(capsys, ["run", str(other), "--program", str(program), "--input", x_npy])
    assert "tensor '2.weight' has shape [5, 16] in the file, [3, 16] in p.pt2" in message
    message = failure(capsys, ["run", str(good), "--input", x_npy])
    assert "holds weights only, no program: give the TorchScript archive or .pt2 program" in message
    message = failure(capsys, ["run", str(keras), "--program", str(program), "--input", x_npy])
    assert "holds a 'keras' model" in message
    message = failure(capsys, ["run", str(good), "--program", str(program), "--input", str(tmp_path / "bad.npy")])
    assert "the program rejected" in message and "bad.npy (float32 [2, 7])" in message
    (tmp_path / "pickle.npy").write_bytes(b"not an array")
    message = failure(capsys, ["run", str(good), "--program", str(program), "--input", str(tmp_path / "pickle.npy")])
    assert "pickle.npy: not a readable .npy array" in message
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("output", ["y.txt"])
def test_output_must_be_npy_or_npz(tmp_path, capsys, output):
    message = failure(capsys, ["run", str(tmp_path / "m.wz"), "--input", str(tmp_path / "x.npy"),
                               "-o", str(tmp_path / output)])
    assert "outputs are written to a .npy (one output) or .npz file" in message
