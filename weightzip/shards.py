"""Safetensors checkpoints, single-file or sharded (Hugging Face's ``model.safetensors.index.json``), in and out.

Reading is in bounded memory: :func:`open_safetensors` checks every file's header and the index against
the shards' actual contents (each name in exactly one shard, the one the index says) before any tensor is
read; :meth:`SafetensorsCheckpoint.arrays` then yields the tensors one at a time from memory-mapped files as
NumPy arrays (:meth:`SafetensorsCheckpoint.tensors`: as torch tensors). This module needs no torch: the
command line compresses a safetensors checkpoint without importing it (~5 s and ~190 MiB less per call).

Writing streams too (:mod:`weightzip.torch.shards`, torch tensors in): :func:`write_safetensors` lays out the
header from the tensors' names, dtypes and shapes,
then asks for one tensor at a time and writes its bytes, so a shard is never held in memory whole.
:func:`write_sharded` writes the shards and the index of a :class:`ShardLayout`.

The safetensors layout: 8 bytes little-endian header length N, N bytes of JSON header
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``, padded with
spaces), then the data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightzip.atomic import WRITEBACK_BYTES, early_writeback
from weightzip.core.errors import WeightzipError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # what the safetensors library itself accepts

# safetensors dtype names -> bytes per value, and the NumPy dtype of those the NumPy reader returns as they are
ITEMSIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
NUMPY_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8"),
                "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
                "BOOL": np.dtype("?"), "U16": np.dtype("<u2"), "U32": np.dtype("<u4"), "U64": np.dtype("<u8")}
WIDENED = {"BF16": "bfloat16"}  # read as float32 (exactly: a bfloat16 is the top half of a float32)


class ShardError(WeightzipError):
    """A safetensors file or shard index that is malformed, or shards that disagree with their index."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file, from its header: name, dtype name (``F32``), shape, byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed, checked header of one safetensors file."""

    path: Path
    entries: tuple[TensorEntry, ...]  # in data order
    metadata: dict[str, str]
    data_start: int


@dataclass(frozen=True)
class ShardLayout:
    """Which tensors go into which shard file, in order, with each shard's ``__metadata__``.

    ``index_metadata`` is the ``metadata`` object of ``model.safetensors.index.json``; None means a single
    unsharded file (then there is exactly one shard).
    """

    shards: tuple[tuple[str, tuple[str, ...], dict[str, str]], ...]  # (file name, tensor names, metadata)
    index_metadata: dict | None = None

    @property
    def sharded(self) -> bool:
        return self.index_metadata is not None

    @property
    def files(self) -> tuple[str, ...]:
        names = tuple(file for file, _, _ in self.shards)
        return names + ((INDEX_FILE,) if self.sharded else ())

    def to_json(self) -> dict:
        return {"shards": [{"file": file, "tensors": list(names), "metadata": dict(meta)}
                           for file, names, meta in self.shards],
                "index_metadata": self.index_metadata}

    @classmethod
    def from_json(cls, value, where: str) -> ShardLayout:
        """The layout stored by :meth:`to_json`, checked (file names are plain names, no tensor twice)."""
        try:
            shards = tuple((_plain_file_name(item["file"], where), tuple(_strings(item["tensors"], where)),
                            {str(k): str(v) for k, v in dict(item.get("metadata") or {}).items()})
                           for item in value["shards"])
            index_metadata = value.get("index_metadata")
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ShardError(f"{where}: malformed shard layout") from None
        if not shards or (index_metadata is None and len(shards) != 1):
            raise ShardError(f"{where}: malformed shard layout ({len(shards)} shards)")
        if index_metadata is not None and not isinstance(index_metadata, dict):
            raise ShardError(f"{where}: index metadata must be a JSON object")
        _check_unique([name for _, names, _ in shards for name in names], where)
        _check_unique([file for file, _, _ in shards], where, what="shard file")
        return cls(shards, index_metadata)


@dataclass
class SafetensorsCheckpoint:
    """A checked safetensors checkpoint: one file, or the shards of an index. Tensors are read lazily."""

    layout: ShardLayout
    headers: dict[str, SafetensorsHeader] = field(repr=False)  # by shard file name
    directory: Path

    @property
    def names(self) -> list[str]:
        return [name for _, names, _ in self.layout.shards for name in names]

    @property
    def entries(self) -> dict[str, TensorEntry]:
        return {entry.name: entry for header in self.headers.values() for entry in header.entries}

    @property
    def total_bytes(self) -> int:
        return sum(entry.nbytes for header in self.headers.values() for entry in header.entries)

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, NumPy array) in layout order, one at a time, as :meth:`views` (the same bounded memory):
        views of the mapping, bfloat16 widened to a float32 copy (exact). A dtype NumPy lacks (float8) raises
        :class:`ShardError` naming the tensor. (``weightzip.torch.shards.tensors`` gives torch tensors.)"""
        yield from self.views(numpy_view)

    def views(self, view) -> Iterator:
        """(name, ``view(mapping, start, entry)``) in layout order, one at a time, from memory-mapped files.

        Each view is of the file's (copy-on-write) mapping; once the consumer asks for the next one, the
        previous tensor's pages are handed back to the system (``madvise(MADV_DONTNEED)``), so the resident
        memory stays about one tensor however large the checkpoint. A view kept longer stays valid (its
        pages are read from the file again when touched; writes to it are private and may be dropped).
        """
        for file, names, _ in self.layout.shards:
            header = self.headers[file]
            entries = {entry.name: entry for entry in header.entries}
            try:
                with open(header.path, "rb") as stream:
                    # not closed here: views still referenced keep the mapping alive
                    mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as error:
                raise ShardError(f"{header.path}: cannot be read ({error})") from None
            for name in names:
                entry = entries[name]
                start = header.data_start + entry.begin
                yield name, view(mapped, start, entry)
                _release(mapped, start, entry.nbytes)
            del mapped


def numpy_view(mapped, start: int, entry: TensorEntry) -> np.ndarray:
    """The tensor `entry` at byte `start` of `mapped` as a NumPy array (see :meth:`SafetensorsCheckpoint.arrays`)."""
    if entry.dtype == "BF16":
        halves = np.frombuffer(mapped, dtype="<u2", count=entry.nbytes // 2, offset=start) if entry.nbytes \
            else np.zeros(0, np.uint16)
        return (halves.astype(np.uint32) << np.uint32(16)).view(np.float32).reshape(entry.shape)
    dtype = NUMPY_DTYPES.get(entry.dtype)
    if dtype is None:
        raise ShardError(f"tensor {entry.name!r}: dtype {entry.dtype} cannot be stored in a .wz file")
    if entry.nbytes == 0:
        return np.zeros(entry.shape, dtype=dtype)
    return np.frombuffer(mapped, dtype=dtype, count=entry.nbytes // dtype.itemsize, offset=start).reshape(entry.shape)


def _release(mapped: mmap.mmap, start: int, length: int) -> None:
    """Drop the pages of [start, start + length) from memory (they are re-read from the file if touched)."""
    if not hasattr(mmap, "MADV_DONTNEED") or length == 0:
        return
    page = mmap.PAGESIZE
    first = start - start % page
    mapped.madvise(mmap.MADV_DONTNEED, first, start + length - first)


def read_header(path) -> SafetensorsHeader:
    """Parse and check the header of the safetensors file `path` (without reading its tensors)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise ShardError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise ShardError(f"{path}: not a safetensors file (header length {length} for a {size}-byte file)")
            raw = stream.read(length)
    except FileNotFoundError:
        raise ShardError(f"{path}: no such file") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ShardError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ShardError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ShardError(f"{path}: __metadata__ must be a JSON object")
    entries = []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ShardError(f"{path}: tensor {name!r}: malformed header entry") from None
        if dtype not in ITEMSIZES:
            raise ShardError(f"{path}: tensor {name!r}: unsupported dtype {dtype!r}")
        expected = math.prod(shape) * ITEMSIZES[dtype]
        if any(d < 0 for d in shape) or not (isinstance(begin, int) and isinstance(end, int)) \
                or end - begin != expected or begin < 0:
            raise ShardError(f"{path}: tensor {name!r}: data offsets {[begin, end]} do not fit {dtype}{list(shape)}")
        entries.append(TensorEntry(name, dtype, shape, begin, end))
    entries.sort(key=lambda entry: (entry.begin, entry.end))
    data_start = 8 + length
    position = 0
    for entry in entries:
        if entry.begin != position:
            raise ShardError(f"{path}: tensor {entry.name!r}: data offsets overlap or leave a hole")
        position = entry.end
    if data_start + position != size:
        raise ShardError(f"{path}: file is {size} bytes, its header describes {data_start + position}")
    return SafetensorsHeader(path, tuple(entries), {str(k): str(v) for k, v in metadata.items()}, data_start)


def open_safetensors(path) -> SafetensorsCheckpoint:
    """Check a safetensors checkpoint: a ``.safetensors`` file, a ``*.index.json``, or a directory holding
    ``model.safetensors.index.json`` or ``model.safetensors``. Every shard's header is read and compared with
    the index; any disagreement raises :class:`ShardError` naming it."""
    path = Path(path)
    if path.is_dir():
        if (path / INDEX_FILE).is_file():
            path = path / INDEX_FILE
        elif (path / SINGLE_FILE).is_file():
            path = path / SINGLE_FILE
        else:
            raise ShardError(f"{path}: no {INDEX_FILE} or {SINGLE_FILE} in this directory")
    if path.name.endswith(".index.json"):
        return _open_index(path)
    header = read_header(path)
    layout = ShardLayout(((path.name, tuple(e.name for e in header.entries), header.metadata),))
    return SafetensorsCheckpoint(layout, {path.name: header}, path.parent)


def _open_index(path: Path) -> SafetensorsCheckpoint:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ShardError(f"{path}: not a JSON shard index ({error})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ShardError(f"{path}: a shard index needs a non-empty 'weight_map' object")
    by_shard: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        if not isinstance(file, str):
            raise ShardError(f"{path}: weight_map[{name!r}] must be a file name")
        by_shard.setdefault(_plain_file_name(file, str(path)), []).append(name)
    headers, shards = {}, []
    for file in by_shard:
        shard_path = path.parent / file
        if not shard_path.is_file():
            raise ShardError(f"{path}: names shard {file!r}, which does not exist")
        headers[file] = read_header(shard_path)
        actual = [entry.name for entry in headers[file].entries]
        listed = set(by_shard[file])
        missing = [name for name in by_shard[file] if name not in set(actual)]
        if missing:
            raise ShardError(f"{path}: shard {file} lacks {len(missing)} tensor(s) the index places there, "
                             f"e.g. {missing[0]!r}")
        extra = [name for name in actual if name not in listed]
        if extra:
            elsewhere = weight_map.get(extra[0])
            where = f"the index places it in {elsewhere}" if elsewhere else "the index does not list it"
            raise ShardError(f"{path}: shard {file} holds {len(extra)} tensor(s) the index does not place "
                             f"there, e.g. {extra[0]!r} ({where})")
        shards.append((file, tuple(actual), headers[file].metadata))
    metadata = index.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ShardError(f"{path}: 'metadata' must be a JSON object")
    return SafetensorsCheckpoint(ShardLayout(tuple(shards), metadata), headers, path.parent)


def _plain_file_name(value, where: str) -> str:
    if not isinstance(value, str) or not value or value != os.path.basename(value) or value in (".", "..") \
            or "\\" in value:
        raise ShardError(f"{where}: shard file name {value!r} must be a plain file name in the same directory")
    return value


def _strings(values, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ShardError(f"{where}: tensor names must be a list of strings")
    return values


def _check_unique(values: list[str], where: str, what: str = "tensor") -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise ShardError(f"{where}: {what} {value!r} appears twice")
        seen.add(value)


def write_safetensors_arrays(path, specs, fetch, metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file at `path` holding the tensors `specs` ((name, safetensors dtype name, shape),
    in that order), calling ``fetch(name)`` for each one's NumPy array just before writing it (its bytes as
    stored: a BF16 tensor as its uint16 bit patterns); returns the bytes written. One tensor in memory at a time
    (NumPy only; :func:`weightzip.torch.shards.write_safetensors` takes torch tensors)."""
    specs = list(specs)
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for name, dtype, shape in specs:
        if dtype not in ITEMSIZES:
            raise ShardError(f"tensor {name!r}: dtype {dtype} has no safetensors name")
        nbytes = math.prod(shape) * ITEMSIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as stream:
        written = 0
        stream.write(struct.pack("<Q", len(encoded)))
        stream.write(encoded)
        for name, dtype, shape in specs:
            array = np.asarray(fetch(name))
            array = np.ascontiguousarray(array).reshape(array.shape)  # (ascontiguousarray makes a scalar 1-d)
            if tuple(array.shape) != tuple(shape) or array.dtype.itemsize != ITEMSIZES[dtype]:
                raise ShardError(f"tensor {name!r}: got {array.dtype}{list(array.shape)}, expected {dtype}{list(shape)}")
            if array.size:
                stream.write(memoryview(array.reshape(-1)).cast("B"))  # no copy of the tensor's bytes
            del array
            if stream.tell() - written >= WRITEBACK_BYTES:
                written = early_writeback(stream, written)  # the final fsync then finds little left
        stream.flush()
        os.fsync(stream.fileno())
    return 8 + len(encoded) + offset
