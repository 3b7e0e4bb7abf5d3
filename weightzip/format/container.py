"""The `.wz` envelope: preamble, header, payload, footer (byte layout in ``weightzip/format/README.md``).

    offset  size  field
    0       8     magic  89 57 5A 46 0D 0A 1A 0A  ("\\x89WZF\\r\\n\\x1a\\n", PNG-style: catches text-mode damage)
    8       2     format major version, uint16 LE (a reader refuses a major it does not know)
    10      2     format minor version, uint16 LE (additions a version-1 reader may ignore)
    12      4     flags, uint32 LE (bit 0: header is zlib-deflated; other bits must be 0)
    16      4     H = stored header length, uint32 LE
    20      4     J = header JSON length once inflated, uint32 LE
    24      4     CRC-32 of the H stored header bytes
    28      H     header: UTF-8 JSON (deflated when flag bit 0 is set)
    28+H    P     payload: the sections the header points to, back to back, no padding
    end-8   4     CRC-32 of every byte before it (preamble, header, payload)
    end-4   4     end marker "WZND"

All integers are little-endian. The preamble, the header and the payload are covered by the final
CRC-32; every payload section also carries its own CRC-32 in the header. CRC-32 catches accidental
corruption (any burst up to 32 bits with certainty); it is not a signature against deliberate tampering.
"""

from __future__ import annotations

import json
import struct
import zlib

from weightzip.format.errors import WzFormatError

MAGIC = b"\x89WZF\r\n\x1a\n"
END_MARKER = b"WZND"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
FLAG_HEADER_DEFLATED = 1
KNOWN_FLAGS = FLAG_HEADER_DEFLATED
MAX_HEADER_BYTES = 64 << 20  # stored or inflated; a model with a million tensors fits easily

PREAMBLE = struct.Struct("<8sHHIIII")
FOOTER = struct.Struct("<I4s")
MIN_FILE_BYTES = PREAMBLE.size + FOOTER.size


def assemble(header: dict, payload: bytes, *, deflate_header: bool = True) -> bytes:
    """The complete file bytes for `header` (JSON-serialisable) and `payload`."""
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(text) > MAX_HEADER_BYTES:
        raise WzFormatError(f"header of {len(text)} bytes exceeds the format's {MAX_HEADER_BYTES}-byte limit")
    stored = zlib.compress(text, 9) if deflate_header else text
    flags = FLAG_HEADER_DEFLATED if deflate_header else 0
    preamble = PREAMBLE.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, flags, len(stored), len(text),
                             zlib.crc32(stored))
    body = b"".join((preamble, stored, payload))
    return body + FOOTER.pack(zlib.crc32(body), END_MARKER)


def disassemble(data: bytes) -> tuple[dict, memoryview]:
    """Check the envelope of `data` and return (header dict, payload view). Raises WzFormatError."""
    size = len(data)
    if size == 0:
        raise WzFormatError("not a .wz file: the file is empty")
    if size < len(MAGIC) and MAGIC.startswith(bytes(data)):
        raise WzFormatError(f"truncated .wz file: {size} bytes")
    if size < len(MAGIC) or bytes(data[: len(MAGIC)]) != MAGIC:
        raise WzFormatError(f"not a .wz file: it does not start with the .wz magic bytes "
                            f"(starts with {bytes(data[:8])!r})")
    if size < MIN_FILE_BYTES:
        raise WzFormatError(f"truncated .wz file: {size} bytes, less than the {MIN_FILE_BYTES}-byte minimum")
    _, major, minor, flags, stored_length, text_length, header_crc = PREAMBLE.unpack_from(data, 0)
    if major != FORMAT_MAJOR:
        newer = "a newer" if major > FORMAT_MAJOR else "an unknown"
        raise WzFormatError(f"unsupported .wz format version {major}.{minor} ({newer} version): "
                            f"this reader supports {FORMAT_MAJOR}.x")
    if flags & ~KNOWN_FLAGS:
        raise WzFormatError(f"unknown .wz flags 0x{flags:08x} (format version {major}.{minor})")
    if stored_length > MAX_HEADER_BYTES or text_length > MAX_HEADER_BYTES:
        raise WzFormatError(f"header length {max(stored_length, text_length)} exceeds the "
                            f"{MAX_HEADER_BYTES}-byte limit: corrupted file")
    header_end = PREAMBLE.size + stored_length
    if header_end + FOOTER.size > size:
        raise WzFormatError(f"truncated .wz file: its header needs {header_end + FOOTER.size} bytes, "
                            f"the file has {size}")
    stored = bytes(data[PREAMBLE.size:header_end])
    if zlib.crc32(stored) != header_crc:
        raise WzFormatError("corrupted .wz file: header checksum mismatch")
    header = _parse_header(stored, text_length, bool(flags & FLAG_HEADER_DEFLATED))
    payload_length = header.get("payload_length")
    if isinstance(payload_length, bool) or not isinstance(payload_length, int) or payload_length < 0:
        raise WzFormatError("corrupted .wz header: payload_length missing or not a non-negative integer")
    expected = header_end + payload_length + FOOTER.size
    if size < expected:
        raise WzFormatError(f"truncated .wz file: {size} bytes, its header describes {expected}")
    if size > expected:
        raise WzFormatError(f".wz file has {size - expected} unexpected bytes after its payload")
    file_crc, end_marker = FOOTER.unpack_from(data, size - FOOTER.size)
    if end_marker != END_MARKER:
        raise WzFormatError("corrupted .wz file: end marker missing")
    if zlib.crc32(memoryview(data)[: size - FOOTER.size]) != file_crc:
        raise WzFormatError("corrupted .wz file: whole-file checksum mismatch")
    return header, memoryview(data)[header_end:header_end + payload_length]


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
