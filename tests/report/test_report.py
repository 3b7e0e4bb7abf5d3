"""`weightzip report`: figures computed from the file, a self-contained page, and that page in real Chromium."""

import base64
import io
import json
import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest
import torch

from weightzip.cli import main
from weightzip.format import inspect_table
from weightzip.report import build_report
from weightzip.torch.checkpoint import compress_state_dict

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PNG_URI = re.compile(r"src=['\"]data:image/png;base64,([A-Za-z0-9+/=]+)['\"]")


@pytest.fixture
def pruned_wz(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    path = tmp_path / "small.wz"
    compress_state_dict(model.state_dict(), path, number_of_clusters=8, sparsity=0.6)
    return path


def _decode_png(data: bytes) -> np.ndarray:
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return image


def test_figures_and_numbers_come_from_the_file(pruned_wz):
    report = build_report(pruned_wz)
    sizes = inspect_table(pruned_wz)
    assert set(report.histograms) == {"0.weight", "2.weight"}  # the biases are in the table only
    for tensor in report.data.tensors:
        split = tensor.bits_split()
        # the four parts add up to the tensor's share of the file
        assert sum(split.values()) * tensor.weights / 8 == pytest.approx(tensor.size.encoded_bytes
                                                                          + tensor.container_bytes)
    assert sum(sum(t.bits_split().values()) * t.weights / 8 for t in report.data.tensors) == \
        pytest.approx(sizes.file_bytes)
    weight = next(t for t in report.data.tensors if t.name == "0.weight")
    assert weight.pruned_zeros == pytest.approx(0.6 * 64 * 128, abs=1)
    stages = report.data.stage_bytes()
    assert stages["float"] == 4 * sum(t.weights for t in report.data.tensors)
    assert stages["float"] > stages["pruned"] > stages["clustered"] > stages["entropy-coded"] == sizes.file_bytes
    for png in report.figures.values():
        _decode_png(png)


def test_cli_writes_html_pngs_and_json(pruned_wz, tmp_path, capsys):
    html, pngs = tmp_path / "report.html", tmp_path / "figures"
    assert main(["report", str(pruned_wz), "-o", str(html), "--png", str(pngs), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["figures"] == 4 and summary["png_files"] == 4 and summary["fidelity"] is None
    page = html.read_text()
    assert "<table id='tensors' class='sortable'>" in page and page.count("<tr>") == 1 + 4
    assert "http://" not in page and "https://" not in page  # self-contained
    embedded = [base64.b64decode(data) for data in PNG_URI.findall(page)]
    assert len(embedded) == 4
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs.glob("*.png"))
    assert "carries no fidelity measurement" in page
    assert main(["report", str(pruned_wz), "-o", str(html)]) == 2  # never over an existing file
    assert "already exists" in capsys.readouterr().err


def test_fidelity_the_file_records_is_shown(tmp_path):
    from weightzip.format import read_wz, write_wz

    torch.manual_seed(0)
    source = tmp_path / "a.wz"
    compress_state_dict({"w": torch.randn(16, 16)}, source, number_of_clusters=4)
    tensors, metadata = read_wz(source)
    metadata["post_training"] = {"fidelity": {"samples": 32, "top1_agreement": 0.96875, "relative_output_error": 0.05,
                                              "mean_cosine": 0.998},
                                 "tensors": [{"tensor": "w", "k": 4, "weighted_error": 0.01}]}
    path = tmp_path / "b.wz"
    write_wz(path, tensors, metadata)
    report = build_report(path)
    assert "error" in report.figures
    assert "top-1 agreement 0.969" in report.html() and "mean cosine 0.9980" in report.html()


def test_mobilenet_v2_report_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    from weightzip.torch.models import mobilenet_v2

    model = mobilenet_v2(pretrained=True)  # the ImageNet weights (Makefile installs them)
    wz, html = tmp_path / "mobilenet_v2.wz", tmp_path / "report.html"
    compress_state_dict(model, wz, number_of_clusters=16, init="linear")
    assert main(["report", str(wz), "-o", str(html)]) == 0
    expected = len(PNG_URI.findall(html.read_text()))
    assert expected == 2 + 53  # stages, bits, one histogram per convolution/linear weight

    def run(*arguments):
        profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
        return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments,
                               html.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout

    dom = run("--virtual-time-budget=10000", "--dump-dom")
    assert f'data-plots-decoded="{expected}/{expected}"' in dom  # every figure decoded by the browser itself
    assert "<table id=\"tensors\" class=\"sortable\">" in dom
    for data in PNG_URI.findall(dom):
        _decode_png(base64.b64decode(data))
    shot = tmp_path / "shot.png"
    run("--window-size=1280,4000", f"--screenshot={shot}", "--hide-scrollbars")
    pixels = _decode_png(shot.read_bytes())[..., :3]
    assert pixels.std() > 0.05  # not blank
    colored = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max(axis=2) > 0.15
    assert colored.mean() > 0.01  # the plots' colored bars are on screen


def test_report_reads_tensors_one_at_a_time_through_the_index(pruned_wz, monkeypatch):
    """No whole-file decode: the report reads the header, then each plotted tensor alone."""
    import weightzip.format.reader as reader

    def whole_file(*args, **kwargs):
        raise AssertionError("the report decoded the whole file")

    monkeypatch.setattr(reader, "_decode_all", whole_file)
    read = []
    original = reader._decode_record
    monkeypatch.setattr(reader, "_decode_record", lambda record, *rest: read.append(record.name) or
                        original(record, *rest))
    report = build_report(pruned_wz)
    assert read == ["0.weight", "2.weight"] and set(report.histograms) == set(read)
