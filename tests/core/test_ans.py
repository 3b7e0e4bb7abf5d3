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


def constriction_decode(words, count, counts):
    """constriction's own decoder, as weightzip used it before its numba kernel: (symbols, is_empty)."""
    import constriction

    coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32).copy())
    model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)
    symbols = np.asarray(coder.decode(model, count))
    return symbols, coder.is_empty()


@settings(max_examples=60, deadline=None)
@given(alphabet=st.sampled_from([2, 3, 16, 200, 256, 4099, 1 << 16]), count=st.integers(1, 2000),
       skew=st.floats(0.05, 3.0), seed=st.integers(0, 2 ** 32 - 1))
def test_decoder_equals_constriction_on_valid_and_random_words(alphabet, count, skew, seed):
    """The numba decoder must read every stream exactly as constriction does, valid or not."""
    rng = np.random.default_rng(seed)
    symbols = rng.choice(alphabet, size=count, p=rng.dirichlet(np.full(alphabet, skew)))
    counts = np.bincount(symbols, minlength=alphabet)
    words = ans_encode(symbols, counts)
    np.testing.assert_array_equal(ans_decode(words, count, counts), constriction_decode(words, count, counts)[0])
    noise = rng.integers(1, 2 ** 32, size=max(1, words.size), dtype=np.uint64).astype(np.uint32)
    expected, empty = constriction_decode(noise, count, counts)
    matches = empty and np.array_equal(np.bincount(expected, minlength=alphabet), counts)
    if matches:
        np.testing.assert_array_equal(ans_decode(noise, count, counts), expected)
    else:
        with pytest.raises(WeightzipError):
            ans_decode(noise, count, counts)
    from weightzip.core import ans  # the symbols themselves, before the integrity checks

    cdf = ans._quantized_cdf(counts / counts.sum())
    raw = np.empty(count, dtype=np.int64)
    histogram = np.zeros(alphabet, dtype=np.int64)
    exhausted = ans._decode_kernel(noise, cdf, ans._bucket_table(cdf), np.arange(alphabet, dtype=np.int64), raw,
                                   histogram)
    np.testing.assert_array_equal(histogram, np.bincount(expected, minlength=alphabet))
    assert empty or not exhausted  # ours is also stricter: no words may be left
    np.testing.assert_array_equal(raw, expected)


def test_a_stream_of_only_the_first_symbol_is_empty_and_decodes():
    counts = np.array([50, 0, 0])
    words = ans_encode(np.zeros(50, dtype=np.int64), counts)
    np.testing.assert_array_equal(ans_decode(words, 50, counts), np.zeros(50))


@settings(max_examples=40, deadline=None)
@given(alphabet=st.sampled_from([2, 3, 16, 256, 4099]), count=st.integers(0, 3000), skew=st.floats(0.05, 3.0),
       dtype=st.sampled_from(["float16", "float32", "float64", "int8", "bool"]), seed=st.integers(0, 2 ** 32 - 1))
def test_decoding_into_a_table_equals_decoding_then_looking_up(alphabet, count, skew, dtype, seed):
    """The fused decode (table[symbol] written by the decoder) gives exactly the unfused lookup's values, bit
    patterns included (NaN payloads, -0.0), for a table longer than the alphabet too."""
    rng = np.random.default_rng(seed)
    symbols = rng.choice(alphabet, size=count, p=rng.dirichlet(np.full(alphabet, skew)))
    counts = np.bincount(symbols, minlength=alphabet)
    words = ans_encode(symbols, counts)
    patterns = rng.integers(0, 256, size=(alphabet + 3) * np.dtype(dtype).itemsize, dtype=np.uint8)
    table = patterns.view(dtype) if dtype != "bool" else patterns.view(np.bool_) & True
    values = ans_decode(words, count, counts, table=table)
    expected = table[ans_decode(words, count, counts)]
    assert values.dtype == table.dtype
    np.testing.assert_array_equal(values.view(np.uint8), expected.view(np.uint8))


def test_decoding_into_a_table_refuses_an_alphabet_larger_than_the_table():
    symbols = np.array([0, 1, 2, 3] * 25)
    counts = np.bincount(symbols)
    words = ans_encode(symbols, counts)
    with pytest.raises(WeightzipError, match="exceeds the 3-entry lookup table"):
        ans_decode(words, symbols.size, counts, table=np.zeros(3, np.float32))
    with pytest.raises(WeightzipError, match="lookup table"):
        ans_decode(words, symbols.size, counts, table=np.zeros((2, 2), np.float32))


def test_decoding_corrupt_words_into_a_table_raises():
    rng = np.random.default_rng(1)
    symbols = rng.integers(0, 16, size=5000)
    counts = np.bincount(symbols, minlength=16)
    words = ans_encode(symbols, counts)
    words[words.size // 2] ^= 0x00FF00FF
    with pytest.raises(WeightzipError, match="ANS stream"):
        ans_decode(words, symbols.size, counts, table=np.linspace(-1, 1, 16, dtype=np.float32))


def test_decoding_into_a_given_output_array():
    symbols = np.array([0, 1, 2, 3, 3, 3] * 20)
    counts = np.bincount(symbols)
    words = ans_encode(symbols, counts)
    table = np.array([-1.5, 0.0, 2.0, 7.25], np.float32)
    out = np.empty(symbols.size, np.float32)
    assert ans_decode(words, symbols.size, counts, table=table, out=out) is out
    np.testing.assert_array_equal(out, table[symbols])
    for wrong in (np.empty(symbols.size, np.float64), np.empty(symbols.size + 1, np.float32),
                  np.empty(2 * symbols.size, np.float32)[::2]):
        with pytest.raises(WeightzipError, match="ANS output"):
            ans_decode(words, symbols.size, counts, table=table, out=wrong)
