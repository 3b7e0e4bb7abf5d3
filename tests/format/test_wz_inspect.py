"""Size tables of .wz files are computed from the actual section sizes and add up to the file size."""

import numpy as np
import pytest
from wz_samples import pruned_array, random_clustered

from weightzip.format import WriteOptions, WzFormatError, decode_wz, inspect_table, read_metadata, write_wz
from weightzip.format.container import disassemble


def test_rows_add_up_to_the_file_size(tmp_path):
    tensors = {"fc": random_clustered((100, 120), 32, density=0.1, seed=0),
               "conv": random_clustered((3, 3, 8, 16), 16, axis=-1, seed=1),
               "bias": np.ones(120, dtype=np.float32)}
    path = tmp_path / "m.wz"
    size = write_wz(path, tensors, {"x": 1})
    report = inspect_table(path)
    assert report.file_bytes == size == path.stat().st_size
    header, payload = disassemble(path.read_bytes())
    assert report.tensor_bytes == len(payload)  # every payload byte belongs to a tensor
    assert report.tensor_bytes + report.overhead_bytes == size
    assert [row.name for row in report.rows] == ["fc", "conv", "bias"]
    decoded, _ = decode_wz(path.read_bytes())
    for row in report.rows:
        dense = decoded[row.name].decode() if row.kind == "clustered" else decoded[row.name]
        assert row.nonzero == np.count_nonzero(dense)
        assert row.original_bytes == dense.nbytes
    assert report.compression_rate == pytest.approx(sum(r.original_bytes for r in report.rows) / size)
    assert read_metadata(path) == {"x": 1}
    assert "total" in report.to_text()


def test_paper_style_sparse_fc_layer_figures(tmp_path):
    # 8% kept, k = 16 (4-bit indices), 5-bit relative indices, no entropy coding: P+Q of Table 2.
    tensor = random_clustered((300, 784), 16, density=0.08, seed=0)
    path = tmp_path / "fc.wz"
    write_wz(path, {"ip1": tensor}, options=WriteOptions(coding="packed", layout="sparse", gap_bits=5))
    (row,) = inspect_table(path).rows
    assert row.layout == "sparse" and row.value_coding == "packed" and row.index_coding == "packed"
    assert row.kept_percent == pytest.approx(100 * np.count_nonzero(tensor.decode()) / tensor.indices.size)
    assert row.kept_percent == pytest.approx(8.0 * 15 / 16, abs=0.3)  # kept indices may hit the zero too
    assert row.bits_per_weight == pytest.approx(4.0, abs=8 / row.entries)
    assert row.bits_per_index == pytest.approx(5.0, abs=8 / row.entries)
    fillers = row.entries - row.nonzero
    assert 0 < fillers < 0.1 * row.entries  # gaps over 31 are rare at 8% density
    assert row.codebook_bytes == 16 * 4
    # Entropy coding shrinks both streams (P+Q+H).
    coded = tmp_path / "fc_h.wz"
    write_wz(coded, {"ip1": tensor}, options=WriteOptions(coding="auto", layout="sparse", gap_bits=5))
    (coded_row,) = inspect_table(coded).rows
    assert coded_row.bits_per_index < row.bits_per_index
    assert coded_row.encoded_bytes < row.encoded_bytes


def test_sparse_array_rows_have_index_bits(tmp_path):
    path = tmp_path / "a.wz"
    write_wz(path, {"a": pruned_array((5000,), 0.01)})
    (row,) = inspect_table(path).rows
    assert row.layout == "sparse" and row.bits_per_weight == 32.0 and row.bits_per_index > 0


def test_inspect_checks_the_file(tmp_path):
    path = tmp_path / "m.wz"
    write_wz(path, {"a": np.ones(10)})
    data = bytearray(path.read_bytes())
    data[-12] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(WzFormatError, match="checksum"):
        inspect_table(path)
