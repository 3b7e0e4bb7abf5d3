"""Writing `.wz` files: encode every tensor, assemble the container, write atomically."""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from weightzip.atomic import WRITEBACK_BYTES, atomic_output, check_output_path, early_writeback
from weightzip.atomic import write_bytes_atomically as write_atomically  # noqa: F401  (used by weightzip.torch)
from weightzip.core.errors import WeightzipError
from weightzip.core.sparse import MAX_GAP_BITS
from weightzip.format import schema
from weightzip.format.container import END_MARKER, FOOTER, PREAMBLE, crc32_combine, header_bytes, preamble_bytes
from weightzip.format.records import EncodedRecord, EncodeOptions, Layout, append_encoded, encode_tensor
from weightzip.format.streams import Coding, PayloadBuilder


@dataclass(frozen=True)
class WriteOptions:
    """How `write_wz` encodes tensors.

    coding: symbol streams (cluster indices, gaps): "auto" (smallest of packed/Huffman/ANS, per
        stream), or force "packed", "huffman" or "ans" (forcing an entropy coder falls back to
        packing for a stream it cannot code: empty, or a one-symbol alphabet).
    layout: "auto" (dense or sparse, whichever is smaller, per tensor), "dense", or "sparse"
        (relative indices, Deep Compression's pruned storage).
    gap_bits: relative-index width for sparse tensors (paper: 8 for conv, 5 for fc); None chooses
        per tensor.
    codebook_dtype: store codebooks as this float dtype (e.g. "float16": smaller, lossy: the read
        codebook is then float16); None keeps each codebook's dtype.
    deflate_header: zlib-compress the JSON header.
    keep_clustered: store every clustered tensor as codebook + indices; by default (False) one whose codebook
        and indices would take more bytes than its decoded values is stored as those values (an array record).
    """

    coding: Coding | str = Coding.AUTO
    layout: Layout | str = Layout.AUTO
    gap_bits: int | None = None
    codebook_dtype: str | None = None
    deflate_header: bool = True
    keep_clustered: bool = False

    def __post_init__(self):
        object.__setattr__(self, "coding", Coding.parse(self.coding, "coding"))
        object.__setattr__(self, "layout", Layout.parse(self.layout, "layout"))
        if self.gap_bits is not None and (isinstance(self.gap_bits, bool) or not isinstance(self.gap_bits, int)
                                          or not 1 <= self.gap_bits <= MAX_GAP_BITS):
            raise WeightzipError(f"gap_bits must be None or an integer in [1, {MAX_GAP_BITS}], got {self.gap_bits!r}")
        if self.codebook_dtype is not None and str(np.dtype(self.codebook_dtype)) not in schema.FLOAT_DTYPES:
            raise WeightzipError(f"codebook_dtype must be one of {schema.FLOAT_DTYPES}, got {self.codebook_dtype!r}")

    def encode_options(self) -> EncodeOptions:
        dtype = None if self.codebook_dtype is None else np.dtype(self.codebook_dtype)
        return EncodeOptions(self.coding, self.layout, self.gap_bits, dtype, self.keep_clustered)


def encode_wz(tensors, metadata: dict | None = None, options: WriteOptions = WriteOptions()) -> bytes:
    """The bytes of a `.wz` file holding `tensors` (name -> ClusteredTensor or array) and `metadata`."""
    buffer = io.BytesIO()
    _write_stream(buffer, tensors, metadata, options)
    return buffer.getvalue()


def write_wz(path, tensors, metadata: dict | None = None, *, options: WriteOptions = WriteOptions(),
             overwrite: bool = False, inputs=()) -> int:
    """Write `tensors` and `metadata` to the `.wz` file `path`; returns the file size in bytes.

    `tensors` is a dict of name -> ClusteredTensor or array (or an ``EncodedRecord`` made with the same
    options by ``format.records.encode_record``, e.g. in a worker process), or any iterable of (name, tensor) pairs (e.g.
    a generator that loads one tensor at a time): each tensor's sections go to disk as soon as it is
    encoded, and the header (the index of every section) follows them, so the writer never holds more
    than one encoded tensor. The file is written to a temporary file in the same directory and moved into
    place, so `path` is either untouched or complete. An existing `path` is refused unless
    `overwrite=True`; a `path` that is one of `inputs` (the files the model was read from) is always refused.
    """
    check_output_path(path, overwrite=overwrite, inputs=inputs)
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as temporary:
        with open(temporary, "wb") as handle:
            return _write_stream(handle, tensors, metadata, options)


def _write_stream(handle, tensors, metadata, options: WriteOptions) -> int:
    """Write a whole `.wz` file (format 1.1: payload, then header) to the seekable binary `handle`."""
    metadata = _checked_metadata(metadata)
    if not isinstance(options, WriteOptions):
        raise WeightzipError(f"options must be a WriteOptions, got {type(options).__name__}")
    handle.write(bytes(PREAMBLE.size))  # patched once the header is known
    payload = PayloadBuilder(sink=handle)
    encode_options = options.encode_options()
    records, names, written = [], set(), 0
    for name, tensor in _named_tensors(tensors):
        if not isinstance(name, str) or not name:
            raise WeightzipError(f"tensor names must be non-empty strings, got {name!r}")
        if name in names:
            raise WeightzipError(f"tensor name {name!r} given twice")
        names.add(name)
        if isinstance(tensor, EncodedRecord):  # encoded elsewhere (weightzip.torch.parallel) with these options
            if tensor.record.get("name") != name:
                raise WeightzipError(f"encoded record of {tensor.record.get('name')!r} given as {name!r}")
            records.append(append_encoded(tensor, payload))
        else:
            records.append(encode_tensor(name, tensor, encode_options, payload))
        if payload.sink is not None and PREAMBLE.size + payload.length - written >= WRITEBACK_BYTES:
            written = early_writeback(handle, written)  # the final fsync then finds little left
    header = {"metadata": metadata, "tensors": records, "payload_length": payload.length}
    stored, text_length = header_bytes(header, deflate_header=options.deflate_header)
    handle.write(stored)
    preamble = preamble_bytes(stored, text_length, deflate_header=options.deflate_header, header_at_end=True)
    body_crc = crc32_combine(zlib.crc32(preamble), zlib.crc32(stored, payload.crc32), payload.length + len(stored))
    handle.write(FOOTER.pack(body_crc, END_MARKER))
    handle.seek(0)
    handle.write(preamble)
    return PREAMBLE.size + payload.length + len(stored) + FOOTER.size


def _checked_metadata(metadata) -> dict:
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise WeightzipError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise WeightzipError(f"metadata must be JSON-serialisable (no NaN/inf): {error}") from None
    return metadata


def _named_tensors(tensors):
    if isinstance(tensors, Mapping):
        return tensors.items()
    if isinstance(tensors, (str, bytes)) or not isinstance(tensors, Iterable):
        raise WeightzipError(f"tensors must be a dict of name -> ClusteredTensor or array (or an iterable of "
                             f"(name, tensor) pairs), got {type(tensors).__name__}")
    return (_pair(item) for item in tensors)


def _pair(item):
    if not isinstance(item, tuple) or len(item) != 2:
        raise WeightzipError(f"tensors given as an iterable must yield (name, tensor) pairs, got {item!r:.80}")
    return item
