"""Asymmetric numeral systems (ANS) entropy coding of integer symbols, via the `constriction` package.

Huffman coding spends at least one bit per symbol; ANS spends close to the empirical entropy, which
matters for skewed streams (the gap stream of a sparse layer, a cluster that holds most weights). The
model is the stream's own symbol counts (stored next to the stream by the caller), turned into
probabilities ``counts / counts.sum()`` in float64 and quantised by constriction's ``Categorical``
model with ``perfect=False`` (deterministic, so encoder and decoder build the same model).

The decoder verifies what it can without a checksum: the data must be a valid ANS stream, be used up
exactly by `count` symbols, and the decoded symbols must have exactly the stored counts.
"""

from __future__ import annotations

import numpy as np

from weightzip.core.errors import WeightzipError

# The model quantises probabilities to 24 bits and gives every symbol at least one quantum.
MAX_ANS_ALPHABET = 1 << 16

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
    histogram_input = symbols if symbols.dtype.kind == "u" and symbols.dtype.itemsize <= 4 else symbols.astype(np.int64)
    if not np.array_equal(np.bincount(histogram_input, minlength=counts.size), counts):
        raise WeightzipError("ANS model counts do not match the symbols' histogram")
    if symbols.size == 0:
        return np.zeros(0, dtype=np.uint32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _model(counts))
    return np.asarray(coder.get_compressed(), dtype=np.uint32)


def ans_decode(words, count: int, counts) -> np.ndarray:
    """`count` symbols from compressed `words` under the model of `counts` (see module doc for checks)."""
    counts = _checked_counts(counts)
    count = int(count)
    if count != int(counts.sum()):
        raise WeightzipError(f"ANS stream claims {count} symbols but its model counts {int(counts.sum())}")
    words = np.asarray(words, dtype=np.uint32)
    if count == 0:
        if words.size:
            raise WeightzipError(f"ANS stream of 0 symbols has {words.size} stray words")
        return np.zeros(0, dtype=_symbol_dtype(counts.size))
    try:
        coder = constriction.stream.stack.AnsCoder(words.copy())
        symbols = coder.decode(_model(counts), count)
        exhausted = coder.is_empty()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: B036 - a Rust panic arrives as pyo3's PanicException(BaseException)
        raise WeightzipError(f"invalid ANS stream: {type(error).__name__}: {error}") from None
    if not exhausted:
        raise WeightzipError(f"ANS stream has data left over after its {count} symbols")
    symbols = np.asarray(symbols)
    if symbols.size != count or not np.array_equal(np.bincount(symbols, minlength=counts.size), counts):
        raise WeightzipError("ANS stream decodes to symbols that do not match its stored counts")
    return symbols.astype(_symbol_dtype(counts.size))


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
