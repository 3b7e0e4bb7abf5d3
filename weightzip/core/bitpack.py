"""Fixed-width bit packing of unsigned integers: k cluster indices cost ceil(log2 k) bits each, not 8.

Layout (what the `.wz` format relies on): value ``i`` occupies stream bits ``[i*b, (i+1)*b)``, least
significant bit first, and stream bit ``j`` is bit ``j % 8`` of byte ``j // 8`` (LSB-first, as in
DEFLATE). The last byte is padded with zero bits; the packed size is exactly ``ceil(n*b / 8)`` bytes.

Packing and unpacking are vectorised with ``np.unpackbits``/``np.packbits``, processed in chunks of a
multiple of 8 values so that every chunk starts on a byte boundary and the temporary bit arrays stay
small (about 32 bytes per value of a chunk).
"""

from __future__ import annotations

import numpy as np

from weightzip.core.errors import WeightzipError

MAX_BIT_WIDTH = 32
_CHUNK_VALUES = 1 << 18  # multiple of 8: chunks start on byte boundaries


def bit_width(k: int) -> int:
    """Bits needed to store an index into k entries: ceil(log2 k) (0 for k = 1: nothing to store)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise WeightzipError(f"alphabet size must be an integer >= 1, got {k!r}")
    return int(k - 1).bit_length()


def packed_size(count: int, bits: int) -> int:
    """Bytes taken by `count` values packed at `bits` bits each."""
    return (int(count) * int(bits) + 7) // 8


def unsigned_dtype(bits: int) -> np.dtype:
    """Smallest unsigned dtype holding `bits`-bit values."""
    if bits <= 8:
        return np.dtype(np.uint8)
    if bits <= 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def pack_bits(values, bits: int) -> bytes:
    """Pack non-negative integers below ``2**bits`` at `bits` bits each (see module doc for the layout)."""
    bits = _check_width(bits)
    array = np.asarray(values)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise WeightzipError(f"can only bit-pack integers, got dtype {array.dtype}")
    flat = array.ravel()
    if flat.size and (flat.min() < 0 or (int(flat.max()) >> bits) != 0):
        raise WeightzipError(
            f"values must lie in [0, {2 ** bits - 1}] to be packed at {bits} bits; "
            f"got range [{flat.min()}, {flat.max()}]"
        )
    if bits == 0 or flat.size == 0:
        return b""
    if bits in (8, 16, 32):
        return flat.astype(f"<u{bits // 8}", copy=False).tobytes()
    words = flat.astype("<u4", copy=False)
    out = bytearray()
    for start in range(0, flat.size, _CHUNK_VALUES):
        chunk = words[start:start + _CHUNK_VALUES]
        as_bits = np.unpackbits(chunk.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
        out += np.packbits(as_bits[:, :bits], bitorder="little").tobytes()
    return bytes(out)


def unpack_bits(data, count: int, bits: int, dtype=None) -> np.ndarray:
    """Inverse of :func:`pack_bits`: `count` values of `bits` bits from `data` (exactly the packed size).

    Returned as `dtype` (default: the smallest unsigned dtype for `bits`). Raises if `data` does not
    have exactly ``ceil(count*bits/8)`` bytes.
    """
    bits = _check_width(bits)
    count = int(count)
    if count < 0:
        raise WeightzipError(f"count must be >= 0, got {count}")
    buffer = np.frombuffer(data, dtype=np.uint8)
    expected = packed_size(count, bits)
    if buffer.size != expected:
        raise WeightzipError(
            f"{count} values at {bits} bits need {expected} bytes, got {buffer.size}"
        )
    dtype = unsigned_dtype(bits) if dtype is None else np.dtype(dtype)
    if bits == 0:
        return np.zeros(count, dtype=dtype)
    if bits in (8, 16, 32):
        return buffer.view(f"<u{bits // 8}").astype(dtype)
    word_bytes = 1 if bits <= 8 else 2 if bits <= 16 else 4
    out = np.empty(count, dtype=dtype)
    for start in range(0, count, _CHUNK_VALUES):
        stop = min(count, start + _CHUNK_VALUES)
        first_byte, last_byte = start * bits // 8, packed_size(stop, bits)
        as_bits = np.unpackbits(buffer[first_byte:last_byte], bitorder="little")
        as_bits = as_bits[: (stop - start) * bits].reshape(-1, bits)
        padded = np.zeros((stop - start, 8 * word_bytes), dtype=np.uint8)
        padded[:, :bits] = as_bits
        words = np.packbits(padded, axis=1, bitorder="little").view(f"<u{word_bytes}").ravel()
        out[start:stop] = words
    return out


def _check_width(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= MAX_BIT_WIDTH:
        raise WeightzipError(f"bit width must be an integer in [0, {MAX_BIT_WIDTH}], got {bits!r}")
    return int(bits)
