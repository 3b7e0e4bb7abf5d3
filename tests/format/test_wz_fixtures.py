"""Files written by format version 1.0 stay readable: committed fixtures must decode to the same tensors.

The tensors are built by integer arithmetic (no RNG), so they do not depend on NumPy's generators.
Regenerate the fixtures only for a new format version (keep the old ones):

    python tests/format/test_wz_fixtures.py
"""

from pathlib import Path

import numpy as np
import pytest
from wz_samples import assert_same_tensors

from weightzip.core import ClusteredTensor
from weightzip.format import WriteOptions, inspect_table, read_wz, write_wz

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


@pytest.mark.parametrize("coding, layout", VARIANTS)
def test_version_1_0_fixture_reads_back(coding, layout):
    path = FIXTURES / f"v1.0-{coding}-{layout}.wz"
    tensors, metadata = read_wz(path)
    assert metadata == METADATA
    assert_same_tensors(tensors, fixture_tensors())
    rows = {row.name: row for row in inspect_table(path).rows}
    assert rows["fc/kernel"].layout == layout and rows["fc/kernel"].value_coding == coding


def regenerate():
    FIXTURES.mkdir(exist_ok=True)
    for coding, layout in VARIANTS:
        options = WriteOptions(coding=coding, layout=layout, gap_bits=4 if layout == "sparse" else None)
        write_wz(FIXTURES / f"v1.0-{coding}-{layout}.wz", fixture_tensors(), METADATA, options=options,
                 overwrite=True)


if __name__ == "__main__":
    regenerate()
