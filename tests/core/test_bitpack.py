"""Fixed-width bit packing: exact sizes, the documented LSB-first layout, round trips, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightzip.core.bitpack import bit_width, pack_bits, packed_size, unpack_bits
from weightzip.core.errors import WeightzipError


@pytest.mark.parametrize("k, bits", [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (16, 4), (17, 5), (256, 8),
                                     (257, 9), (65536, 16), (65537, 17), (2 ** 32, 32)])
def test_bit_width_is_ceil_log2(k, bits):
    assert bit_width(k) == bits


def test_layout_is_lsb_first_within_and_across_bytes():
    # 1 -> bits 0-1, 0 -> bits 2-3, 3 -> bits 4-5, 2 -> bits 6-7 of byte 0; 1 -> bits 0-1 of byte 1.
    assert pack_bits([1, 0, 3, 2, 1], 2) == bytes([0b10_11_00_01, 0b01])
    # A 5-bit value straddling a byte boundary: 0b10110 at bits 5..9.
    assert pack_bits([0, 0b10110], 5) == bytes([0b110_00000, 0b10])


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(0, 32), count=st.integers(0, 300), seed=st.integers(0, 2 ** 32 - 1))
def test_round_trip_any_width(bits, count, seed):
    values = np.random.default_rng(seed).integers(0, 2 ** bits, size=count, dtype=np.uint64)
    data = pack_bits(values, bits)
    assert len(data) == packed_size(count, bits) == (count * bits + 7) // 8
    decoded = unpack_bits(data, count, bits)
    assert decoded.dtype.itemsize * 8 >= max(bits, 8)
    np.testing.assert_array_equal(decoded, values)


def test_round_trip_spans_several_chunks():
    values = np.random.default_rng(0).integers(0, 2 ** 13, size=(1 << 18) * 2 + 37)
    np.testing.assert_array_equal(unpack_bits(pack_bits(values, 13), values.size, 13), values)


def test_padding_bits_are_zero():
    data = pack_bits([7], 3)
    assert data == bytes([7])


@pytest.mark.parametrize("values, bits", [([4], 2), ([-1], 4), ([1 << 32], 32)])
def test_values_out_of_range_are_refused(values, bits):
    with pytest.raises(WeightzipError, match="must lie in"):
        pack_bits(np.asarray(values, dtype=np.int64), bits)


def test_floats_and_bad_widths_are_refused():
    with pytest.raises(WeightzipError, match="integers"):
        pack_bits(np.array([1.0]), 4)
    for bits in (-1, 33, 2.5, True):
        with pytest.raises(WeightzipError, match="bit width"):
            pack_bits([0], bits)


def test_unpack_needs_the_exact_byte_count():
    data = pack_bits([1, 2, 3], 5)
    with pytest.raises(WeightzipError, match="need 2 bytes"):
        unpack_bits(data + b"\0", 3, 5)
    with pytest.raises(WeightzipError, match="need 2 bytes"):
        unpack_bits(data[:1], 3, 5)


@pytest.mark.parametrize("bits", [1, 3, 4, 7, 9, 12, 17, 24, 31])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int64])
def test_layout_equals_a_bit_string_reference(bits, dtype):
    """Every value's bits, least significant first, concatenated and cut into LSB-first bytes."""
    high = min(2 ** bits, np.iinfo(dtype).max + 1)
    values = np.random.default_rng(bits).integers(0, high, size=1001).astype(dtype)
    stream = ((values.astype(np.uint64)[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    assert pack_bits(values, bits) == np.packbits(stream.ravel(), bitorder="little").tobytes()
    np.testing.assert_array_equal(unpack_bits(pack_bits(values, bits), values.size, bits, dtype=np.int64), values)
