"""weightzip.torch.exported: a torch.export program's convolution / linear / batch-norm calls as nn layers holding
the program's own tensors, so that post-training compression compensates and bias-corrects them."""

import numpy as np
import pytest
import torch
from torch import nn

from weightzip.torch.exported import following_norm, with_layers


class Mixed(nn.Module):
    """Every form with_layers makes a layer of, and some it must leave alone."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.stem_norm = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.same = nn.Conv2d(8, 8, 3, padding="same")  # string padding: left as a call
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)  # not lifted
        self.line = nn.Conv1d(4, 6, 5, padding=2)
        self.line_norm = nn.BatchNorm1d(6)
        self.tied = nn.Linear(6, 6)  # used twice: its calls share one weight, left as they are
        self.head = nn.Linear(6, 5)
        self.head_norm = nn.BatchNorm1d(5, affine=False)

    def forward(self, x):
        x = torch.relu(self.stem_norm(self.stem(x)))
        x = x + self.grouped(x)  # the convolution's output taken twice: no following norm
        x = self.up(self.same(x))
        x = self.line_norm(self.line(x.mean(dim=2)))
        x = self.tied(self.tied(x.mean(dim=2)))
        return self.head_norm(self.head(x))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    torch.manual_seed(0)
    model = Mixed().eval()
    with torch.no_grad():  # statistics that are not the identity, so a lost buffer would show
        for norm in (model.stem_norm, model.line_norm, model.head_norm):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("exported") / "mixed.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},)), path)
    return model, path


def test_layers_hold_the_programs_own_tensors_and_compute_the_same(program):
    model, path = program
    module = torch.export.load(str(path)).module()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        before = module(x)
    state = module.state_dict(keep_vars=True)
    lifted = with_layers(module)
    assert lifted is module
    after_state = lifted.state_dict(keep_vars=True)
    assert list(after_state) == list(state) and all(after_state[name] is state[name] for name in state)
    assert not any(tensor.is_meta for tensor in [*lifted.parameters(), *lifted.buffers()])  # (layers built on meta)
    with torch.no_grad():
        torch.testing.assert_close(lifted(x), before, rtol=0, atol=0)
        torch.testing.assert_close(lifted(x), model(x), rtol=1e-5, atol=1e-5)
    kinds = {name: type(layer) for name, layer in lifted.named_modules()}
    assert kinds["stem"] is nn.Conv2d and kinds["grouped"] is nn.Conv2d and kinds["line"] is nn.Conv1d
    assert kinds["stem_norm"] is nn.BatchNorm2d and kinds["line_norm"] is nn.BatchNorm1d
    assert kinds["head"] is nn.Linear and kinds["head_norm"] is nn.BatchNorm1d
    assert lifted.grouped.groups == 4 and lifted.grouped.dilation == (2, 2) and lifted.stem.stride == (2, 2)
    assert lifted.stem.bias is None and not lifted.head_norm.affine
    for left in ("same", "up", "tied"):  # their calls stay calls: no layer to hook
        assert kinds[left] is nn.Module
    assert following_norm(lifted, "stem") is lifted.stem_norm and following_norm(lifted, "line") is lifted.line_norm
    assert following_norm(lifted, "head") is lifted.head_norm
    assert following_norm(lifted, "grouped") is None and following_norm(lifted, "stem_norm") is None


def test_exported_program_is_compensated_and_bias_corrected(program):
    from weightzip.torch.post_training import compress_post_training

    model, path = program
    module = torch.export.load(str(path)).module()
    names = [name for name, _ in module.named_modules()]
    calibration = np.random.default_rng(0).normal(size=(96, 3, 16, 16)).astype(np.float32)
    compressed, report = compress_post_training(module, calibration, bits_per_weight=3, bias_correction=True)
    assert [name for name, _ in module.named_modules()] == names  # the caller's module is left as it was
    assert type(module.get_submodule("stem")) is nn.Module
    compensated = {row["tensor"] for row in report.rows() if row["compensated"]}
    assert {"stem.weight", "grouped.weight", "line.weight"} <= compensated
    assert any(note.startswith("bias correction: 4 layers'") for note in report.notes), report.notes
    plain, _ = compress_post_training(module, calibration, bits_per_weight=3, compensation=False, bias_correction=False)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(64, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        reference = model(x)
        error, plain_error = (((m(x) - reference).norm() / reference.norm()).item() for m in (compressed, plain))
    assert error < 0.5 * plain_error  # measured: 0.0004 vs 0.0025 (the layers' output means restored above all)


def test_torchscript_is_compressed_through_its_export_twin_and_keeps_every_tensor(program, tmp_path):
    from weightzip.torch import decompress
    from weightzip.torch.post_training import compress_post_training

    model, _ = program
    scripted = torch.jit.script(model)
    calibration = np.random.default_rng(0).normal(size=(96, 3, 16, 16)).astype(np.float32)
    path = tmp_path / "mixed.wz"
    compressed, report = compress_post_training(scripted, calibration, bits_per_weight=3, bias_correction=True,
                                                path=path)
    assert isinstance(compressed, torch.jit.ScriptModule)
    assert "TorchScript: measured and compressed as its torch.export graph (same tensors and outputs)" in report.notes
    compensated = {row["tensor"] for row in report.rows() if row["compensated"]}
    assert {"stem.weight", "grouped.weight", "line.weight"} <= compensated
    assert any(note.startswith("bias correction: 4 layers'") for note in report.notes), report.notes
    state = decompress(path)
    assert set(state) == set(scripted.state_dict())  # the archive's every tensor, the twin lacks some
    assert "stem_norm.num_batches_tracked" in {row["tensor"] for row in report.uncompressed}
    restored = torch.jit.script(Mixed().eval())
    restored.load_state_dict(state)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(64, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(restored(x), compressed(x), rtol=0, atol=0)
        reference = model(x)
        error = ((compressed(x) - reference).norm() / reference.norm()).item()
    plain, _ = compress_post_training(scripted, calibration, bits_per_weight=3, compensation=False, bias_correction=False)
    with torch.no_grad():
        assert error < 0.5 * ((plain(x) - reference).norm() / reference.norm()).item()


def test_torchscript_that_torch_cannot_convert_is_compressed_as_before_and_says_so(program, monkeypatch):
    import torch._export.converter as converter

    from weightzip.torch.post_training import compress_post_training

    class Refusing:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("cannot convert")

    monkeypatch.setattr(converter, "TS2EPConverter", Refusing)
    model, _ = program
    calibration = np.random.default_rng(0).normal(size=(48, 3, 16, 16)).astype(np.float32)
    compressed, report = compress_post_training(torch.jit.script(model), calibration, bits_per_weight=3)
    assert isinstance(compressed, torch.jit.ScriptModule) and report.fidelity is not None
    assert any(note.startswith("TorchScript: torch could not convert it") for note in report.notes), report.notes
    assert not any(row["compensated"] for row in report.rows())


class Recurrent(nn.Module):
    """torch converts this TorchScript (an LSTM) to a graph whose batch size is fixed to the example's."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(10, 16, 3, padding=1)
        self.lstm = nn.LSTM(16, 24, batch_first=True)
        self.head = nn.Linear(24, 6)

    def forward(self, x):
        out, _ = self.lstm(torch.relu(self.conv(x)).transpose(1, 2))
        return self.head(out[:, -1])


def test_a_twin_that_runs_only_at_the_example_batch_size_is_not_used():
    from weightzip.torch.exported import script_twin
    from weightzip.torch.post_training import compress_post_training

    torch.manual_seed(0)
    scripted = torch.jit.script(Recurrent().eval())
    calibration = np.random.default_rng(0).normal(size=(48, 10, 20)).astype(np.float32)
    samples = torch.from_numpy(calibration)
    assert script_twin(scripted, samples[:2]) is not None  # converted, and right at the example's batch size
    assert script_twin(scripted, samples[:2], (samples[:3],)) is None
    compressed, report = compress_post_training(scripted, calibration, bits_per_weight=4)  # runs at every batch size
    assert any(note.startswith("TorchScript: torch could not convert it") for note in report.notes), report.notes
    assert not any("zero sensitivity" in note for note in report.notes), report.notes  # the LSTM's gradients intact
    with torch.no_grad():
        assert compressed(samples[:5]).shape == (5, 6)
