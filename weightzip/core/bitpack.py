"""Fixed-width bit packing of unsigned integers: k cluster indices cost ceil(log2 k) bits each, not 8.

Layout (what the `.wz` format relies on): value ``i`` occupies stream bits ``[i*b, (i+1)*b)``, least
significant bit first, and stream bit ``j`` is bit ``j % 8`` of byte ``j // 8`` (LSB-first, as in
DEFLATE). The last byte is padded with zero bits; the packed size is exactly ``ceil(n*b / 8)`` bytes.

Everything is vectorised and processed in chunks of a multiple of 8 values (chunks start on byte
boundaries, temporaries stay small). Packing below 8 bits builds each block of 8 values (exactly
`b` bytes) as one uint64; wider widths go through ``np.unpackbits``/``np.packbits``. Unpacking gathers
an unaligned little-endian uint64 at each value's first byte, then shifts and masks.
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
    if bits < 8:
        return _pack_narrow(flat, bits)
    words = flat.astype("<u4", copy=False)
    out = bytearray()
    for start in range(0, flat.size, _CHUNK_VALUES):
        chunk = words[start:start + _CHUNK_VALUES]
        as_bits = np.unpackbits(chunk.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
        out += np.packbits(as_bits[:, :bits], bitorder="little").tobytes()
    return bytes(out)


def _pack_narrow(flat: np.ndarray, bits: int) -> bytes:
    """bits < 8: every 8 values fill exactly `bits` bytes; build each block as one uint64."""
    out = bytearray()
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    for start in range(0, flat.size, _CHUNK_VALUES):
        chunk = flat[start:start + _CHUNK_VALUES].astype(np.uint64)
        blocks = np.zeros(-(-chunk.size // 8) * 8, dtype=np.uint64)
        blocks[:chunk.size] = chunk
        words = np.bitwise_or.reduce(blocks.reshape(-1, 8) << shifts, axis=1).astype("<u8")
        out += words.view(np.uint8).reshape(-1, 8)[:, :bits].tobytes()
    return bytes(out[: packed_size(flat.size, bits)])


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
    # Gather, for every value, the 8 bytes starting at its first byte as one little-endian uint64
    # (an unaligned, overlapping view of a padded copy), then shift and mask: 39 bits at most needed.
    padded = np.zeros(buffer.size + 8, dtype=np.uint8)
    padded[:buffer.size] = buffer
    words = np.ndarray(shape=(buffer.size + 1,), dtype="<u8", buffer=padded, strides=(1,))
    mask = np.uint64((1 << bits) - 1)
    out = np.empty(count, dtype=dtype)
    for start in range(0, count, _CHUNK_VALUES):
        offsets = np.arange(start, min(count, start + _CHUNK_VALUES), dtype=np.uint64) * np.uint64(bits)
        out[start:start + offsets.size] = (words[offsets >> np.uint64(3)] >> (offsets & np.uint64(7))) & mask
    return out


def _check_width(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= MAX_BIT_WIDTH:
        raise WeightzipError(f"bit width must be an integer in [0, {MAX_BIT_WIDTH}], got {bits!r}")
    return int(bits)
