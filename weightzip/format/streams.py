"""Payload sections: raw arrays and entropy-coded integer symbol streams, each self-described in JSON.

Every section descriptor has ``offset`` and ``length`` (bytes, relative to the payload start) and
``crc32``. A *symbol stream* (cluster indices, gaps) adds ``coding``, ``count`` (symbols) and
``alphabet`` (symbols lie in [0, alphabet)), and per coding:

- ``packed``: ``bits`` = ceil(log2 alphabet); the section is the values bit-packed LSB-first
  (:mod:`weightzip.core.bitpack`).
- ``huffman``: ``table_bytes``; the section is the code length of every symbol of the alphabet packed
  at 5 bits, then the canonical Huffman bitstream (:mod:`weightzip.core.huffman`).
- ``ans``: ``count_bits`` and ``table_bytes``; the section is every symbol's count packed at
  ``count_bits`` bits, then the ANS words as uint32 LE (:mod:`weightzip.core.ans`); alphabet at
  most 2**16.

With ``coding="auto"`` the writer keeps, per stream, the smallest of the applicable codings (ties go to
the simpler coding), tables included, choosing from the symbol counts (see :func:`plan_stream`) rather
than encoding every candidate; the choice is recorded in the descriptor.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from weightzip.core.ans import MAX_ANS_ALPHABET, ans_available, ans_decode, ans_encode, symbol_counts
from weightzip.core.bitpack import bit_width, pack_bits, packed_size, unpack_bits
from weightzip.core.errors import WeightzipError
from weightzip.core.huffman import (
    MAX_CODE_LENGTH,
    encoded_bit_count,
    huffman_code_lengths,
    huffman_decode,
    huffman_encode,
)
from weightzip.core.options import ParsableEnum
from weightzip.format import schema
from weightzip.format.errors import WzFormatError

LENGTH_BITS = 5  # a Huffman code length (<= 24) in the length table
MAX_ENTROPY_ALPHABET = 1 << 24  # Huffman and ANS tables list every symbol of the alphabet


class Coding(ParsableEnum):
    """How a symbol stream is stored."""

    AUTO = "auto"
    PACKED = "packed"
    HUFFMAN = "huffman"
    ANS = "ans"


STORED_CODINGS = (Coding.PACKED.value, Coding.HUFFMAN.value, Coding.ANS.value)


@dataclass
class EncodedStream:
    """A symbol stream ready for the payload: its descriptor fields (without offset/crc) and bytes."""

    fields: dict
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


class PayloadBuilder:
    """Collects sections and hands out their descriptors.

    Without a `sink` the sections are kept in memory (:meth:`payload`); with one (a binary file object)
    each section is written as soon as it is added, so the writer holds one tensor's sections at a time.
    `crc32` is the running CRC-32 of everything added.
    """

    def __init__(self, sink=None):
        self.sink = sink
        self.chunks: list[bytes] = []
        self.length = 0
        self.crc32 = 0

    def add(self, data: bytes, **fields) -> dict:
        data = bytes(data)
        crc = zlib.crc32(data)
        descriptor = {"offset": self.length, "length": len(data), "crc32": crc, **fields}
        if self.sink is None:
            self.chunks.append(data)
        else:
            self.sink.write(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        self.length += len(data)
        return descriptor

    def add_stream(self, stream: EncodedStream) -> dict:
        return self.add(stream.data, **stream.fields)

    def payload(self) -> bytes:
        if self.sink is not None:
            raise WeightzipError("this payload was streamed to its sink")
        return b"".join(self.chunks)


# ---------------------------------------------------------------- encoding


@dataclass(frozen=True)
class StreamPlan:
    """The sizes a symbol stream would take, computed from its symbol counts without encoding it.

    exact_coding / exact_size: the smallest of the codings whose size follows exactly from the counts
    (packed: ceil(count·bits/8); Huffman: its table plus Σ count·code length), None if none applies.
    ans_bound: a lower bound on the ANS encoding's size (its table plus the count × empirical entropy
    the reader also checks, less the coder's 64-bit state), None if ANS does not apply. ANS can only
    beat `exact_size` when `ans_bound` is below it: only then is it worth encoding.
    """

    exact_coding: str | None
    exact_size: int | None
    ans_bound: int | None
    lengths: np.ndarray | None = None  # the Huffman code lengths, when Huffman is the exact choice

    @property
    def lower_bound(self) -> int:
        """No encoding `coding` allows is smaller than this."""
        return min(size for size in (self.exact_size, self.ans_bound) if size is not None)

    @property
    def estimate(self) -> int:
        """The likely size: exact, or ANS's bound plus a word where ANS may win."""
        if self.ans_bound is not None and (self.exact_size is None or self.ans_bound + 8 < self.exact_size):
            return self.ans_bound + 8
        return self.exact_size


def symbol_histogram(symbols, alphabet: int) -> np.ndarray:
    """Counts of each symbol in [0, alphabet) (int64)."""
    return symbol_counts(symbols, alphabet)


def plan_stream(histogram: np.ndarray, alphabet: int, coding=Coding.AUTO) -> StreamPlan:
    """The :class:`StreamPlan` of a stream with these symbol counts under `coding` (see encode_symbols)."""
    coding = Coding.parse(coding, "coding")
    count = int(histogram.sum())
    entropy_codable = count > 0 and 2 <= alphabet <= MAX_ENTROPY_ALPHABET
    ans_possible = coding in (Coding.AUTO, Coding.ANS) and entropy_codable and ans_available() \
        and alphabet <= MAX_ANS_ALPHABET and int(histogram.max()) < 1 << 32
    if coding is Coding.ANS and ans_possible:
        exact_coding, exact_size, lengths = None, None, None
    elif coding is Coding.ANS and entropy_codable and not ans_available():
        raise WeightzipError("coding='ans' needs the `constriction` package")
    else:
        exact_coding, exact_size, lengths = "packed", packed_size(count, bit_width(alphabet)), None
        if coding in (Coding.AUTO, Coding.HUFFMAN) and entropy_codable:
            huffman_lengths = huffman_code_lengths(histogram, MAX_CODE_LENGTH)
            huffman_size = packed_size(alphabet, LENGTH_BITS) + (encoded_bit_count(histogram, huffman_lengths) + 7) // 8
            if coding is Coding.HUFFMAN or huffman_size < exact_size:  # ties keep the simpler coding
                exact_coding, exact_size, lengths = "huffman", huffman_size, huffman_lengths
    ans_bound = None
    if ans_possible:
        table = packed_size(alphabet, max(1, int(histogram.max()).bit_length()))
        words = max(0, math.ceil((ans_information_bits(histogram) - ANS_STATE_BITS) / 32))
        ans_bound = table + 4 * words
    return StreamPlan(exact_coding, exact_size, ans_bound, lengths)


def encode_symbols(symbols, alphabet: int, coding=Coding.AUTO, *, histogram: np.ndarray | None = None,
                   plan: StreamPlan | None = None) -> EncodedStream:
    """The smallest stored form of `symbols` (integers in [0, alphabet)) allowed by `coding`.

    "auto" chooses from the symbol counts: packed and Huffman sizes follow exactly from them, so only
    the smaller is encoded; ANS is encoded only when its lower bound is below that size, and kept only
    when it really is smaller (ties go to the simpler coding). The result is the smallest of the three
    encodings, tables included, without encoding the others. Forcing an entropy coder falls back to
    packing for a stream it cannot code (empty, or a one-symbol alphabet).
    """
    coding = Coding.parse(coding, "coding")
    symbols = np.asarray(symbols).ravel()
    count = int(symbols.size)
    if count and (symbols.min() < 0 or int(symbols.max()) >= alphabet):
        raise WeightzipError(f"symbols must lie in [0, {alphabet}), got [{symbols.min()}, {symbols.max()}]")
    if plan is None:
        plan = plan_stream(symbol_histogram(symbols, alphabet) if histogram is None else histogram, alphabet, coding)
    base = {"count": count, "alphabet": int(alphabet)}
    if plan.ans_bound is not None and (plan.exact_size is None or plan.ans_bound < plan.exact_size):
        histogram = symbol_histogram(symbols, alphabet) if histogram is None else histogram
        ans = _ans_stream(symbols, histogram, base)
        if plan.exact_size is None or ans.size < plan.exact_size:
            return ans
    if plan.exact_coding == "huffman":
        table = pack_bits(plan.lengths, LENGTH_BITS)
        return EncodedStream({"coding": "huffman", **base, "table_bytes": len(table)},
                             table + huffman_encode(symbols, plan.lengths))
    bits = bit_width(alphabet)
    return EncodedStream({"coding": "packed", **base, "bits": bits}, pack_bits(symbols, bits))


def _ans_stream(symbols, histogram, base):
    count_bits = max(1, int(histogram.max()).bit_length())
    table = pack_bits(histogram, count_bits)
    words = ans_encode(symbols, histogram).astype("<u4").tobytes()
    return EncodedStream({"coding": "ans", **base, "count_bits": count_bits, "table_bytes": len(table)},
                         table + words)


def raw_bytes(array: np.ndarray) -> bytes:
    """Little-endian bytes of `array` in C order."""
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True)
class PayloadReader:
    """Bounds- and checksum-checked access to the payload's sections, read from `source` (a container
    ByteSource or FileSource) where the payload starts at `offset`: only the sections asked for are read."""

    source: object
    offset: int
    length: int

    def section(self, descriptor: dict, where: str) -> bytes:
        offset, length, crc = self._bounds(descriptor, where)
        data = self.source.read(self.offset + offset, length)
        if zlib.crc32(data) != crc:
            raise WzFormatError(f"{where}: section checksum mismatch (corrupted data)")
        return data

    def check_section(self, descriptor: dict, where: str, *, each_chunk=None,
                      chunk_bytes: int = 1 << 20) -> tuple[int, int]:
        """Check a section's bounds and CRC-32 reading it in chunks, holding none of it; returns its
        (offset in the source, length). With `each_chunk`, ``each_chunk(start, chunk)`` also checks the
        contents of every `chunk_bytes`-byte chunk (the last may be shorter; `start`: its offset in the
        section) in the same pass; a WzFormatError it raises is reported only once the whole section's
        checksum matched, so a corrupted section is reported as corrupted, not as what the damage looks like."""
        offset, length, crc = self._bounds(descriptor, where)
        start = self.offset + offset
        if each_chunk is None:
            value, problem = self.source.crc32(start, length), None
        else:
            value, problem = 0, None
            for first in range(0, length, chunk_bytes):
                chunk = self.source.read(start + first, min(chunk_bytes, length - first))
                value = zlib.crc32(chunk, value)
                if problem is None:
                    try:
                        each_chunk(first, chunk)
                    except WzFormatError as error:
                        problem = error
        if value != crc:
            raise WzFormatError(f"{where}: section checksum mismatch (corrupted data)")
        if problem is not None:
            raise problem
        return start, length

    def _bounds(self, descriptor: dict, where: str) -> tuple[int, int, int]:
        offset = schema.integer(descriptor, "offset", where)
        length = schema.integer(descriptor, "length", where)
        crc = schema.integer(descriptor, "crc32", where, maximum=0xFFFFFFFF)
        if offset + length > self.length:
            raise WzFormatError(f"{where}: section [{offset}, {offset + length}) lies outside the "
                                f"{self.length}-byte payload")
        return offset, length, crc


def check_symbols_descriptor(descriptor: dict, where: str, *, count: int | None, alphabet: int,
                             max_count: int) -> int:
    """Validate a symbol stream's descriptor without decoding it; returns its symbol count."""
    schema.choice(descriptor, "coding", where, STORED_CODINGS)
    stored_count = schema.integer(descriptor, "count", where, maximum=max_count)
    if count is not None and stored_count != count:
        raise WzFormatError(f"{where}: stream holds {stored_count} symbols, expected {count}")
    stored_alphabet = schema.integer(descriptor, "alphabet", where, minimum=1)
    if stored_alphabet != alphabet:
        raise WzFormatError(f"{where}: stream alphabet {stored_alphabet}, expected {alphabet}")
    schema.integer(descriptor, "length", where)
    return stored_count


def decode_symbols(descriptor: dict, reader: PayloadReader, where: str, *, table: np.ndarray | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Symbols of a stream whose descriptor passed :func:`check_symbols_descriptor`; with `table` (1-D, at least
    the stream's alphabet long), ``table[symbols]`` instead: an ANS stream's decoder writes those values itself
    (into `out` when given: see :func:`weightzip.core.ans.ans_decode`), other codings are looked up after
    decoding (`out` unused)."""
    coding = descriptor["coding"]
    count, alphabet = descriptor["count"], descriptor["alphabet"]
    length = descriptor["length"]
    if table is not None:
        if table.ndim != 1 or table.shape[0] < alphabet:
            raise WzFormatError(f"{where}: alphabet {alphabet} exceeds the {table.size}-entry table it decodes into")
        if coding != "ans":
            return table[decode_symbols(descriptor, reader, where)]
    if coding == "packed":
        bits = schema.integer(descriptor, "bits", where, maximum=32)
        if alphabet > 1 << 32 or bits != bit_width(alphabet):
            raise WzFormatError(f"{where}: {bits}-bit packing does not match alphabet {alphabet}")
        if length != packed_size(count, bits):
            raise WzFormatError(f"{where}: {count} symbols at {bits} bits need {packed_size(count, bits)} "
                                f"bytes, section has {length}")
        symbols = unpack_bits(reader.section(descriptor, where), count, bits)
        if symbols.size and int(symbols.max()) >= alphabet:
            raise WzFormatError(f"{where}: packed symbol {int(symbols.max())} outside alphabet {alphabet}")
        return symbols
    if not 2 <= alphabet <= MAX_ENTROPY_ALPHABET:
        raise WzFormatError(f"{where}: {coding} coding needs an alphabet in [2, {MAX_ENTROPY_ALPHABET}]")
    table_bytes = schema.integer(descriptor, "table_bytes", where, maximum=length)
    if coding == "huffman":
        if table_bytes != packed_size(alphabet, LENGTH_BITS):
            raise WzFormatError(f"{where}: Huffman table of {table_bytes} bytes, alphabet {alphabet} "
                                f"needs {packed_size(alphabet, LENGTH_BITS)}")
        if count > 8 * (length - table_bytes):  # every code has at least one bit
            raise WzFormatError(f"{where}: {length - table_bytes} bytes cannot hold {count} Huffman codes")
        data = reader.section(descriptor, where)
        lengths = unpack_bits(data[:table_bytes], alphabet, LENGTH_BITS)
        return _wrapped(huffman_decode, where, data[table_bytes:], count, lengths)
    if alphabet > MAX_ANS_ALPHABET:
        raise WzFormatError(f"{where}: ANS coding needs an alphabet of at most {MAX_ANS_ALPHABET}")
    count_bits = schema.integer(descriptor, "count_bits", where, minimum=1, maximum=32)
    if table_bytes != packed_size(alphabet, count_bits):
        raise WzFormatError(f"{where}: ANS table of {table_bytes} bytes, alphabet {alphabet} at "
                            f"{count_bits} bits needs {packed_size(alphabet, count_bits)}")
    if (length - table_bytes) % 4:
        raise WzFormatError(f"{where}: ANS data is not a whole number of 32-bit words")
    if not ans_available():
        raise WzFormatError(f"{where}: ANS-coded stream needs the `constriction` package to decode")
    data = reader.section(descriptor, where)
    histogram = unpack_bits(data[:table_bytes], alphabet, count_bits, dtype=np.int64)
    if int(histogram.sum()) != count:
        raise WzFormatError(f"{where}: ANS model counts {int(histogram.sum())} symbols, stream claims {count}")
    words = np.frombuffer(data[table_bytes:], dtype="<u4")
    needed = ans_information_bits(histogram)
    if needed > 32 * words.size + ANS_STATE_BITS:
        raise WzFormatError(f"{where}: {words.size} ANS words cannot hold {count} symbols of this model "
                            f"(their information content is {needed:.0f} bits)")
    return _wrapped(ans_decode, where, words, count, histogram, table=table, out=None if table is None else out)


ANS_STATE_BITS = 64  # the coder's state, flushed with the words: the most a stream can hold beyond its words


def ans_information_bits(histogram: np.ndarray) -> float:
    """A lower bound on the bits any ANS encoding of a stream with these symbol counts takes.

    Whatever the coder's quantised model q, the stream's cost Σ count·(−log2 q) is at least its
    empirical entropy (Gibbs' inequality). This bounds the symbol count by the data's length, so a short
    stream cannot make the decoder produce 2^28 symbols (a constant stream, of entropy 0, legitimately
    takes no words at all).
    """
    counts = histogram[histogram > 0].astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(-(counts * np.log2(counts / total)).sum())


def decode_raw(descriptor: dict, reader: PayloadReader, where: str, dtype: np.dtype, count: int) -> np.ndarray:
    """`count` little-endian values of `dtype` from a raw section of exactly that size."""
    length = schema.integer(descriptor, "length", where)
    if length != count * dtype.itemsize:
        raise WzFormatError(f"{where}: {count} {dtype} values need {count * dtype.itemsize} bytes, "
                            f"section has {length}")
    data = reader.section(descriptor, where)
    values = np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype)
    if dtype == np.bool_ and np.any(np.frombuffer(data, dtype=np.uint8) > 1):
        raise WzFormatError(f"{where}: boolean data holds bytes other than 0 and 1")
    return values


def _wrapped(decoder, where, *args, **keywords):
    try:
        return decoder(*args, **keywords)
    except WzFormatError:
        raise
    except WeightzipError as error:
        raise WzFormatError(f"{where}: {error}") from None
