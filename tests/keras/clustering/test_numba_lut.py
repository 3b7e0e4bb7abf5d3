"""The look-up-table product of a clustered Dense kernel (clustering/_numba_lut.py): ``x @ table[index]`` without
the kernel equals the float64 product with the looked-up kernel, on shapes that fill no block, and reports the
largest index it read."""

import numpy as np
import pytest

from weightzip.keras.clustering import _numba_lut

pytestmark = pytest.mark.skipif(not _numba_lut.serves(16), reason="numba compiles for neither AVX-512 nor AVX2 with FMA here")


@pytest.mark.parametrize(("batch", "inner", "columns", "entries"), [
    (32, 300, 512, 16),  # whole row blocks but two, eight column blocks, several index chunks
    (1, 5, 64, 3),  # one row, one block
    (7, 130, 200, 16),  # rows and columns left over after the blocks
    (13, 64, 65, 9),
    (6, 1, 128, 2),  # one inner step
    (37, 129, 1030, 16),  # every left-over row count's block: 37 = 6 * 6 + 1
    (5, 10, 30, 4),  # no whole column block
])
def test_lut_product_equals_the_product_with_the_looked_up_kernel(batch, inner, columns, entries):
    rng = np.random.default_rng(batch * 1000 + columns)
    x = rng.normal(size=(batch, inner)).astype(np.float32)
    table = rng.normal(size=entries).astype(np.float32)
    index = rng.integers(0, entries, (inner, columns)).astype(np.uint8)
    index[0, 0], index[-1, -1] = 0, entries - 1
    out = np.full((batch, columns), np.nan, np.float32)
    assert _numba_lut.lut_product(x, table, index, out) == entries - 1
    expected = x.astype(np.float64) @ table[index].astype(np.float64)
    scale = np.abs(x).max() * np.abs(table).max() * inner
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("where", ["block", "left_over_column"])
def test_lut_product_reports_an_index_outside_the_table(where):
    """The product reads only an index's low 4 bits; the largest index read tells the caller it was outside."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 70)).astype(np.float32)
    table = rng.normal(size=10).astype(np.float32)
    index = rng.integers(0, 10, (70, 130)).astype(np.uint8)
    assert _numba_lut.lut_product(x, table, index, np.empty((8, 130), np.float32)) <= 9
    index[69 if where == "block" else 3, 5 if where == "block" else 129] = 200
    assert _numba_lut.lut_product(x, table, index, np.empty((8, 130), np.float32)) == 200
