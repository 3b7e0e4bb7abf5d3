"""The centroid gradient of a clustered Dense kernel without its weight gradient (clustering/_numba_dense.py):
the tile-by-tile product summed by index equals a bincount of x^T g, on shapes that fill no tile too."""

import numpy as np
import pytest

from weightzip.keras.clustering import _numba_dense

pytestmark = pytest.mark.skipif(not _numba_dense.serves(16), reason="numba compiles for neither AVX-512 nor AVX2 with FMA here")


@pytest.mark.parametrize(("batch", "rows", "columns", "entries", "index_dtype"), [
    (32, 512, 512, 16, np.uint8),  # whole tiles, two threads' worth of rows
    (3, 37, 200, 5, np.int32),  # rows and columns left over after the blocks
    (1, 8, 64, 16, np.uint8),  # one block
    (33, 130, 331, 16, np.int64),
    (5, 3, 70, 2, np.uint8),  # fewer rows than a block
])
def test_outer_product_segment_sums_equal_a_bincount_of_the_weight_gradient(batch, rows, columns, entries,
                                                                            index_dtype):
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, rows)).astype(np.float32)
    g = rng.normal(size=(batch, columns)).astype(np.float32)
    index = rng.integers(0, entries, (rows, columns)).astype(index_dtype)
    index[0, :3] = entries + 2  # outside the table: adds nowhere
    index[0, -1] = 255  # (in the zero-padded last block where the columns fill none)
    out = np.full(entries, np.nan, np.float32)
    _numba_dense.outer_product_segment_sums(np.ascontiguousarray(x.T), g, index, out)
    product = x.T.astype(np.float64) @ g.astype(np.float64)
    inside = index < entries
    expected = np.bincount(index[inside].astype(np.int64), product[inside], minlength=entries)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4 * np.abs(product).max())
