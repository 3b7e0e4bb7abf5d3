"""Per-tensor records: a ClusteredTensor or a plain array <-> a header record plus payload sections.

Record fields (JSON), common: ``name``, ``kind`` ("clustered" | "array"), ``shape`` (list of ints),
``dtype`` (the decoded dtype: the codebook's for clustered tensors), ``nonzero`` (weights whose
decoded value is not zero, for size tables), ``layout`` ("dense" | "sparse").

kind "clustered" (a :class:`weightzip.core.ClusteredTensor`):
  ``clusters`` k, ``groups`` (codebook rows), ``axis`` (int or null), ``group_size``, ``index_dtype``;
  ``codebook``: raw section, groups × k values of ``dtype``, C order;
  layout "dense": ``indices``: symbol stream of all indices in C order (alphabet k);
  layout "sparse": ``background`` (one index per group: the group's most common index, i.e. the
  pruned weights' zero centroid), ``gap_bits``, ``gaps`` (symbol stream, alphabet 2**gap_bits) and
  ``values`` (symbol stream of the entries' indices, alphabet k): see :mod:`weightzip.core.sparse`.

kind "array" (biases, BatchNorm statistics, unclustered kernels):
  layout "dense": ``data``: raw section of all values, C order, little-endian;
  layout "sparse": ``gap_bits``, ``gaps`` (symbol stream) and ``values`` (raw section of the entries'
  values); background is zero (all-zero bit pattern, so -0.0 is kept exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weightzip.core.bitpack import bit_width
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.errors import WeightzipError
from weightzip.core.options import ParsableEnum
from weightzip.core.sparse import MAX_GAP_BITS, best_gap_bits, sparse_decode, sparse_encode
from weightzip.format import schema
from weightzip.format.errors import WzFormatError
from weightzip.format.streams import (
    Coding,
    PayloadBuilder,
    PayloadReader,
    check_symbols_descriptor,
    decode_raw,
    decode_symbols,
    encode_symbols,
    raw_bytes,
)

_BINCOUNT_LIMIT = 1 << 22  # per-group index histograms up to this size use one bincount, else a sort


class Layout(ParsableEnum):
    """Dense storage, sparse storage with relative indices, or whichever is smaller."""

    AUTO = "auto"
    DENSE = "dense"
    SPARSE = "sparse"


@dataclass(frozen=True)
class EncodeOptions:
    """How tensors are encoded (see :class:`weightzip.format.WriteOptions` for the public options)."""

    coding: Coding = Coding.AUTO
    layout: Layout = Layout.AUTO
    gap_bits: int | None = None
    codebook_dtype: np.dtype | None = None
    keep_clustered: bool = False


# ---------------------------------------------------------------- writing


def encode_tensor(name: str, tensor, options: EncodeOptions, payload: PayloadBuilder) -> dict:
    """Header record for `tensor`; its sections are appended to `payload`.

    A clustered tensor is never stored larger than its decoded values would be: where its sections (codebook
    and indices) outgrow the raw values (small depthwise or stem kernels with a codebook per channel), the
    array record of the decoded values is written instead if its sections are smaller; it decodes to the
    same values (read back as an array, not a ClusteredTensor).
    """
    if isinstance(tensor, ClusteredTensor):
        clustered = PayloadBuilder()
        record = _encode_clustered(name, tensor, options, clustered)
        decoded = tensor.decode()
        if options.codebook_dtype is not None:
            decoded = decoded.astype(options.codebook_dtype)  # a cast commutes with the codebook lookup
        if clustered.length > decoded.nbytes and not options.keep_clustered:
            plain = PayloadBuilder()
            array_record = _encode_array(name, decoded, options, plain)
            if plain.length < clustered.length:
                record, clustered = array_record, plain
        return _append_record(record, clustered, payload)
    return _encode_array(name, tensor, options, payload)


def _append_record(record: dict, sections: PayloadBuilder, payload: PayloadBuilder) -> dict:
    """`record` with its sections (built in their own builder) moved to the end of `payload`."""
    shift = payload.length
    for chunk in sections.chunks:  # the same bytes, so the same CRCs, at offsets moved by `shift`
        payload.add(chunk)
    return {key: ({**value, "offset": value["offset"] + shift} if isinstance(value, dict) and "offset" in value
                  else value) for key, value in record.items()}


def _encode_clustered(name: str, tensor: ClusteredTensor, options: EncodeOptions, payload) -> dict:
    codebook, indices = _checked_clustered(name, tensor)
    if options.codebook_dtype is not None:
        codebook = codebook.astype(options.codebook_dtype)
    groups, k = codebook.shape
    group_of_weight = np.broadcast_to(tensor.group_of_each_weight(), indices.shape).ravel()
    flat = indices.ravel()
    decoded_zero = (codebook == 0)[group_of_weight, flat]
    record = {
        "name": name, "kind": "clustered", "shape": list(indices.shape), "dtype": codebook.dtype.name,
        "nonzero": int(flat.size - np.count_nonzero(decoded_zero)),
        "clusters": int(k), "groups": int(groups), "axis": None if tensor.axis is None else int(tensor.axis), "group_size": int(tensor.group_size),
        "index_dtype": indices.dtype.name,
    }
    dense, sparse = None, None
    if options.layout in (Layout.AUTO, Layout.DENSE):
        dense = encode_symbols(flat, k, options.coding)
    if options.layout in (Layout.AUTO, Layout.SPARSE):
        background = _most_common_per_group(flat, group_of_weight, groups, k)
        sparse = _best_sparse(flat, background[group_of_weight], bit_width(k), options,
                              lambda values: encode_symbols(values, k, options.coding))
    record["codebook"] = payload.add(raw_bytes(codebook))
    if dense is not None and (sparse is None or dense.size <= _size(sparse)):
        record["layout"] = "dense"
        record["indices"] = payload.add_stream(dense)
    else:
        gap_bits, gaps, values = sparse
        record.update(layout="sparse", background=[int(b) for b in background], gap_bits=gap_bits)
        record["gaps"] = payload.add_stream(gaps)
        record["values"] = payload.add_stream(values)
    return record


def _encode_array(name: str, tensor, options: EncodeOptions, payload) -> dict:
    array = np.asarray(tensor)
    if array.dtype.name not in schema.DTYPES:
        raise WeightzipError(f"tensor '{name}': dtype {array.dtype} cannot be stored in a .wz file "
                             f"(supported: {', '.join(schema.DTYPES)})")
    flat = array.ravel()
    record = {"name": name, "kind": "array", "shape": list(array.shape), "dtype": array.dtype.name,
              "nonzero": int(np.count_nonzero(flat))}
    raw_size = flat.size * array.dtype.itemsize
    sparse = None
    # Sparse storage holds every entry's value raw plus the gaps: with every position kept it cannot be
    # smaller than the raw data, so AUTO does not try it (same bytes, none of its work).
    all_kept = options.layout is Layout.AUTO and np.count_nonzero(_bit_pattern(flat)) == flat.size
    if options.layout in (Layout.AUTO, Layout.SPARSE) and not all_kept:
        sparse = _best_sparse(flat, 0, 8 * array.dtype.itemsize, options, _RawValues)
    if sparse is None or (options.layout is Layout.AUTO and raw_size <= _size(sparse)):
        record["layout"] = "dense"
        record["data"] = payload.add(raw_bytes(flat))
    else:
        gap_bits, gaps, values = sparse
        record.update(layout="sparse", gap_bits=gap_bits)
        record["gaps"] = payload.add_stream(gaps)
        record["values"] = payload.add(values.data)
    return record


@dataclass
class _RawValues:
    """Values of a sparse array stored raw (same interface as EncodedStream for size comparisons)."""

    values: np.ndarray

    @property
    def data(self) -> bytes:
        return raw_bytes(self.values)

    @property
    def size(self) -> int:
        return self.values.size * self.values.dtype.itemsize


def _best_sparse(flat, background, value_bits, options: EncodeOptions, encode_values):
    """(gap_bits, gap stream, value stream) of the smallest sparse encoding tried."""
    if options.gap_bits is not None:
        widths = [options.gap_bits]
    else:
        keep = _bit_pattern(flat) != _bit_pattern(np.broadcast_to(np.asarray(background, flat.dtype), flat.shape))
        packed_best = best_gap_bits(keep, value_bits)
        # With entropy-coded gaps, wider gaps (fewer fillers) can win: try a few widths.
        widths = [packed_best] if options.coding is Coding.PACKED else \
            sorted({w for w in (packed_best, packed_best + 1, packed_best + 2, 8) if 1 <= w <= MAX_GAP_BITS})
    best = None
    for gap_bits in widths:
        stream, values = sparse_encode(flat, background, gap_bits)
        candidate = (gap_bits, encode_symbols(stream.gaps, 1 << gap_bits, options.coding), encode_values(values))
        if best is None or _size(candidate) < _size(best):
            best = candidate
    return best


def _size(sparse) -> int:
    return sparse[1].size + sparse[2].size


def _bit_pattern(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
    return array


def _checked_clustered(name: str, tensor: ClusteredTensor) -> tuple[np.ndarray, np.ndarray]:
    codebook, indices = np.asarray(tensor.codebook), np.asarray(tensor.indices)
    where = f"tensor '{name}'"
    if codebook.ndim != 2 or codebook.shape[1] < 1 or codebook.dtype.name not in schema.FLOAT_DTYPES:
        raise WeightzipError(f"{where}: codebook must be a (groups, k) float16/32/64 array, "
                             f"got {codebook.dtype} of shape {codebook.shape}")
    if indices.dtype.name not in schema.INDEX_DTYPES:
        raise WeightzipError(f"{where}: indices must be an integer array, got {indices.dtype}")
    k = codebook.shape[1]
    if indices.size and (indices.min() < 0 or int(indices.max()) >= k):
        raise WeightzipError(f"{where}: indices must lie in [0, {k}), got [{indices.min()}, {indices.max()}]")
    expected = _expected_groups(indices.shape, tensor.axis, tensor.group_size, where, WeightzipError)
    if codebook.shape[0] != expected:
        raise WeightzipError(f"{where}: codebook has {codebook.shape[0]} rows, axis={tensor.axis} and "
                             f"group_size={tensor.group_size} need {expected}")
    return codebook, indices


def _expected_groups(shape, axis, group_size, where: str, error) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise error(f"{where}: group_size must be an integer >= 1, got {group_size!r}")
    if axis is None:
        return 1
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -len(shape) <= axis < len(shape):
        raise error(f"{where}: axis {axis!r} is out of range for a tensor of rank {len(shape)}")
    return -(-shape[axis] // group_size)


def _most_common_per_group(flat: np.ndarray, group: np.ndarray, groups: int, k: int) -> np.ndarray:
    """Each group's most frequent index (lowest on ties; 0 for a group without weights)."""
    background = np.zeros(groups, dtype=np.int64)
    if flat.size == 0:
        return background
    if groups * k <= _BINCOUNT_LIMIT:  # small histogram: one bincount (argmax takes the lowest index on ties)
        histogram = np.bincount(group.astype(np.int64) * k + flat.astype(np.int64), minlength=groups * k)
        return histogram.reshape(groups, k).argmax(axis=1)
    keys, counts = np.unique(group.astype(np.int64) * k + flat.astype(np.int64), return_counts=True)
    key_group, key_index = keys // k, keys % k
    order = np.lexsort((key_index, -counts, key_group))
    first = order[np.r_[True, key_group[order][1:] != key_group[order][:-1]]]
    background[key_group[first]] = key_index[first]
    return background


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class TensorRecord:
    """A record whose structure was checked: decoding it allocates `elements` values at most."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str
    nonzero: int
    elements: int
    entries: int
    raw: dict
    nominal: int  # elements, with zero-length axes counted as 1: what the reader's element limit counts

    @property
    def where(self) -> str:
        return f"tensor '{self.name}'"


def check_record(raw: dict, index: int, *, max_elements: int, payload_length: int) -> TensorRecord:
    """Validate one record's structure and sizes (no payload access, no allocation).

    Every section must lie inside the `payload_length`-byte payload, so sizes derived from a section
    (codebook rows × k, table sizes) are bounded by the file's size."""
    where = f"tensor #{index}"
    name = schema.string(raw, "name", where)
    where = f"tensor '{name}'"
    kind = schema.choice(raw, "kind", where, ("clustered", "array"))
    shape = schema.shape(raw, "shape", where)
    elements = math.prod(shape)
    # A zero-length axis does not make the others free: NumPy (and any per-channel arange) still sizes
    # arrays by the non-zero axes, so a tensor counts as the product of its axes with 0 read as 1.
    nominal = math.prod(max(dim, 1) for dim in shape)
    if nominal > max_elements:
        counted = f"{elements} elements" if elements else f"no elements but axes of {nominal} together"
        raise WzFormatError(f"{where}: shape {list(shape)} has {counted}, more than the "
                            f"{max_elements} left of the reader's element limit (max_elements; raise it "
                            f"only for a trusted file)")
    layout = schema.choice(raw, "layout", where, ("dense", "sparse"))
    nonzero = schema.integer(raw, "nonzero", where, maximum=elements)
    if kind == "clustered":
        dtype = schema.dtype(raw, "dtype", where, schema.FLOAT_DTYPES)
        k = schema.integer(raw, "clusters", where, minimum=1)
        groups = schema.integer(raw, "groups", where, minimum=0)  # 0: a per-channel tensor with no channels
        axis = schema.optional_integer(raw, "axis", where, minimum=-len(shape), maximum=len(shape) - 1)
        group_size = schema.integer(raw, "group_size", where, minimum=1)
        index_dtype = schema.dtype(raw, "index_dtype", where, schema.INDEX_DTYPES)
        if k - 1 > np.iinfo(index_dtype).max:
            raise WzFormatError(f"{where}: {k} clusters do not fit index dtype {index_dtype}")
        if groups != _expected_groups(shape, axis, group_size, where, WzFormatError):
            raise WzFormatError(f"{where}: {groups} codebook rows do not match axis={axis}, "
                                f"group_size={group_size} and shape {list(shape)}")
        codebook_length = _section_length(raw, "codebook", where, payload_length)
        if codebook_length != groups * k * dtype.itemsize:
            raise WzFormatError(f"{where}: codebook section of {codebook_length} bytes, {groups}x{k} "
                                f"{dtype} values need {groups * k * dtype.itemsize}")
        if layout == "dense":
            _section_length(raw, "indices", where, payload_length)
            entries = check_symbols_descriptor(schema.field(raw, "indices", where), f"{where} indices",
                                               count=elements, alphabet=k, max_count=max_elements)
        else:
            schema.integer_list(raw, "background", where, length=groups, maximum=k - 1)
            entries = _check_sparse_streams(raw, where, elements, max_elements, payload_length, value_alphabet=k)
    else:
        dtype = schema.dtype(raw, "dtype", where)
        if layout == "dense":
            entries = elements
            length = _section_length(raw, "data", where, payload_length)
            if length != elements * dtype.itemsize:
                raise WzFormatError(f"{where}: data section of {length} bytes, {elements} {dtype} values "
                                    f"need {elements * dtype.itemsize}")
        else:
            entries = _check_sparse_streams(raw, where, elements, max_elements, payload_length, value_alphabet=None)
            length = _section_length(raw, "values", where, payload_length)
            if length != entries * dtype.itemsize:
                raise WzFormatError(f"{where}: values section of {length} bytes, {entries} {dtype} values "
                                    f"need {entries * dtype.itemsize}")
    return TensorRecord(name, kind, shape, dtype, layout, nonzero, elements, entries, raw, nominal)


def _section_length(raw: dict, key: str, where: str, payload_length: int) -> int:
    """The length of section `key`, after checking that the section lies inside the payload."""
    descriptor = schema.field(raw, key, where)
    where = f"{where} {key}"
    offset = schema.integer(descriptor, "offset", where)
    length = schema.integer(descriptor, "length", where)
    schema.integer(descriptor, "crc32", where, maximum=0xFFFFFFFF)
    if offset + length > payload_length:
        raise WzFormatError(f"{where}: section [{offset}, {offset + length}) lies outside the "
                            f"{payload_length}-byte payload")
    return length


def _check_sparse_streams(raw, where, elements, max_elements, payload_length, *, value_alphabet) -> int:
    gap_bits = schema.integer(raw, "gap_bits", where, minimum=1, maximum=MAX_GAP_BITS)
    _section_length(raw, "gaps", where, payload_length)
    _section_length(raw, "values", where, payload_length)
    entries = check_symbols_descriptor(schema.field(raw, "gaps", where), f"{where} gaps", count=None,
                                       alphabet=1 << gap_bits, max_count=min(elements, max_elements))
    if value_alphabet is not None:
        check_symbols_descriptor(schema.field(raw, "values", where), f"{where} values", count=entries,
                                 alphabet=value_alphabet, max_count=max_elements)
    return entries


def decode_record(record: TensorRecord, reader: PayloadReader):
    """The ClusteredTensor or array of a checked record, bit-exact; raises WzFormatError if inconsistent."""
    raw, where = record.raw, record.where
    if record.kind == "array":
        if record.layout == "dense":
            return decode_raw(raw["data"], reader, f"{where} data", record.dtype, record.elements).reshape(record.shape)
        gaps = decode_symbols(raw["gaps"], reader, f"{where} gaps")
        values = decode_raw(raw["values"], reader, f"{where} values", record.dtype, record.entries)
        flat = _sparse_decode(gaps, values, np.zeros((), record.dtype), record, where)
        return flat.reshape(record.shape)
    groups, k = raw["groups"], raw["clusters"]
    codebook = decode_raw(raw["codebook"], reader, f"{where} codebook", record.dtype, groups * k).reshape(groups, k)
    index_dtype = schema.DTYPES[raw["index_dtype"]]
    axis, group_size = raw["axis"], raw["group_size"]
    if record.layout == "dense":
        indices = decode_symbols(raw["indices"], reader, f"{where} indices").astype(index_dtype)
    else:
        gaps = decode_symbols(raw["gaps"], reader, f"{where} gaps")
        values = decode_symbols(raw["values"], reader, f"{where} values").astype(index_dtype)
        background = np.asarray(raw["background"], dtype=index_dtype)
        if record.elements:
            # The group layout of the tensor, from a zero-strided stand-in for its indices (no allocation).
            layout = ClusteredTensor(codebook, np.broadcast_to(np.zeros((), np.uint8), record.shape), axis, group_size)
            per_weight = np.broadcast_to(background[layout.group_of_each_weight()], record.shape).ravel()
        else:  # no weights: no per-channel layout to build (its axes may still be long)
            per_weight = np.zeros(0, dtype=index_dtype)
        indices = _sparse_decode(gaps, values, per_weight, record, where)
    return ClusteredTensor(codebook, indices.reshape(record.shape), axis, group_size)


def _sparse_decode(gaps, values, background, record: TensorRecord, where: str) -> np.ndarray:
    try:
        return sparse_decode(gaps, values, background, record.elements, dtype=values.dtype)
    except WeightzipError as error:
        raise WzFormatError(f"{where}: {error}") from None
