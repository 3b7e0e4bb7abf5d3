"""Writing `.wz` files: encode every tensor, assemble the container, write atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from weightzip.atomic import check_output_path, write_bytes_atomically
from weightzip.atomic import write_bytes_atomically as write_atomically  # noqa: F401  (used by weightzip.torch)
from weightzip.core.errors import WeightzipError
from weightzip.core.sparse import MAX_GAP_BITS
from weightzip.format import schema
from weightzip.format.container import assemble
from weightzip.format.records import EncodeOptions, Layout, encode_tensor
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
    """

    coding: Coding | str = Coding.AUTO
    layout: Layout | str = Layout.AUTO
    gap_bits: int | None = None
    codebook_dtype: str | None = None
    deflate_header: bool = True

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
        return EncodeOptions(self.coding, self.layout, self.gap_bits, dtype)


def encode_wz(tensors: dict, metadata: dict | None = None, options: WriteOptions = WriteOptions()) -> bytes:
    """The bytes of a `.wz` file holding `tensors` (name -> ClusteredTensor or array) and `metadata`."""
    if not isinstance(tensors, dict):
        raise WeightzipError(f"tensors must be a dict of name -> ClusteredTensor or array, got {type(tensors).__name__}")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise WeightzipError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise WeightzipError(f"metadata must be JSON-serialisable (no NaN/inf): {error}") from None
    payload = PayloadBuilder()
    encode_options = options.encode_options()
    records = []
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise WeightzipError(f"tensor names must be non-empty strings, got {name!r}")
        records.append(encode_tensor(name, tensor, encode_options, payload))
    header = {"metadata": metadata, "tensors": records, "payload_length": payload.length}
    return assemble(header, payload.payload(), deflate_header=options.deflate_header)


def write_wz(path, tensors: dict, metadata: dict | None = None, *, options: WriteOptions = WriteOptions(),
             overwrite: bool = False, inputs=()) -> int:
    """Write `tensors` and `metadata` to the `.wz` file `path`; returns the file size in bytes.

    The file is written to a temporary file in the same directory and moved into place, so `path` is
    either untouched or complete. An existing `path` is refused unless `overwrite=True`; a `path` that
    is one of `inputs` (the files the model was read from) is always refused.
    """
    check_output_path(path, overwrite=overwrite, inputs=inputs)
    data = encode_wz(tensors, metadata, options)
    write_bytes_atomically(path, data, overwrite=overwrite, inputs=inputs)
    return len(data)
