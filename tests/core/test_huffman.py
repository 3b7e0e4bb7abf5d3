"""Canonical length-limited Huffman coding: optimality, Kraft, canonical order, limits, round trips, bad streams."""

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightzip.core.errors import WeightzipError
from weightzip.core.huffman import (
    canonical_codes,
    encoded_bit_count,
    huffman_code_lengths,
    huffman_decode,
    huffman_encode,
    kraft_sum,
)

counts_strategy = st.lists(st.integers(0, 10_000), min_size=2, max_size=80).filter(
    lambda c: sum(1 for x in c if x) >= 2)


def reference_huffman_cost(counts) -> int:
    """Σ count·length of an optimal prefix code: the sum of all merged weights (textbook heap Huffman)."""
    heap = [int(c) for c in counts if c > 0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


def entropy_bits(counts) -> float:
    p = np.asarray([c for c in counts if c > 0], dtype=np.float64)
    p /= p.sum()
    return float(-(p * np.log2(p)).sum())


@settings(max_examples=200, deadline=None)
@given(counts=counts_strategy)
def test_lengths_are_optimal_complete_and_within_one_bit_of_entropy(counts):
    lengths = huffman_code_lengths(np.asarray(counts))
    assert encoded_bit_count(counts, lengths) == reference_huffman_cost(counts)
    assert kraft_sum(lengths) == 1.0  # a Huffman code is complete
    assert np.all((lengths > 0) == (np.asarray(counts) > 0))
    average = encoded_bit_count(counts, lengths) / sum(counts)
    entropy = entropy_bits(counts)
    assert entropy - 1e-9 <= average < entropy + 1


@settings(max_examples=100, deadline=None)
@given(counts=counts_strategy)
def test_codes_are_canonical_and_prefix_free(counts):
    lengths = huffman_code_lengths(np.asarray(counts))
    codes = canonical_codes(lengths)
    used = [s for s in range(len(counts)) if lengths[s]]
    ordered = sorted(used, key=lambda s: (lengths[s], s))
    words = [format(int(codes[s]), f"0{lengths[s]}b") for s in ordered]
    assert words[0] == "0" * lengths[ordered[0]]
    for previous, current in zip(words, words[1:]):  # each code: previous + 1, then shifted
        expected = (int(previous, 2) + 1) << (len(current) - len(previous))
        assert int(current, 2) == expected
    for a in words:
        for b in words:
            assert a == b or not b.startswith(a)


def test_known_small_code():
    lengths = huffman_code_lengths(np.array([10, 40, 5, 5]))
    np.testing.assert_array_equal(lengths, [2, 1, 3, 3])
    np.testing.assert_array_equal(canonical_codes(lengths), [0b10, 0b0, 0b110, 0b111])
    # symbols 1, 0, 2 -> 0 10 110 -> 0101 10(00 padding)
    assert huffman_encode([1, 0, 2], lengths) == bytes([0b01011000])


def test_length_limit_keeps_the_code_complete():
    fibonacci = [1, 1]
    while len(fibonacci) < 40:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    unlimited = huffman_code_lengths(np.array(fibonacci), max_length=24)
    assert unlimited.max() == 24
    for limit in (6, 10, 24):
        lengths = huffman_code_lengths(np.array(fibonacci), max_length=limit)
        assert lengths.max() == limit
        assert kraft_sum(lengths) == 1.0
        symbols = np.repeat(np.arange(40), np.minimum(fibonacci, 50))
        np.testing.assert_array_equal(huffman_decode(huffman_encode(symbols, lengths), symbols.size, lengths),
                                      symbols)
    with pytest.raises(WeightzipError, match="cannot have codes"):
        huffman_code_lengths(np.ones(65, dtype=np.int64), max_length=6)


@settings(max_examples=100, deadline=None)
@given(alphabet=st.integers(1, 300), count=st.integers(1, 3000), skew=st.floats(0.05, 5.0),
       seed=st.integers(0, 2 ** 32 - 1))
def test_round_trip(alphabet, count, skew, seed):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(alphabet, skew))
    symbols = rng.choice(alphabet, size=count, p=probabilities)
    lengths = huffman_code_lengths(np.bincount(symbols, minlength=alphabet))
    data = huffman_encode(symbols, lengths)
    assert len(data) == (encoded_bit_count(np.bincount(symbols, minlength=alphabet), lengths) + 7) // 8
    np.testing.assert_array_equal(huffman_decode(data, count, lengths), symbols)


def test_long_codes_beyond_the_lookup_table_decode():
    counts = np.array([2 ** (20 - i) for i in range(20)] + [1])  # lengths up to 20 > TABLE_BITS
    lengths = huffman_code_lengths(counts)
    assert lengths.max() > 11
    symbols = np.repeat(np.arange(counts.size), np.minimum(counts, 40))
    np.random.default_rng(0).shuffle(symbols)
    np.testing.assert_array_equal(huffman_decode(huffman_encode(symbols, lengths), symbols.size, lengths), symbols)


def test_single_symbol_gets_one_bit():
    lengths = huffman_code_lengths(np.array([0, 7, 0]))
    np.testing.assert_array_equal(lengths, [0, 1, 0])
    data = huffman_encode(np.ones(7, dtype=int), lengths)
    assert len(data) == 1
    np.testing.assert_array_equal(huffman_decode(data, 7, lengths), np.ones(7))


def test_corrupted_streams_raise():
    lengths = huffman_code_lengths(np.array([10, 40, 5, 5]))
    symbols = np.array([0, 1, 2, 3] * 10)
    data = huffman_encode(symbols, lengths)
    with pytest.raises(WeightzipError, match="ends before"):
        huffman_decode(data[:-2], symbols.size, lengths)
    with pytest.raises(WeightzipError, match="trailing"):
        huffman_decode(data + b"\0", symbols.size, lengths)
    with pytest.raises(WeightzipError, match="not a code"):  # incomplete code: '1' is no code
        huffman_decode(b"\xff", 1, np.array([1, 0]))
    with pytest.raises(WeightzipError, match="Kraft"):
        huffman_decode(data, symbols.size, np.array([1, 1, 1, 0]))
    with pytest.raises(WeightzipError, match="cannot hold"):
        huffman_decode(b"\0", 10 ** 12, lengths)  # refused before allocating


def test_encode_refuses_symbols_without_code():
    with pytest.raises(WeightzipError, match="no code"):
        huffman_encode([2], np.array([1, 1, 0]))


@settings(max_examples=150, deadline=None)
@given(counts=st.lists(st.integers(0, 2 ** 40), min_size=2, max_size=64).filter(lambda c: sum(1 for x in c if x) >= 2),
       slack=st.integers(0, 3))
def test_tight_length_limits_stay_complete(counts, slack):
    counts = np.asarray(counts, dtype=np.int64)
    limit = max(1, int(np.count_nonzero(counts) - 1).bit_length()) + slack  # ceil(log2 used) + slack
    lengths = huffman_code_lengths(counts, max_length=limit)
    assert lengths.max() <= limit
    assert kraft_sum(lengths) == 1.0
    assert encoded_bit_count(counts, lengths) >= reference_huffman_cost(counts)
