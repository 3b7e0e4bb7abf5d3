"""Files written by every format version stay readable: committed fixtures must decode to the same tensors.

v1.0 files have their header before the payload, v1.1 files after it (flag bit 1). The tensors are built
by integer arithmetic (no RNG), so they do not depend on NumPy's generators. Regenerate the fixtures only
for a new format version (keep the old ones); this writes the current version's:

    python tests/format/test_wz_fixtures.py
"""

from pathlib import Path

import numpy as np
import pytest
from wz_samples import assert_same_tensors

from weightzip.core import ClusteredTensor
from weightzip.format import FORMAT_VERSION, WriteOptions, inspect_wz, read_tensor, read_wz, write_wz
from weightzip.format.container import FLAG_HEADER_AT_END, PREAMBLE

FIXTURES = Path(__file__).parent / "fixtures"
VARIANTS = [(coding, layout) for coding in ("packed", "huffman", "ans") for layout in ("dense", "sparse")]


def fixture_tensors() -> dict:
    n = np.arange(20 * 30, dtype=np.int64)
    kept = (n * 7919) % 100 >= 90  # 10 % kept; the pruned weights use centroid 3, the exact zero
    fc_indices = np.where(kept, 4 + (n * 31) % 12, 3).reshape(20, 30).astype(np.uint8)
    fc_codebook = (np.array([[-1.5, -0.75, -0.25, 0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0, 1.25,
                              1.5, 1.75, 2.0, 3.0]]) / 4).astype(np.float32)
    conv_indices = ((np.arange(3 * 3 * 4 * 6) * 5) % 8).reshape(3, 3, 4, 6).astype(np.uint8)
    conv_codebook = (np.arange(2 * 8, dtype=np.float64).reshape(2, 8) - 7.5) / 8
    bias = (np.arange(30, dtype=np.float32) - 15) / 16
    sparse_bias = np.zeros(64, dtype=np.float32)
    sparse_bias[[3, 40, 41]] = [1.0, -0.0, -2.5]
    return {
        "fc/kernel": ClusteredTensor(fc_codebook, fc_indices),
        "conv/kernel": ClusteredTensor(conv_codebook.astype(np.float16), conv_indices, -1, 3),
        "fc/bias": bias,
        "sparse/bias": sparse_bias,
        "bn/count": np.array(12, dtype=np.int64),
    }


METADATA = {"framework": "fixture", "version": [1, 0]}


@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("coding, layout", VARIANTS)
def test_fixture_reads_back(version, coding, layout):
    path = FIXTURES / f"v{version}-{coding}-{layout}.wz"
    _, major, minor, flags = PREAMBLE.unpack_from(path.read_bytes(), 0)[:4]
    assert f"{major}.{minor}" == version and bool(flags & FLAG_HEADER_AT_END) == (version != "1.0")
    tensors, metadata = read_wz(path)
    assert metadata == METADATA
    expected = fixture_tensors()
    assert_same_tensors(tensors, expected)
    summary = inspect_wz(path)
    assert summary.version == version
    rows = {row.name: row for row in summary.report.rows}
    assert rows["fc/kernel"].layout == layout and rows["fc/kernel"].value_coding == coding
    assert_same_tensors({"conv/kernel": read_tensor(path, "conv/kernel")}, {"conv/kernel": expected["conv/kernel"]})


def test_the_writer_writes_the_newest_fixture_version():
    assert FORMAT_VERSION == "1.1"
    assert all((FIXTURES / f"v{FORMAT_VERSION}-{coding}-{layout}.wz").is_file() for coding, layout in VARIANTS)


def regenerate():
    FIXTURES.mkdir(exist_ok=True)
    for coding, layout in VARIANTS:
        options = WriteOptions(coding=coding, layout=layout, gap_bits=4 if layout == "sparse" else None)
        write_wz(FIXTURES / f"v{FORMAT_VERSION}-{coding}-{layout}.wz", fixture_tensors(), METADATA, options=options,
                 overwrite=True)


if __name__ == "__main__":
    regenerate()
