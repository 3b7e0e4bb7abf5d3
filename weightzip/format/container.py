"""The `.wz` envelope: preamble, header, payload, footer (byte layout in ``weightzip/format/README.md``).

    offset  size  field
    0       8     magic  89 57 5A 46 0D 0A 1A 0A  ("\\x89WZF\\r\\n\\x1a\\n", PNG-style: catches text-mode damage)
    8       2     format major version, uint16 LE (a reader refuses a major it does not know)
    10      2     format minor version, uint16 LE (1.1 adds flag bit 1; 1.0 files stay readable)
    12      4     flags, uint32 LE (bit 0: header is zlib-deflated; bit 1: header after the payload;
                  other bits must be 0)
    16      4     H = stored header length, uint32 LE
    20      4     J = header JSON length once inflated, uint32 LE
    24      4     CRC-32 of the H stored header bytes
    then          header (H bytes) and payload (P bytes, P = the header's payload_length): header first
                  (flag bit 1 clear, as every 1.0 file), or payload first and header last (flag bit 1 set,
                  what a 1.1 writer writes: it streams sections to disk and ends with the header, which
                  indexes every section, so a reader seeks to exactly the bytes it needs)
    end-8   4     CRC-32 of every byte before it (preamble, header, payload)
    end-4   4     end marker "WZND"

All integers are little-endian. The preamble, the header and the payload are covered by the final
CRC-32; every payload section also carries its own CRC-32 in the header, and the header its own, so a
reader that reads only the header and some sections checks everything it reads. CRC-32 catches
accidental corruption (any burst up to 32 bits with certainty); it is not a signature against
deliberate tampering.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass

from weightzip.format.errors import WzFormatError

MAGIC = b"\x89WZF\r\n\x1a\n"
END_MARKER = b"WZND"
FORMAT_MAJOR = 1
FORMAT_MINOR = 1
FLAG_HEADER_DEFLATED = 1
FLAG_HEADER_AT_END = 2  # format 1.1
KNOWN_FLAGS = FLAG_HEADER_DEFLATED | FLAG_HEADER_AT_END
MAX_HEADER_BYTES = 64 << 20  # stored or inflated; a model with a million tensors fits easily

PREAMBLE = struct.Struct("<8sHHIIII")
FOOTER = struct.Struct("<I4s")
MIN_FILE_BYTES = PREAMBLE.size + FOOTER.size
_CRC_CHUNK = 1 << 20


# ---------------------------------------------------------------- sources: bytes in memory or an open file


class ByteSource:
    """A whole `.wz` file held in memory."""

    def __init__(self, data):
        self.data = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
        self.size = len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    def crc32(self, offset: int, length: int, value: int = 0) -> int:
        return zlib.crc32(self.data[offset:offset + length], value)


class FileSource:
    """A `.wz` file on disk, read with positioned reads (only the bytes asked for)."""

    def __init__(self, handle):
        self.handle = handle
        self.size = os.fstat(handle.fileno()).st_size
        self.bytes_read = 0

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise WzFormatError(f"read of [{offset}, {offset + length}) outside the {self.size}-byte file")
        chunks, position, left = [], offset, length
        while left:
            chunk = os.pread(self.handle.fileno(), min(left, 1 << 30), position)
            if not chunk:
                raise WzFormatError(f"file shrank while being read (at byte {position})")
            chunks.append(chunk)
            position += len(chunk)
            left -= len(chunk)
        self.bytes_read += length
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def crc32(self, offset: int, length: int, value: int = 0) -> int:
        for start in range(offset, offset + length, _CRC_CHUNK):
            value = zlib.crc32(self.read(start, min(_CRC_CHUNK, offset + length - start)), value)
        return value


# ---------------------------------------------------------------- writing


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of A+B from crc32(A), crc32(B) and len(B) (zlib's crc32_combine, which Python lacks):
    the writer patches the preamble last, after the payload and header have gone to disk."""
    if length2 <= 0:
        return crc1

    def times(matrix, vector):
        total, row = 0, 0
        while vector:
            if vector & 1:
                total ^= matrix[row]
            vector >>= 1
            row += 1
        return total

    def square(matrix):
        return [times(matrix, matrix[n]) for n in range(32)]

    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = square(odd)  # two zero bits
    odd = square(even)  # four zero bits
    while True:
        even = square(odd)
        if length2 & 1:
            crc1 = times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = square(even)
        if length2 & 1:
            crc1 = times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


def header_bytes(header: dict, *, deflate_header: bool = True) -> tuple[bytes, int]:
    """(stored header bytes, inflated JSON length) of `header` (JSON-serialisable)."""
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(text) > MAX_HEADER_BYTES:
        raise WzFormatError(f"header of {len(text)} bytes exceeds the format's {MAX_HEADER_BYTES}-byte limit")
    return (zlib.compress(text, 9) if deflate_header else text), len(text)


def preamble_bytes(stored: bytes, text_length: int, *, deflate_header: bool, header_at_end: bool,
                   minor: int = FORMAT_MINOR) -> bytes:
    flags = (FLAG_HEADER_DEFLATED if deflate_header else 0) | (FLAG_HEADER_AT_END if header_at_end else 0)
    return PREAMBLE.pack(MAGIC, FORMAT_MAJOR, minor, flags, len(stored), text_length, zlib.crc32(stored))


def assemble(header: dict, payload: bytes, *, deflate_header: bool = True, header_at_end: bool = True) -> bytes:
    """The complete file bytes for `header` and `payload` (by default the 1.1 layout, header last)."""
    stored, text_length = header_bytes(header, deflate_header=deflate_header)
    preamble = preamble_bytes(stored, text_length, deflate_header=deflate_header, header_at_end=header_at_end,
                              minor=FORMAT_MINOR if header_at_end else 0)
    body = b"".join((preamble, payload, stored) if header_at_end else (preamble, stored, payload))
    return body + FOOTER.pack(zlib.crc32(body), END_MARKER)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Envelope:
    """A checked envelope: the parsed header and where the payload lies in the source."""

    version: str
    header: dict
    payload_offset: int
    payload_length: int


def read_envelope(source, *, verify_file_crc: bool = True) -> Envelope:
    """Check the envelope of `source` (a ByteSource or FileSource); raises WzFormatError.

    Reads the preamble, the header and the footer; with `verify_file_crc` also every other byte, for the
    whole-file CRC-32 (a reader that reads only some sections relies on their own CRCs instead).
    """
    size = source.size
    if size == 0:
        raise WzFormatError("not a .wz file: the file is empty")
    start = source.read(0, min(size, len(MAGIC)))
    if size < len(MAGIC) and MAGIC.startswith(start):
        raise WzFormatError(f"truncated .wz file: {size} bytes")
    if size < len(MAGIC) or start != MAGIC:
        raise WzFormatError(f"not a .wz file: it does not start with the .wz magic bytes (starts with {start!r})")
    if size < MIN_FILE_BYTES:
        raise WzFormatError(f"truncated .wz file: {size} bytes, less than the {MIN_FILE_BYTES}-byte minimum")
    _, major, minor, flags, stored_length, text_length, header_crc = PREAMBLE.unpack(source.read(0, PREAMBLE.size))
    if major != FORMAT_MAJOR:
        newer = "a newer" if major > FORMAT_MAJOR else "an unknown"
        raise WzFormatError(f"unsupported .wz format version {major}.{minor} ({newer} version): "
                            f"this reader supports {FORMAT_MAJOR}.x")
    if flags & ~KNOWN_FLAGS:
        raise WzFormatError(f"unknown .wz flags 0x{flags:08x} (format version {major}.{minor}; this reader "
                            f"knows {FORMAT_MAJOR}.{FORMAT_MINOR})")
    if stored_length > MAX_HEADER_BYTES or text_length > MAX_HEADER_BYTES:
        raise WzFormatError(f"header length {max(stored_length, text_length)} exceeds the "
                            f"{MAX_HEADER_BYTES}-byte limit: corrupted file")
    if PREAMBLE.size + stored_length + FOOTER.size > size:
        raise WzFormatError(f"truncated .wz file: its header needs {PREAMBLE.size + stored_length + FOOTER.size} "
                            f"bytes, the file has {size}")
    at_end = bool(flags & FLAG_HEADER_AT_END)
    file_crc, end_marker = FOOTER.unpack(source.read(size - FOOTER.size, FOOTER.size))
    if end_marker != END_MARKER:
        raise WzFormatError("corrupted .wz file: end marker missing (truncated, or bytes appended after it)")
    header_offset = size - FOOTER.size - stored_length if at_end else PREAMBLE.size
    stored = source.read(header_offset, stored_length)
    if zlib.crc32(stored) != header_crc:
        raise WzFormatError("corrupted .wz file: header checksum mismatch")
    header = _parse_header(stored, text_length, bool(flags & FLAG_HEADER_DEFLATED))
    payload_length = header.get("payload_length")
    if isinstance(payload_length, bool) or not isinstance(payload_length, int) or payload_length < 0:
        raise WzFormatError("corrupted .wz header: payload_length missing or not a non-negative integer")
    expected = PREAMBLE.size + stored_length + payload_length + FOOTER.size
    if size < expected:
        raise WzFormatError(f"truncated .wz file: {size} bytes, its header describes {expected}")
    if size > expected:
        raise WzFormatError(f".wz file has {size - expected} unexpected bytes "
                            f"{'between its payload and header' if at_end else 'after its payload'}")
    if verify_file_crc and source.crc32(0, size - FOOTER.size) != file_crc:
        raise WzFormatError("corrupted .wz file: whole-file checksum mismatch")
    payload_offset = PREAMBLE.size if at_end else PREAMBLE.size + stored_length
    return Envelope(f"{major}.{minor}", header, payload_offset, payload_length)


def disassemble(data: bytes) -> tuple[dict, memoryview]:
    """Check the envelope of `data` and return (header dict, payload view). Raises WzFormatError."""
    envelope = read_envelope(ByteSource(data))
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    return envelope.header, view[envelope.payload_offset:envelope.payload_offset + envelope.payload_length]


def _parse_header(stored: bytes, text_length: int, deflated: bool) -> dict:
    if deflated:
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(stored, text_length + 1)  # bounded: no zip bomb
        except zlib.error as error:
            raise WzFormatError(f"corrupted .wz header: cannot inflate ({error})") from None
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise WzFormatError("corrupted .wz header: deflate stream does not end where the header ends")
    else:
        text = stored
    if len(text) != text_length:
        raise WzFormatError(f"corrupted .wz header: {len(text)} bytes of JSON, preamble says {text_length}")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise WzFormatError(f"corrupted .wz header: not valid JSON ({type(error).__name__})") from None
    if not isinstance(header, dict):
        raise WzFormatError("corrupted .wz header: not a JSON object")
    return header
