"""Reading `.wz` files: envelope checks, then record checks, then decoding; any problem is a WzFormatError.

Order of defence: the envelope (magic, version, lengths, header and whole-file CRC-32) rejects foreign,
truncated and corrupted files before the header is trusted; every record is then checked for types,
ranges and size consistency (a section's length must match what its shape and coding imply, and all
tensors together may not exceed `max_elements`) before anything is allocated; decoding finally checks
each section's CRC-32 and the streams' own consistency (valid codes, exact lengths, indices in range).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weightzip.core.cluster import ClusteredTensor
from weightzip.core.sizing import SizeReport, TensorSize
from weightzip.format import schema
from weightzip.format.container import PREAMBLE, disassemble
from weightzip.format.errors import WzFormatError
from weightzip.format.records import TensorRecord, check_record, decode_record
from weightzip.format.streams import PayloadReader

DEFAULT_MAX_ELEMENTS = 1 << 28  # 268 M weights (VGG-16 has 138 M): 1 GiB of float32 once decoded


def read_wz(path, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[dict, dict]:
    """(tensors, metadata) of a `.wz` file: ClusteredTensor or ndarray per name, exactly as written."""
    return decode_wz(_read_bytes(path), max_elements=max_elements, source=str(path))


def decode_wz(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS, source: str = "<bytes>") -> tuple[dict, dict]:
    """Like :func:`read_wz`, from the file's bytes."""
    metadata, records, reader = _checked(data, max_elements, source)
    tensors = {}
    for record in records:
        try:
            tensors[record.name] = decode_record(record, reader)
        except WzFormatError as error:
            raise WzFormatError(f"{source}: {error}") from None
    return tensors, metadata


def read_wz_dense(path, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[dict[str, np.ndarray], dict]:
    """(dense arrays, metadata): every clustered tensor decoded to its centroid values."""
    tensors, metadata = read_wz(path, max_elements=max_elements)
    return decode_dense(tensors), metadata


def decode_dense(tensors: dict) -> dict[str, np.ndarray]:
    """Each ClusteredTensor replaced by its decoded weights; arrays passed through."""
    return {name: _decoded(t) if isinstance(t, ClusteredTensor) else t for name, t in tensors.items()}


def _decoded(tensor: ClusteredTensor) -> np.ndarray:
    if tensor.indices.size == 0:  # nothing to look up (and no per-channel layout to build for long empty axes)
        return np.zeros(tensor.shape, dtype=tensor.codebook.dtype)
    return tensor.decode()


def inspect_table(path, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> SizeReport:
    """Per-tensor size table of a `.wz` file from its actual section sizes (the file is checked, not decoded)."""
    return inspect_bytes(_read_bytes(path), max_elements=max_elements, source=str(path))


def inspect_bytes(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS, source: str = "<bytes>") -> SizeReport:
    """Like :func:`inspect_table`, from the file's bytes."""
    _, records, _ = _checked(data, max_elements, source)
    return SizeReport([_size_row(record) for record in records], len(data), source)


def decode_tensor(data: bytes, name: str, *, max_elements: int = DEFAULT_MAX_ELEMENTS, source: str = "<bytes>"):
    """The one tensor `name` of a `.wz` file's bytes (ClusteredTensor or ndarray), bit-exact."""
    _, records, reader = _checked(data, max_elements, source)
    for record in records:
        if record.name == name:
            try:
                return decode_record(record, reader)
            except WzFormatError as error:
                raise WzFormatError(f"{source}: {error}") from None
    raise WzFormatError(f"{source}: no tensor named {name!r}")


@dataclass(frozen=True)
class WzSummary:
    """What `weightzip inspect` shows: the file's format version, its metadata and its size table."""

    version: str
    metadata: dict
    report: SizeReport


def inspect_wz(path, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> WzSummary:
    """Format version, metadata and per-tensor size table of a `.wz` file (checked, not decoded)."""
    data = _read_bytes(path)
    metadata, records, _ = _checked(data, max_elements, str(path))
    major, minor = PREAMBLE.unpack_from(data, 0)[1:3]
    return WzSummary(f"{major}.{minor}", metadata, SizeReport([_size_row(r) for r in records], len(data), str(path)))


def read_metadata(path) -> dict:
    """The metadata of a `.wz` file (the file is checked, not decoded)."""
    return _checked(_read_bytes(path), DEFAULT_MAX_ELEMENTS, str(path))[0]


def _read_bytes(path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise WzFormatError(f"{path}: no such file")
    return path.read_bytes()


def _checked(data: bytes, max_elements: int, source: str) -> tuple[dict, list[TensorRecord], PayloadReader]:
    try:
        header, payload = disassemble(data)
        metadata = schema.field(header, "metadata", "header")
        if not isinstance(metadata, dict):
            raise WzFormatError("header: metadata must be a JSON object")
        raw_records = schema.field(header, "tensors", "header")
        if not isinstance(raw_records, list):
            raise WzFormatError("header: tensors must be a list")
        records, total, names = [], 0, set()
        for index, raw in enumerate(raw_records):
            record = check_record(raw, index, max_elements=max_elements - total, payload_length=len(payload))
            if record.name in names:
                raise WzFormatError(f"tensor '{record.name}' appears twice")
            names.add(record.name)
            total += record.nominal
            records.append(record)
    except WzFormatError as error:
        raise WzFormatError(f"{source}: {error}") from None
    return metadata, records, PayloadReader(payload)


def _size_row(record: TensorRecord) -> TensorSize:
    raw = record.raw
    if record.layout == "dense":
        value = raw["indices"] if record.kind == "clustered" else raw["data"]
        gaps = None
    else:
        value, gaps = raw["values"], raw["gaps"]
    return TensorSize(
        name=record.name, kind=record.kind, shape=record.shape, dtype_bits=8 * record.dtype.itemsize,
        layout=record.layout, nonzero=record.nonzero, entries=record.entries,
        codebook_bytes=raw["codebook"]["length"] if record.kind == "clustered" else 0,
        value_bytes=value["length"], index_bytes=0 if gaps is None else gaps["length"],
        value_coding=value.get("coding", "raw"), index_coding="" if gaps is None else gaps["coding"],
        clusters=raw.get("clusters"),
    )
