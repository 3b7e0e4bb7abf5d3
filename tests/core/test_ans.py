"""ANS coding via constriction: near-entropy sizes, round trips, and integrity checks on decode."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightzip.core.ans import ans_decode, ans_encode
from weightzip.core.errors import WeightzipError


@settings(max_examples=60, deadline=None)
@given(alphabet=st.integers(2, 300), count=st.integers(0, 3000), seed=st.integers(0, 2 ** 32 - 1))
def test_round_trip(alphabet, count, seed):
    rng = np.random.default_rng(seed)
    symbols = rng.choice(alphabet, size=count, p=rng.dirichlet(np.full(alphabet, 0.3)))
    counts = np.bincount(symbols, minlength=alphabet)
    words = ans_encode(symbols, counts)
    np.testing.assert_array_equal(ans_decode(words, count, counts), symbols)


def test_skewed_stream_costs_far_less_than_one_bit_per_symbol():
    symbols = (np.random.default_rng(0).random(100_000) < 0.02).astype(np.int64)
    counts = np.bincount(symbols)
    p = counts / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    bits = 32 * ans_encode(symbols, counts).size / symbols.size
    assert bits < 0.2  # Huffman would need 1 bit per symbol
    assert entropy <= bits < entropy * 1.01 + 64 / symbols.size


def test_decode_checks_the_stream():
    symbols = np.array([0, 1, 1, 2, 1, 0] * 50)
    counts = np.bincount(symbols)
    words = ans_encode(symbols, counts)
    with pytest.raises(WeightzipError):  # fewer symbols requested than encoded: data left over
        ans_decode(words, symbols.size - 1, counts - np.array([0, 1, 0]))
    with pytest.raises(WeightzipError, match="claims"):
        ans_decode(words, symbols.size + 1, counts)
    flipped = words.copy()
    flipped[0] ^= 0x5A5A
    with pytest.raises(WeightzipError):
        ans_decode(flipped, symbols.size, counts)


def test_encode_needs_matching_counts():
    with pytest.raises(WeightzipError, match="histogram"):
        ans_encode([0, 1, 1], np.array([2, 1]))
    with pytest.raises(WeightzipError, match="at least 2"):
        ans_encode([0], np.array([1]))


def test_alphabet_limit():
    counts = np.zeros((1 << 16) + 1, dtype=np.int64)
    counts[[0, -1]] = 1
    with pytest.raises(WeightzipError, match="exceeds"):
        ans_encode(np.array([0, counts.size - 1]), counts)
