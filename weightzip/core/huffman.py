"""Canonical, length-limited Huffman coding of integer symbols (Deep Compression, stage 3).

- :func:`huffman_code_lengths`: optimal code lengths from symbol counts (Moffat–Katajainen in-place
  algorithm on the sorted counts, O(n log n) for the sort), then limited to `max_length` bits with the
  JPEG (ITU T.81, Annex K.3) adjustment, which keeps the code complete. Unused symbols get length 0.
- :func:`canonical_codes`: the canonical code of those lengths: codes ordered by (length, symbol), each
  the previous plus one, shifted left when the length grows. A decoder needs only the lengths.
- :func:`huffman_encode` / :func:`huffman_decode`: the bitstream, codes written most significant bit
  first, bytes filled from bit 7 down; the last byte is padded with zero bits. Both are numba kernels
  (a bit-writer, and a table-driven decoder: one lookup of `TABLE_BITS` bits resolves every code up to
  that length, longer codes fall back to the canonical first-code comparison), so no Python loop runs
  per symbol. The decoder checks the stream: an invalid code, a stream that ends early or trailing
  bytes raise :class:`~weightzip.core.errors.WeightzipError`.

Huffman cannot spend less than 1 bit per symbol; for very skewed streams (sparse gaps, a dominant
cluster) see :mod:`weightzip.core.ans`.
"""

from __future__ import annotations

import numba
import numpy as np

from weightzip.core.errors import WeightzipError

MAX_CODE_LENGTH = 24  # the decoder peeks 32-bit words: length + 7 bits of misalignment must fit
TABLE_BITS = 11

_OK, _INVALID_CODE, _TRUNCATED = 0, 1, 2


def huffman_code_lengths(counts, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Code length in bits for each symbol 0..len(counts)-1 (0 for symbols of count 0).

    Optimal (minimum Σ count·length) when no limit binds; otherwise limited to `max_length` bits by the
    JPEG adjustment. A lone used symbol gets length 1.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or (counts.size and not np.issubdtype(counts.dtype, np.integer)):
        raise WeightzipError(f"counts must be a 1-D integer array, got {counts.dtype} of shape {counts.shape}")
    if counts.size and counts.min() < 0:
        raise WeightzipError("counts must be non-negative")
    if not 1 <= max_length <= MAX_CODE_LENGTH:
        raise WeightzipError(f"max_length must be in [1, {MAX_CODE_LENGTH}], got {max_length}")
    lengths = np.zeros(counts.size, dtype=np.uint8)
    used = np.flatnonzero(counts)
    if used.size > (1 << max_length):
        raise WeightzipError(f"{used.size} distinct symbols cannot have codes of at most {max_length} bits")
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1
        return lengths
    # Most frequent first (ties: lower symbol first), so that sorted lengths map onto them in order.
    order = used[np.lexsort((used, -counts[used].astype(np.int64)))]
    ascending = counts[order][::-1].astype(np.int64)  # Moffat-Katajainen wants ascending weights
    depth = _minimum_redundancy_lengths(ascending.copy())[::-1]  # now ascending lengths, order's order
    per_length = np.bincount(depth, minlength=max(int(depth.max()), max_length) + 1).astype(np.int64)
    if depth.max() > max_length:
        per_length = _limit_lengths(per_length, max_length)
    lengths[order] = np.repeat(np.arange(per_length.size), per_length).astype(np.uint8)
    return lengths


def kraft_sum(lengths) -> float:
    """Σ 2^-length over used symbols: 1 for a complete prefix code, at most 1 for any prefix code."""
    lengths = np.asarray(lengths, dtype=np.int64)
    used = lengths[lengths > 0]
    return float(np.sum(np.ldexp(1.0, -used)))


def canonical_codes(lengths) -> np.ndarray:
    """Canonical code (as an integer of `length` bits) for each symbol; 0 where the length is 0.

    Raises if any length exceeds :data:`MAX_CODE_LENGTH` or the lengths violate Kraft's inequality
    (no prefix code has them).
    """
    lengths = _checked_lengths(lengths)
    per_length = np.bincount(lengths, minlength=MAX_CODE_LENGTH + 1).astype(np.int64)
    per_length[0] = 0
    next_code = _first_codes(per_length)
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    ordered_lengths = lengths[order].astype(np.int64)
    group_start = np.searchsorted(ordered_lengths, ordered_lengths, side="left")
    rank = np.arange(order.size) - group_start
    codes = np.zeros(lengths.size, dtype=np.uint32)
    codes[order] = (next_code[ordered_lengths] + rank).astype(np.uint32)
    return codes


def encoded_bit_count(counts, lengths) -> int:
    """Bits of the encoded stream for symbols with these counts under these code lengths."""
    return int(np.dot(np.asarray(counts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)))


def huffman_encode(symbols, lengths) -> bytes:
    """Bitstream of `symbols` under the canonical code of `lengths` (see module doc for bit order)."""
    lengths = _checked_lengths(lengths)
    codes = canonical_codes(lengths)
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return b""
    if not np.issubdtype(symbols.dtype, np.integer) or symbols.min() < 0 or symbols.max() >= lengths.size:
        raise WeightzipError(f"symbols must be integers in [0, {lengths.size}), got {symbols.dtype}")
    if symbols.dtype.itemsize > 4 or symbols.dtype.kind != "u":
        symbols = symbols.astype(np.uint32)
    histogram = np.bincount(symbols, minlength=lengths.size)
    if np.any(histogram[lengths == 0]):
        raise WeightzipError("a symbol to encode has no code (its length is 0)")
    total_bits = encoded_bit_count(histogram, lengths)
    out = np.zeros((total_bits + 7) // 8, dtype=np.uint8)
    _encode_kernel(symbols, codes.astype(np.uint64), lengths.astype(np.int64), out)
    return out.tobytes()


def huffman_decode(data, count: int, lengths) -> np.ndarray:
    """`count` symbols decoded from `data` (exactly the encoder's bytes) under the code of `lengths`.

    Returns the smallest unsigned dtype that holds the alphabet. Raises on an invalid code, a stream
    shorter than `count` symbols, or bytes left over after them.
    """
    lengths = _checked_lengths(lengths)
    count = int(count)
    if count < 0:
        raise WeightzipError(f"count must be >= 0, got {count}")
    buffer = np.frombuffer(data, dtype=np.uint8)
    out_dtype = np.uint8 if lengths.size <= 1 << 8 else np.uint16 if lengths.size <= 1 << 16 else np.uint32
    if count == 0:
        if buffer.size:
            raise WeightzipError(f"Huffman stream of 0 symbols has {buffer.size} stray bytes")
        return np.zeros(0, dtype=out_dtype)
    used = np.flatnonzero(lengths)
    if used.size == 0:
        raise WeightzipError("Huffman code has no symbols, cannot decode a non-empty stream")
    if count > 8 * buffer.size:  # every code has at least one bit: refuse before allocating
        raise WeightzipError(f"{buffer.size} bytes cannot hold {count} Huffman-coded symbols")
    codes = canonical_codes(lengths)
    table_bits = min(TABLE_BITS, int(lengths.max()))
    table_symbol, table_length = _decode_table(lengths, codes, used, table_bits)
    per_length = np.bincount(lengths, minlength=MAX_CODE_LENGTH + 2).astype(np.int64)
    per_length[0] = 0
    first_code = _first_codes(per_length)
    by_code = used[np.lexsort((used, lengths[used]))].astype(np.int64)
    first_index = np.concatenate(([0], np.cumsum(per_length)[:-1])).astype(np.int64)
    out = np.empty(count, dtype=out_dtype)
    status, used_bits = _decode_kernel(buffer, count, table_bits, table_symbol, table_length,
                                       first_code, per_length, first_index, by_code, int(lengths.max()), out)
    if status == _INVALID_CODE:
        raise WeightzipError("Huffman stream contains a bit pattern that is not a code")
    if status == _TRUNCATED:
        raise WeightzipError(f"Huffman stream ends before its {count} symbols")
    if (used_bits + 7) // 8 != buffer.size:
        raise WeightzipError(f"Huffman stream has {buffer.size - (used_bits + 7) // 8} trailing bytes")
    return out


def _checked_lengths(lengths) -> np.ndarray:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
        raise WeightzipError("code lengths must be a 1-D integer array")
    if lengths.size and (lengths.min() < 0 or lengths.max() > MAX_CODE_LENGTH):
        raise WeightzipError(f"code lengths must lie in [0, {MAX_CODE_LENGTH}]")
    lengths = lengths.astype(np.int64)
    used = lengths[lengths > 0]
    # Exact Kraft check in integers: Σ 2^(L - l) <= 2^L.
    if int(np.sum(np.left_shift(np.int64(1), MAX_CODE_LENGTH - used))) > 1 << MAX_CODE_LENGTH:
        raise WeightzipError("code lengths violate Kraft's inequality: no prefix code has them")
    return lengths


def _first_codes(per_length: np.ndarray) -> np.ndarray:
    """Canonical first code of each length, given how many codes each length has (index 0 unused)."""
    first = np.zeros(per_length.size, dtype=np.int64)
    code = 0
    for length in range(1, per_length.size):
        code = (code + int(per_length[length - 1])) << 1
        first[length] = code
    return first


def _decode_table(lengths, codes, used, table_bits):
    """Symbol and length for every `table_bits`-bit window whose prefix is a code of <= table_bits."""
    size = 1 << table_bits
    table_symbol = np.zeros(size, dtype=np.int64)
    table_length = np.zeros(size, dtype=np.int64)
    short = used[lengths[used] <= table_bits]
    spans = np.left_shift(1, table_bits - lengths[short])
    starts = codes[short].astype(np.int64) << (table_bits - lengths[short])
    slots = np.repeat(starts - np.cumsum(spans) + spans, spans) + np.arange(int(spans.sum()))
    table_symbol[slots] = np.repeat(short, spans)
    table_length[slots] = np.repeat(lengths[short], spans)
    return table_symbol, table_length


@numba.njit(cache=True)
def _minimum_redundancy_lengths(a):
    """Moffat & Katajainen (1995): in place, ascending weights -> code lengths (longest first)."""
    n = a.shape[0]
    a[0] += a[1]
    root = 0
    leaf = 2
    for nxt in range(1, n - 1):
        if leaf >= n or a[root] < a[leaf]:
            a[nxt] = a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] = a[leaf]
            leaf += 1
        if leaf >= n or (root < nxt and a[root] < a[leaf]):
            a[nxt] += a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] += a[leaf]
            leaf += 1
    a[n - 2] = 0
    for nxt in range(n - 3, -1, -1):
        a[nxt] = a[a[nxt]] + 1
    available = 1
    used = 0
    depth = 0
    root = n - 2
    nxt = n - 1
    while available > 0:
        while root >= 0 and a[root] == depth:
            used += 1
            root -= 1
        while available > used:
            a[nxt] = depth
            nxt -= 1
            available -= 1
        available = 2 * used
        depth += 1
        used = 0
    return a


def _limit_lengths(per_length: np.ndarray, max_length: int) -> np.ndarray:
    """JPEG Annex K.3: move the deepest leaf pairs up until no code exceeds `max_length` (Kraft kept = 1)."""
    bits = per_length.copy()
    for depth in range(bits.size - 1, max_length, -1):
        while bits[depth] > 0:
            shallower = depth - 2
            while bits[shallower] == 0:
                shallower -= 1
            bits[depth] -= 2
            bits[depth - 1] += 1
            bits[shallower + 1] += 2
            bits[shallower] -= 1
    return bits[: max_length + 1]


@numba.njit(cache=True, nogil=True)
def _encode_kernel(symbols, codes, lengths, out):
    """Codes MSB-first into a 64-bit accumulator, flushed 32 bits at a time (codes have <= 24 bits)."""
    accumulator = np.uint64(0)
    pending = 0
    position = 0
    for i in range(symbols.shape[0]):
        s = symbols[i]
        length = lengths[s]
        accumulator = (accumulator << np.uint64(length)) | codes[s]
        pending += length
        if pending >= 32:
            pending -= 32
            word = accumulator >> np.uint64(pending)
            out[position] = np.uint8((word >> np.uint64(24)) & np.uint64(0xFF))
            out[position + 1] = np.uint8((word >> np.uint64(16)) & np.uint64(0xFF))
            out[position + 2] = np.uint8((word >> np.uint64(8)) & np.uint64(0xFF))
            out[position + 3] = np.uint8(word & np.uint64(0xFF))
            position += 4
            accumulator &= (np.uint64(1) << np.uint64(pending)) - np.uint64(1)
    while pending >= 8:
        pending -= 8
        out[position] = np.uint8((accumulator >> np.uint64(pending)) & np.uint64(0xFF))
        position += 1
    if pending > 0:
        out[position] = np.uint8((accumulator << np.uint64(8 - pending)) & np.uint64(0xFF))


@numba.njit(cache=True, nogil=True)
def _peek(buffer, bit_position, width):
    """`width` (<= 25) bits of `buffer` from `bit_position`, MSB-first, zeros past the end."""
    byte = bit_position >> 3
    word = 0
    for j in range(4):
        word <<= 8
        if byte + j < buffer.shape[0]:
            word |= buffer[byte + j]
    return (word >> (32 - (bit_position & 7) - width)) & ((1 << width) - 1)


@numba.njit(cache=True, nogil=True)
def _decode_kernel(buffer, count, table_bits, table_symbol, table_length,
                   first_code, per_length, first_index, by_code, max_length, out):
    """Table-driven decoding from a 64-bit bit buffer refilled a byte at a time (zeros past the end)."""
    total_bits = buffer.shape[0] * 8
    size = buffer.shape[0]
    table_mask = (np.uint64(1) << np.uint64(table_bits)) - np.uint64(1)
    accumulator = np.uint64(0)
    available = 0  # bits of the accumulator not yet consumed (its low `available` bits)
    next_byte = 0
    position = 0
    for i in range(count):
        while available <= 56:
            byte = buffer[next_byte] if next_byte < size else 0
            accumulator = (accumulator << np.uint64(8)) | np.uint64(byte)
            available += 8
            next_byte += 1
        window = (accumulator >> np.uint64(available - table_bits)) & table_mask
        length = table_length[window]
        if length > 0:
            symbol = table_symbol[window]
        else:
            symbol = -1
            for candidate in range(table_bits + 1, max_length + 1):
                code = np.int64((accumulator >> np.uint64(available - candidate))
                                & ((np.uint64(1) << np.uint64(candidate)) - np.uint64(1)))
                offset = code - first_code[candidate]
                if 0 <= offset < per_length[candidate]:
                    symbol = by_code[first_index[candidate] + offset]
                    length = candidate
                    break
            if symbol < 0:
                return _INVALID_CODE, position
        position += length
        if position > total_bits:
            return _TRUNCATED, position
        available -= length
        accumulator &= (np.uint64(1) << np.uint64(available)) - np.uint64(1)
        out[i] = symbol
    return _OK, position
