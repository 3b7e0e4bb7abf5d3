"""Asymmetric numeral systems (ANS) entropy coding of integer symbols, via the `constriction` package.

Huffman coding spends at least one bit per symbol; ANS spends close to the empirical entropy, which
matters for skewed streams (the gap stream of a sparse layer, a cluster that holds most weights). The
model is the stream's own symbol counts (stored next to the stream by the caller), turned into
probabilities ``counts / counts.sum()`` in float64 and quantised by constriction's ``Categorical``
model with ``perfect=False`` (deterministic, so encoder and decoder build the same model).

Encoding is constriction's. Decoding is a numba kernel that reproduces constriction's decoder bit for bit
(its ``AnsCoder`` with 32-bit words, a 64-bit state and 24-bit precision, and the fixed-point CDF that
``Categorical(..., perfect=False)`` builds, see :func:`_quantized_cdf`), several times faster than
constriction's general-purpose one; the tests check the two against each other on valid and random data.

The decoder verifies what it can without a checksum: the data must be a valid ANS stream, be used up
exactly by `count` symbols, and the decoded symbols must have exactly the stored counts.
"""

from __future__ import annotations

import numba
import numpy as np

from weightzip.core.errors import WeightzipError

# The model quantises probabilities to 24 bits and gives every symbol at least one quantum.
MAX_ANS_ALPHABET = 1 << 16
PRECISION = 24
_WORD_BITS = 32
_ENCODE_CHUNK = 1 << 20  # symbols converted to int32 and encoded at a time
_TABLE_SHIFT = 12  # quantile >> 12 indexes a table of first candidate symbols (4,096 entries)

try:
    import constriction
except ImportError:  # pragma: no cover - constriction is a declared dependency
    constriction = None


def ans_available() -> bool:
    """Whether the optional `constriction` package is importable."""
    return constriction is not None


def ans_encode(symbols, counts) -> np.ndarray:
    """Compressed uint32 words of `symbols`, whose histogram must equal `counts` (>= 2 entries)."""
    counts = _checked_counts(counts)
    symbols = np.asarray(symbols).ravel()
    if symbols.size and (not np.issubdtype(symbols.dtype, np.integer) or symbols.min() < 0
                         or symbols.max() >= counts.size):
        raise WeightzipError(f"symbols must be integers in [0, {counts.size})")
    if not np.array_equal(symbol_counts(symbols, counts.size), counts):
        raise WeightzipError("ANS model counts do not match the symbols' histogram")
    if symbols.size == 0:
        return np.zeros(0, dtype=np.uint32)
    coder = constriction.stream.stack.AnsCoder()
    model = _model(counts)
    # Last chunk first: a stack coder encodes in reverse, so the words equal one encode_reverse of all symbols,
    # with an int32 copy of one chunk at a time instead of the whole stream (4 bytes per symbol).
    for end in range(symbols.size, 0, -_ENCODE_CHUNK):
        coder.encode_reverse(symbols[max(0, end - _ENCODE_CHUNK):end].astype(np.int32), model)
    return np.asarray(coder.get_compressed(), dtype=np.uint32)


def symbol_counts(symbols, alphabet: int) -> np.ndarray:
    """``np.bincount(symbols, minlength=alphabet)`` of non-negative integer symbols (int64 counts).

    One pass without a copy for 8- and 16-bit unsigned symbols (cluster indices: np.bincount first widens
    them to 64 bits, ~10 ns a symbol); other dtypes through np.bincount."""
    flat = np.asarray(symbols).ravel()
    if flat.dtype == np.uint8 or flat.dtype == np.uint16:
        counts = np.zeros(max(alphabet, 1 << (8 * flat.dtype.itemsize)), dtype=np.int64)
        _count_kernel(flat, counts)
        used = int(np.flatnonzero(counts)[-1]) + 1 if flat.size else 0
        return counts[:max(alphabet, used)].copy()
    if flat.dtype == np.uint64:  # the one index dtype bincount cannot take as is
        flat = flat.astype(np.int64)
    return np.bincount(flat, minlength=alphabet) if flat.size else np.zeros(alphabet, np.int64)


@numba.njit(cache=True, nogil=True)
def _count_kernel(symbols, counts):
    for i in range(symbols.shape[0]):
        counts[symbols[i]] += 1


def ans_decode(words, count: int, counts, *, table=None, out=None) -> np.ndarray:
    """`count` symbols from compressed `words` under the model of `counts` (see module doc for checks).

    With `table` (a 1-D array of at least ``counts.size`` entries, e.g. a codebook row) the result is
    ``table[symbols]`` instead, of the table's dtype, written by the decoder as it goes: no symbol array and
    no separate lookup pass (a decompress of cluster indices wants the centroid values, not the indices).
    `out`: a contiguous 1-D array of `count` elements of the result's dtype to decode into (and return) instead
    of a new one (a caller decoding tensor after tensor reuses its memory: no fresh pages to fault in).
    """
    counts = _checked_counts(counts)
    count = int(count)
    if count != int(counts.sum()):
        raise WeightzipError(f"ANS stream claims {count} symbols but its model counts {int(counts.sum())}")
    words = np.asarray(words, dtype=np.uint32)
    if table is None:
        table = np.arange(counts.size, dtype=_symbol_dtype(counts.size))
    else:
        table = np.ascontiguousarray(table)
        if table.ndim != 1 or table.shape[0] < counts.size:
            raise WeightzipError(f"ANS alphabet of {counts.size} symbols exceeds the {table.size}-entry "
                                 "lookup table it decodes into")
    if count == 0:
        if words.size:
            raise WeightzipError(f"ANS stream of 0 symbols has {words.size} stray words")
        return np.zeros(0, dtype=table.dtype)
    if words.size and words[-1] == 0:  # as constriction's AnsCoder: compressed data never ends in a zero word
        raise WeightzipError("invalid ANS stream: ValueError: compressed data never ends in a zero word")
    if out is None:
        out = np.empty(count, dtype=table.dtype)
    elif out.dtype != table.dtype or out.shape != (count,) or not out.flags.c_contiguous or not out.flags.writeable:
        raise WeightzipError(f"ANS output must be a writable contiguous array of {count} {table.dtype} values")
    cdf = _quantized_cdf(counts / counts.sum())
    buckets = _bucket_table(cdf)
    bits = np.dtype(f"u{table.dtype.itemsize}")  # the kernel copies bit patterns: any dtype (float16, bool) works
    histogram = np.zeros(counts.size, dtype=np.int64)
    exhausted = _decode_kernel(np.ascontiguousarray(words), cdf, buckets, table.view(bits), out.view(bits), histogram)
    if not exhausted:
        raise WeightzipError(f"ANS stream has data left over after its {count} symbols")
    if not np.array_equal(histogram, counts):
        raise WeightzipError("ANS stream decodes to symbols that do not match its stored counts")
    return out


def _checked_counts(counts) -> np.ndarray:
    if constriction is None:
        raise WeightzipError("ANS coding needs the `constriction` package (pip install constriction)")
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size < 2 or not np.issubdtype(counts.dtype, np.integer):
        raise WeightzipError("ANS model counts must be a 1-D integer array of at least 2 symbols")
    if counts.min() < 0:
        raise WeightzipError("ANS model counts must be non-negative")
    if counts.size > MAX_ANS_ALPHABET:
        raise WeightzipError(f"ANS alphabet of {counts.size} symbols exceeds {MAX_ANS_ALPHABET}")
    return counts.astype(np.int64)


def _model(counts: np.ndarray):
    total = counts.sum()
    return constriction.stream.model.Categorical(counts / total, perfect=False)


def _symbol_dtype(alphabet: int) -> np.dtype:
    return np.dtype(np.uint8 if alphabet <= 1 << 8 else np.uint16 if alphabet <= 1 << 16 else np.uint32)


@numba.njit(cache=True, nogil=True)
def _quantized_cdf(probabilities):
    """constriction's ``fast_quantized_cdf`` at 24 bits: cdf[i] = ⌊(Σ_{j<i} p_j)·scale⌋ + i, cdf[n] = 2^24.

    scale = (2^24 − n) / Σp, the sums taken left to right in float64 as constriction does, so that the
    table equals the one constriction encoded with.
    """
    n = probabilities.shape[0]
    normalization = 0.0
    for i in range(n):
        normalization += probabilities[i]
    scale = np.float64((1 << PRECISION) - n) / normalization
    cdf = np.empty(n + 1, dtype=np.int64)
    cumulative = 0.0
    for i in range(n):
        cdf[i] = np.int64(cumulative * scale) + i
        cumulative += probabilities[i]
    cdf[n] = 1 << PRECISION
    return cdf


_FREQUENCY_SHIFT = 16  # a bucket entry: symbol in bits 0-15, its frequency in bits 16-39, its cdf in 40-63


@numba.njit(cache=True, nogil=True)
def _bucket_table(cdf):
    """For each of the 4,096 buckets of quantiles (quantile >> 12): its first symbol, and when the whole bucket
    lies in that one symbol (nearly always) also the symbol's frequency and cdf, packed in one uint64, so that
    decoding a symbol takes one table load on the state's dependency chain. Frequency 0 marks a bucket that
    straddles symbols; its entry holds the bucket's last symbol instead of a cdf, and the decoder searches the
    cdf between the two."""
    n = cdf.shape[0] - 1
    size = 1 << (PRECISION - _TABLE_SHIFT)
    buckets = np.empty(size, dtype=np.uint64)
    symbol = 0
    for bucket in range(size):
        low = bucket << _TABLE_SHIFT
        while symbol < n - 1 and cdf[symbol + 1] <= low:
            symbol += 1
        entry = np.uint64(symbol)
        if cdf[symbol + 1] >= low + (1 << _TABLE_SHIFT):
            entry |= (np.uint64(cdf[symbol + 1] - cdf[symbol]) << np.uint64(_FREQUENCY_SHIFT)) \
                | (np.uint64(cdf[symbol]) << np.uint64(_FREQUENCY_SHIFT + PRECISION))
        else:  # the bucket's last symbol where the cdf would be: the search stays within the bucket
            last = symbol
            while last < n - 1 and cdf[last + 1] < low + (1 << _TABLE_SHIFT):
                last += 1
            entry |= np.uint64(last) << np.uint64(_FREQUENCY_SHIFT + PRECISION)
        buckets[bucket] = entry
    return buckets


@numba.njit(cache=True, nogil=True)
def _decode_kernel(words, cdf, buckets, table, out, histogram):
    """constriction's AnsCoder.decode: state from the last words, then per symbol quantile → symbol,
    state update and refill from the end of `words`; writes ``table[symbol]`` to `out` and counts the
    symbols in `histogram`. Returns whether the coder is empty afterwards."""
    mask = np.uint64((1 << PRECISION) - 1)
    field = np.uint64((1 << PRECISION) - 1)
    low = np.uint64(1) << np.uint64(64 - _WORD_BITS)
    position = words.shape[0]
    state = np.uint64(0)
    if position > 0:
        state = np.uint64(words[position - 1])
        position -= 1
        while position > 0:
            state = (state << np.uint64(_WORD_BITS)) | np.uint64(words[position - 1])
            position -= 1
            if state >= low:
                break
    for i in range(out.shape[0]):
        quantile = state & mask
        entry = buckets[quantile >> np.uint64(_TABLE_SHIFT)]
        frequency = (entry >> np.uint64(_FREQUENCY_SHIFT)) & field
        symbol = np.int64(entry & np.uint64(0xFFFF))
        left = entry >> np.uint64(_FREQUENCY_SHIFT + PRECISION)
        if frequency == 0:  # a bucket that straddles symbols: binary search between its first and last
            q = np.int64(quantile)
            high = np.int64(left)
            while symbol < high:
                middle = (symbol + high + 1) >> 1
                if cdf[middle] <= q:
                    symbol = middle
                else:
                    high = middle - 1
            left = np.uint64(cdf[symbol])
            frequency = np.uint64(cdf[symbol + 1]) - left
        state = (state >> np.uint64(PRECISION)) * frequency + (quantile - left)
        if state < low and position > 0:
            state = (state << np.uint64(_WORD_BITS)) | np.uint64(words[position - 1])
            position -= 1
        out[i] = table[symbol]
        histogram[symbol] += 1
    return state == 0 and position == 0
