"""Unpacking bit-packed indices with torch ops, so a palettized layer can expand its weight in the graph.

The layout is the core's (:mod:`weightzip.core.bitpack`): value ``i`` occupies stream bits
``[i*b, (i+1)*b)``, least significant bit first, stream bit ``j`` being bit ``j % 8`` of byte ``j // 8``.
Packing is done once, by the core, in NumPy; this module only reads.

Every 8 consecutive values fill exactly ``b`` bytes, so the stream is viewed as rows of ``b`` bytes and
value ``p`` of a row is read from a fixed byte window at a fixed shift (a 3-byte window covers any value
of up to 16 bits wherever it starts). Faster paths: 1, 2, 4 and 8 bits never straddle a byte, and a row
of fewer than 8 bytes is read as one int64. The byte stream must therefore be padded with zero bytes to a whole
number of rows (:func:`padded_stream`).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from weightzip.core.bitpack import pack_bits
from weightzip.core.errors import WeightzipError

MAX_UNPACK_BITS = 16


def padded_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """Core-packed `values` as a uint8 array padded to ``ceil(n / 8) * bits`` bytes (whole rows)."""
    _check_bits(bits)
    data = np.frombuffer(pack_bits(values, bits), dtype=np.uint8)
    rows = -(-int(np.size(values)) // 8)
    return np.concatenate((data, np.zeros(rows * bits - data.size, dtype=np.uint8)))


def unpack(stream: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """The first `count` values of a padded uint8 `stream` packed at `bits` bits, as int32 (torch ops only).

    int32 throughout: it is what ``index_select`` takes, and torch's uint8 kernels are slower. The result
    is a fresh tensor the caller may modify in place.
    """
    _check_bits(bits)
    mask = (1 << bits) - 1
    words = stream.to(torch.int32)
    if bits == 8:
        values = words
    elif bits in (1, 2, 4):
        shifts = torch.arange(0, 8, bits, dtype=torch.int32, device=stream.device)
        values = (words.unsqueeze(-1) >> shifts).bitwise_and_(mask)
    elif bits < 8 and sys.byteorder == "little":
        # A row of `bits` bytes, zero-padded to 8, read as one little-endian int64 holds its 8 values.
        rows = torch.nn.functional.pad(stream.reshape(-1, bits), (0, 8 - bits)).view(torch.int64)
        shifts = torch.arange(0, 8 * bits, bits, dtype=torch.int64, device=stream.device)
        values = (rows >> shifts).bitwise_and_(mask).to(torch.int32)
    else:
        rows = torch.nn.functional.pad(words.reshape(-1, bits), (0, 2))
        columns = []
        for position in range(8):
            first, shift = divmod(position * bits, 8)
            window = rows[:, first] | (rows[:, first + 1] << 8) | (rows[:, first + 2] << 16)
            columns.append((window >> shift) & mask)
        values = torch.stack(columns, dim=-1)
    return values.reshape(-1)[:count]


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_UNPACK_BITS:
        raise WeightzipError(f"palettized indices need 1 to {MAX_UNPACK_BITS} bits, got {bits!r}")
