"""Size accounting: the paper's weight-sharing rate and the per-tensor size rows."""

import math

import pytest

from weightzip.core.errors import WeightzipError
from weightzip.core.sizing import SizeReport, TensorSize, weight_sharing_compression_rate


def test_paper_example_4_clusters_of_16_float32_weights_is_3_2x():
    # Deep Compression §3: 4x4 weights, 4 shared 32-bit centroids, 2-bit indices.
    assert weight_sharing_compression_rate(16, 32, 4) == pytest.approx(3.2)
    assert 16 * 32 / (16 * 2 + 4 * 32) == pytest.approx(3.2)


def test_rate_grows_with_n_towards_b_over_log2_k():
    rates = [weight_sharing_compression_rate(n, 32, 16) for n in (16, 1_000, 1_000_000)]
    assert rates == sorted(rates)
    assert rates[-1] == pytest.approx(32 / 4, rel=1e-3)
    # Non-power-of-two k: the formula's log2 k versus the stored ceil(log2 k).
    assert weight_sharing_compression_rate(1000, 32, 5, index_bits=3) < weight_sharing_compression_rate(1000, 32, 5)
    with pytest.raises(WeightzipError):
        weight_sharing_compression_rate(0, 32, 4)


def test_tensor_size_row_figures():
    row = TensorSize(name="fc1", kind="clustered", shape=(300, 784), dtype_bits=32, layout="sparse",
                     nonzero=18_816, entries=20_000, codebook_bytes=64, value_bytes=10_000, index_bytes=12_500)
    assert row.weights == 235_200
    assert row.kept_percent == pytest.approx(8.0)
    assert row.bits_per_weight == pytest.approx(4.0)
    assert row.bits_per_index == pytest.approx(5.0)
    assert row.encoded_bytes == 22_564
    assert row.compression_rate == pytest.approx(235_200 * 4 / 22_564)
    assert row.bits_per_parameter == pytest.approx(22_564 * 8 / 235_200)
    assert row.storage == "sparse +"
    assert TensorSize("b", "array", (3,), 32, "sparse", 1, 1, 0, 4, 1, "raw", "ans").storage == "sparse raw+ans"


def test_report_overhead_makes_totals_add_up_to_the_file():
    rows = [TensorSize("a", "array", (10,), 32, "dense", 10, 10, 0, 40),
            TensorSize("b", "clustered", (4, 4), 32, "dense", 16, 16, 16, 4)]
    report = SizeReport(rows, file_bytes=100)
    assert report.tensor_bytes == 60 and report.overhead_bytes == 40
    assert report.compression_rate == pytest.approx((40 + 64) / 100)
    cells = report.table_rows()
    assert [c[0] for c in cells] == ["a", "b", "(container)", "total"]
    assert cells[-1][2] == "26" and cells[-1][8] == "100"
    assert cells[0][4] == "dense " and cells[-1][7] == f"{800 / 26:.3f}"
    assert all(len(c) == len(SizeReport.columns) for c in cells)
    text = report.to_text()
    assert "total" in text and len(text.splitlines()) == 5
    assert math.isinf(SizeReport([], 0).compression_rate)
