"""Fixed-width bit packing of unsigned integers: k cluster indices cost ceil(log2 k) bits each, not 8.

Layout (what the `.wz` format relies on): value ``i`` occupies stream bits ``[i*b, (i+1)*b)``, least
significant bit first, and stream bit ``j`` is bit ``j % 8`` of byte ``j // 8`` (LSB-first, as in
DEFLATE). The last byte is padded with zero bits; the packed size is exactly ``ceil(n*b / 8)`` bytes.

Widths of 8, 16 and 32 bits are the values' little-endian bytes. Other widths go through two numba
kernels that stream the bits through a 64-bit accumulator, one pass over the values and no
temporaries, at memory speed.
"""

from __future__ import annotations

import numba
import numpy as np

from weightzip.core.errors import WeightzipError

MAX_BIT_WIDTH = 32


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
    out = np.zeros(packed_size(flat.size, bits), dtype=np.uint8)
    _pack_kernel(flat if flat.dtype.itemsize <= 4 else flat.astype(np.uint32), bits, out)
    return out.tobytes()


@numba.njit(cache=True, nogil=True)
def _pack_kernel(values, bits, out):
    accumulator = np.uint64(0)
    pending = 0
    position = 0
    for i in range(values.shape[0]):
        accumulator |= np.uint64(values[i]) << np.uint64(pending)
        pending += bits
        while pending >= 8:
            out[position] = np.uint8(accumulator & np.uint64(0xFF))
            accumulator >>= np.uint64(8)
            pending -= 8
            position += 1
    if pending > 0:
        out[position] = np.uint8(accumulator & np.uint64(0xFF))


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
    out = np.empty(count, dtype=dtype if dtype.kind == "u" and dtype.itemsize <= 8 else np.uint64)
    _unpack_kernel(buffer, bits, out)
    return out if out.dtype == dtype else out.astype(dtype)


@numba.njit(cache=True, nogil=True)
def _unpack_kernel(buffer, bits, out):
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    accumulator = np.uint64(0)
    pending = 0
    position = 0
    for i in range(out.shape[0]):
        while pending < bits:
            accumulator |= np.uint64(buffer[position]) << np.uint64(pending)
            pending += 8
            position += 1
        out[i] = accumulator & mask
        accumulator >>= np.uint64(bits)
        pending -= bits


def _check_width(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= MAX_BIT_WIDTH:
        raise WeightzipError(f"bit width must be an integer in [0, {MAX_BIT_WIDTH}], got {bits!r}")
    return int(bits)
