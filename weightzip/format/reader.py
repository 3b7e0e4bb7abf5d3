"""Reading `.wz` files: envelope checks, then record checks, then decoding; any problem is a WzFormatError.

Order of defence: the envelope (magic, version, lengths, header CRC-32, and for whole-file reads the
whole-file CRC-32) rejects foreign, truncated and corrupted files before the header is trusted; every
record is then checked for types, ranges and size consistency (a section must lie inside the payload and
its length match what its shape and coding imply, and all tensors together may not exceed
`max_elements`) before anything is allocated; decoding finally checks each section's CRC-32 and the
streams' own consistency (valid codes, exact lengths, indices in range).

Files are read with positioned reads: :func:`read_tensor`, :func:`inspect_table` and
:func:`read_metadata` read the preamble, the header (the index of every section) and, for one tensor,
its sections only; :func:`read_wz` reads everything once (whole-file CRC included) without holding the
file's bytes twice.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weightzip.core.bitpack import bit_width, packed_size
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.sizing import SizeReport, TensorSize
from weightzip.format import schema
from weightzip.format.container import ByteSource, FileSource, read_envelope
from weightzip.format.errors import WzFormatError
from weightzip.format.records import TensorRecord, check_record, decode_record, decode_record_values
from weightzip.format.streams import PayloadReader, decode_raw

DEFAULT_MAX_ELEMENTS = 1 << 28  # 268 M weights (VGG-16 has 138 M): 1 GiB of float32 once decoded


@dataclass(frozen=True)
class WzSummary:
    """What `weightzip inspect` shows: the file's format version, its metadata and its size table."""

    version: str
    metadata: dict
    report: SizeReport


@dataclass(frozen=True)
class TensorInfo:
    """What the header says of one tensor (checked, nothing decoded): enough to match it with a model."""

    name: str
    kind: str  # "clustered" | "array"
    shape: tuple[int, ...]
    dtype: np.dtype  # the decoded dtype (a clustered tensor's codebook dtype)
    layout: str  # "dense" | "sparse"
    clusters: int | None  # k of a clustered tensor
    axis: int | None  # codebook axis of a clustered tensor (None: one codebook)
    group_size: int | None


@dataclass(frozen=True)
class PackedIndices:
    """A clustered tensor as stored when its indices are bit-packed densely: the codebook and the packed
    stream itself (value ``i`` at bits ``[i*bits, (i+1)*bits)``, LSB first, C order; the layout of
    :mod:`weightzip.core.bitpack`), so a runtime can keep the indices packed without unpacking them.
    Every index is checked to lie below `clusters`."""

    codebook: np.ndarray  # (groups, k)
    bits: int
    data: bytes | None  # None when read with ``load=False``: checked, not kept (map it from `file_offset`)
    shape: tuple[int, ...]
    axis: int | None
    group_size: int
    file_offset: int | None = None  # where the stream starts in the file (a runtime may memory-map it from there)
    length: int = 0  # bytes of the stream
    codebook_offset: int | None = None  # where the codebook's raw little-endian values start in the file


class WzFile:
    """An open `.wz` file whose envelope and header were checked; tensors are read one at a time with
    positioned reads (each section checked by its own CRC-32), so holding one costs only its own bytes.

        with open_wz("model.wz") as wz:
            wz.metadata, wz.tensors["fc.weight"].shape, wz.read("fc.bias"), wz.read_packed("fc.weight")
    """

    def __init__(self, path, *, max_elements: int | None = None, per_tensor: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise WzFormatError(f"{self.path}: no such file")
        self._handle = open(self.path, "rb")
        try:
            self.metadata, records, self._reader, self.version = _checked_source(
                FileSource(self._handle), max_elements, str(self.path), verify_file_crc=False, per_tensor=per_tensor)
        except BaseException:
            self._handle.close()
            raise
        self._records = {record.name: record for record in records}
        self.tensors: dict[str, TensorInfo] = {name: _info(record) for name, record in self._records.items()}

    def read(self, name: str):
        """The tensor `name` (ClusteredTensor or ndarray), bit-exact."""
        return _decode_record(self._record(name), self._reader, str(self.path))

    def read_values(self, name: str, *, buffer: np.ndarray | None = None) -> np.ndarray:
        """The tensor `name` as its decoded values (a clustered tensor's centroid per weight), bit-exact: what
        ``read(name)`` followed by ``.decode()`` gives, decoded straight into values where the record allows
        (see :func:`weightzip.format.records.decode_record_values`; with `buffer`, a 1-D uint8 array, the result
        may share its memory: valid until the buffer is used again)."""
        try:
            return decode_record_values(self._record(name), self._reader, buffer=buffer)
        except WzFormatError as error:
            raise WzFormatError(f"{self.path}: {error}") from None

    def read_packed(self, name: str, *, load: bool = True) -> PackedIndices | None:
        """The clustered tensor `name` with its indices still bit-packed, or None when they are not stored
        densely bit-packed (Huffman/ANS-coded or sparse: :meth:`read` decodes those).

        ``load=False`` checks the stream (CRC-32 and alphabet) reading it once, in chunks, and keeps none of it
        (``data`` is None): a runtime that maps the file from ``file_offset`` never holds the whole stream in
        memory, so loading peaks at one chunk, not at the largest tensor's indices."""
        record = self._record(name)
        raw, where = record.raw, f"{self.path}: {record.where}"
        if record.kind != "clustered" or record.layout != "dense" or raw["indices"]["coding"] != "packed":
            return None
        descriptor, k = raw["indices"], raw["clusters"]
        bits = descriptor.get("bits")
        if bits != bit_width(k) or descriptor["length"] != packed_size(record.elements, bits):
            raise WzFormatError(f"{where} indices: {bits}-bit packing of {record.elements} symbols does not "
                                f"match alphabet {k} and {descriptor['length']} bytes")
        if load:
            data = self._reader.section(descriptor, f"{where} indices")
            if bits and k != 1 << bits:
                _check_packed_below(data, record.elements, bits, k, f"{where} indices")
        elif bits and k != 1 << bits:  # one pass: each chunk goes through the CRC and the alphabet check
            data = None
            step = _CHECK_CHUNK_BYTES // bits * bits  # whole groups of 8 values

            def check_chunk(start: int, chunk: bytes) -> None:
                _check_packed_below(chunk, record.elements - start * 8 // bits, bits, k, f"{where} indices")

            self._reader.check_section(descriptor, f"{where} indices", each_chunk=check_chunk, chunk_bytes=step)
        else:
            data = None
            self._reader.check_section(descriptor, f"{where} indices")
        groups = raw["groups"]
        codebook = _decode_record_codebook(record, self._reader, where).reshape(groups, k)
        return PackedIndices(codebook, bits, data, record.shape, raw["axis"], raw["group_size"],
                             self._reader.offset + descriptor["offset"], descriptor["length"],
                             self._reader.offset + raw["codebook"]["offset"])

    def array_offset(self, name: str) -> int | None:
        """Where the array tensor `name`'s values start in the file, stored raw (little-endian, C order, the
        record's dtype and shape), after checking the section's CRC-32 reading it in chunks (none of it kept):
        a runtime may memory-map them from there instead of holding a copy. None when the tensor is not an
        array stored densely, or is boolean (its bytes must be checked to be 0 or 1: :meth:`read` does)."""
        record = self._record(name)
        if record.kind != "array" or record.layout != "dense" or record.dtype == np.bool_:
            return None
        offset, _ = self._reader.check_section(record.raw["data"], f"{self.path}: {record.where} data")
        return offset

    def _record(self, name: str) -> TensorRecord:
        if name not in self._records:
            raise WzFormatError(f"{self.path}: no tensor named {name!r}")
        return self._records[name]

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "WzFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_wz(path, *, max_elements: int | None = None, per_tensor: bool = False) -> WzFile:
    """The `.wz` file `path` opened for reading tensor by tensor (see :class:`WzFile`). `max_elements` bounds
    the tensors' elements together, or with `per_tensor` each tensor alone (for a caller that holds one decoded
    tensor at a time, e.g. streaming a 1 B-weight file into safetensors)."""
    return WzFile(path, max_elements=max_elements, per_tensor=per_tensor)


def _info(record: TensorRecord) -> TensorInfo:
    raw, clustered = record.raw, record.kind == "clustered"
    return TensorInfo(record.name, record.kind, tuple(record.shape), record.dtype, record.layout,
                      raw["clusters"] if clustered else None, raw["axis"] if clustered else None,
                      raw["group_size"] if clustered else None)


def _decode_record_codebook(record: TensorRecord, reader: PayloadReader, where: str) -> np.ndarray:
    raw = record.raw
    return decode_raw(raw["codebook"], reader, f"{where} codebook", record.dtype, raw["groups"] * raw["clusters"])


_CHECK_CHUNK_BYTES = 1 << 20


def _check_packed_below(data: bytes, count: int, bits: int, k: int, where: str) -> None:
    """Raise unless each of the `count` values packed in `data` is below `k` (NumPy only, chunk by chunk:
    no per-weight array of the whole tensor, no compiler start-up)."""
    step = _CHECK_CHUNK_BYTES // bits * bits  # whole groups of 8 values
    weights = (1 << np.arange(bits, dtype=np.uint16))
    for start in range(0, len(data), step):
        chunk = np.frombuffer(data, dtype=np.uint8, count=min(step, len(data) - start), offset=start)
        values = np.unpackbits(chunk, bitorder="little")
        values = values[: (values.size // bits) * bits].reshape(-1, bits).astype(np.uint16) @ weights
        values = values[: max(0, count - start * 8 // bits)]
        if values.size and int(values.max()) >= k:
            raise WzFormatError(f"{where}: packed symbol {int(values.max())} outside alphabet {k}")


def read_wz(path, *, max_elements: int | None = None) -> tuple[dict, dict]:
    """(tensors, metadata) of a `.wz` file: ClusteredTensor or ndarray per name, exactly as written."""
    with _open(path) as source:
        return _decode_all(source, max_elements, str(path))


def decode_wz(data: bytes, *, max_elements: int | None = None, source: str = "<bytes>") -> tuple[dict, dict]:
    """Like :func:`read_wz`, from the file's bytes."""
    return _decode_all(ByteSource(data), max_elements, source)


def read_tensor(path, name: str, *, max_elements: int | None = None):
    """The one tensor `name` of a `.wz` file (ClusteredTensor or ndarray), bit-exact, reading only the
    file's preamble, header and that tensor's sections (each checked by its own CRC-32)."""
    with _open(path) as source:
        return _decode_one(source, name, max_elements, str(path))


def iter_tensors(path, names=None, *, max_elements: int | None = None):
    """(name, tensor) of each record of a `.wz` file (or of those in `names`), in file order, decoded one at a
    time from the open file through the header's section index: memory holds one tensor, not the file.
    Each section read is checked by its own CRC-32 (the whole-file CRC is not: that needs every byte)."""
    wanted = None if names is None else set(names)
    with _open(path) as source:
        _, records, reader, _ = _checked_source(source, max_elements, str(path), verify_file_crc=False)
        for record in records:
            if wanted is None or record.name in wanted:
                yield record.name, _decode_record(record, reader, str(path))


def decode_tensor(data: bytes, name: str, *, max_elements: int | None = None, source: str = "<bytes>"):
    """Like :func:`read_tensor`, from the file's bytes."""
    return _decode_one(ByteSource(data), name, max_elements, source)


def read_wz_dense(path, *, max_elements: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
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


def inspect_table(path, *, max_elements: int | None = None) -> SizeReport:
    """Per-tensor size table of a `.wz` file from its actual section sizes (header only: nothing decoded)."""
    return inspect_wz(path, max_elements=max_elements).report


def inspect_bytes(data: bytes, *, max_elements: int | None = None, source: str = "<bytes>") -> SizeReport:
    """Like :func:`inspect_table`, from the file's bytes."""
    return _summary(ByteSource(data), max_elements, source).report


def inspect_wz(path, *, max_elements: int | None = None) -> WzSummary:
    """Format version, metadata and per-tensor size table of a `.wz` file, from its envelope and header
    only (header and section descriptors checked; the payload is neither read nor decoded)."""
    with _open(path) as source:
        return _summary(source, max_elements, str(path))


def read_metadata(path) -> dict:
    """The metadata of a `.wz` file (envelope and header checked, payload not read: each tensor's shape bounded
    by the element limit alone, not their sum, so a 1 B-weight file's metadata can be read to stream it)."""
    with _open(path) as source:
        return _checked_source(source, DEFAULT_MAX_ELEMENTS, str(path), verify_file_crc=False, per_tensor=True)[0]


@contextmanager
def _open(path):
    path = Path(path)
    if not path.is_file():
        raise WzFormatError(f"{path}: no such file")
    with open(path, "rb") as handle:
        yield FileSource(handle)


def _decode_all(source, max_elements: int, where: str) -> tuple[dict, dict]:
    metadata, records, reader, _ = _checked_source(source, max_elements, where, verify_file_crc=True)
    tensors = {}
    for record in records:
        tensors[record.name] = _decode_record(record, reader, where)
    return tensors, metadata


def _decode_one(source, name: str, max_elements: int, where: str):
    _, records, reader, _ = _checked_source(source, max_elements, where, verify_file_crc=False, only=name)
    if not records:
        raise WzFormatError(f"{where}: no tensor named {name!r}")
    return _decode_record(records[0], reader, where)


def _decode_record(record: TensorRecord, reader: PayloadReader, where: str):
    try:
        return decode_record(record, reader)
    except WzFormatError as error:
        raise WzFormatError(f"{where}: {error}") from None


def _summary(source, max_elements: int, where: str) -> WzSummary:
    metadata, records, _, version = _checked_source(source, max_elements, where, verify_file_crc=False)
    return WzSummary(version, metadata, SizeReport([_size_row(r) for r in records], source.size, where))


def _checked(data: bytes, max_elements: int, source: str) -> tuple[dict, list[TensorRecord], PayloadReader]:
    """(metadata, checked records, payload reader) of a whole file's bytes, every checksum verified."""
    return _checked_source(ByteSource(data), max_elements, source, verify_file_crc=True)[:3]


def _checked_source(source, max_elements: int | None, where: str, *, verify_file_crc: bool, only: str | None = None,
                    per_tensor: bool = False):
    """(metadata, checked records, payload reader, version): all records, or with `only` just that one
    (the other records' names are still checked to be unique strings). `max_elements` bounds the records'
    elements together, or with `per_tensor` each record alone; None: :data:`DEFAULT_MAX_ELEMENTS`, read when
    called (every public reader's default)."""
    if max_elements is None:
        max_elements = DEFAULT_MAX_ELEMENTS
    try:
        envelope = read_envelope(source, verify_file_crc=verify_file_crc)
        header = envelope.header
        metadata = schema.field(header, "metadata", "header")
        if not isinstance(metadata, dict):
            raise WzFormatError("header: metadata must be a JSON object")
        raw_records = schema.field(header, "tensors", "header")
        if not isinstance(raw_records, list):
            raise WzFormatError("header: tensors must be a list")
        records, total, names = [], 0, set()
        for index, raw in enumerate(raw_records):
            if only is not None:
                name = schema.string(raw, "name", f"tensor #{index}")
                if name in names:
                    raise WzFormatError(f"tensor '{name}' appears twice")
                names.add(name)
                if name != only:
                    continue
            record = check_record(raw, index, max_elements=max_elements - total,
                                  payload_length=envelope.payload_length)
            if record.name in names and only is None:
                raise WzFormatError(f"tensor '{record.name}' appears twice")
            names.add(record.name)
            total += 0 if per_tensor else record.nominal
            records.append(record)
    except WzFormatError as error:
        raise WzFormatError(f"{where}: {error}") from None
    reader = PayloadReader(source, envelope.payload_offset, envelope.payload_length)
    return metadata, records, reader, envelope.version


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
