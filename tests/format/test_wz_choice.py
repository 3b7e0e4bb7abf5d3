"""The writer chooses codings, layouts and gap widths from symbol statistics, and the result is exactly the
smallest of all candidates as if every one had been encoded (ties: simpler coding, dense, fewer gap bits)."""

import numpy as np
import pytest
from wz_samples import pruned_array, random_clustered

from weightzip.core.sparse import MAX_GAP_BITS
from weightzip.format import WriteOptions, encode_wz
from weightzip.format.container import disassemble
from weightzip.format.streams import encode_symbols, plan_stream, symbol_histogram


def tensor_bytes(data: bytes) -> int:
    header, payload = disassemble(data)
    return len(payload)


@pytest.mark.parametrize("alphabet, concentration", [(2, 0.05), (16, 1.0), (16, 0.1), (256, 1.0), (4096, 0.5)])
def test_auto_coding_is_the_smallest_encoding(alphabet, concentration):
    rng = np.random.default_rng(alphabet)
    for count in (1, 50, 4000):
        symbols = rng.choice(alphabet, size=count, p=rng.dirichlet(np.full(alphabet, concentration)))
        forced = [encode_symbols(symbols, alphabet, coding) for coding in ("packed", "huffman", "ans")]
        auto = encode_symbols(symbols, alphabet)
        smallest = min(forced, key=lambda stream: stream.size)  # first of equals: packed, huffman, ans
        assert (auto.fields, auto.data) == (smallest.fields, smallest.data)
        plan = plan_stream(symbol_histogram(symbols, alphabet), alphabet)
        assert plan.lower_bound <= auto.size
        if auto.fields["coding"] != "ans":
            assert plan.exact_size == auto.size


@pytest.mark.parametrize("density", [1.0, 0.3, 0.05, 0.002])
@pytest.mark.parametrize("coding", ["auto", "packed", "huffman", "ans"])
def test_layout_and_gap_width_are_the_smallest_of_all(density, coding):
    tensors = [random_clustered((120, 90), 16, density=density, seed=1),
               random_clustered((3, 3, 16, 12), 8, axis=-1, group_size=5, density=density, seed=2),
               pruned_array((5000,), density, seed=3)]
    for tensor in tensors:
        auto = tensor_bytes(encode_wz({"t": tensor}, options=WriteOptions(coding=coding)))
        every = [tensor_bytes(encode_wz({"t": tensor}, options=WriteOptions(coding=coding, layout="dense")))]
        every += [tensor_bytes(encode_wz({"t": tensor}, options=WriteOptions(coding=coding, layout="sparse",
                                                                          gap_bits=bits)))
                  for bits in range(1, MAX_GAP_BITS + 1)]
        assert auto == min(every)


def test_sparse_value_histograms_match_the_streams_they_predict():
    from weightzip.core.sparse import sparse_encode
    from weightzip.format.records import _KeptPositions, _value_histogram

    tensor = random_clustered((7, 40, 9), 8, axis=1, group_size=3, density=0.01, seed=4)
    background = np.arange(14) % 8  # a different background index per codebook row
    per_weight = np.broadcast_to(background[tensor.group_of_each_weight()], tensor.shape).ravel()
    flat = tensor.indices.ravel()
    kept = np.flatnonzero(flat != per_weight)
    raw_gaps = np.diff(kept, prepend=np.int64(-1)) - 1
    positions = _KeptPositions(flat != per_weight)
    assert positions.count == kept.size and np.array_equal(positions.raw_gaps, raw_gaps)
    assert np.array_equal(positions.raw_gap_histogram(), np.bincount(raw_gaps))
    for gap_bits in (1, 3, 6):
        _, values = sparse_encode(flat, per_weight, gap_bits)
        predicted = _value_histogram(flat, positions, (int((raw_gaps >> gap_bits).sum()), gap_bits),
                                     background, tensor.shape, tensor, 8)
        assert np.array_equal(predicted, np.bincount(values, minlength=8))
