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

import numba
import numpy as np

from weightzip.core.cluster import ClusteredTensor
from weightzip.core.errors import WeightzipError
from weightzip.core.options import ParsableEnum
from weightzip.core.sparse import MAX_GAP_BITS, sparse_decode, sparse_encode
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
    plan_stream,
    raw_bytes,
    symbol_histogram,
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
        decoded_dtype = np.dtype(options.codebook_dtype or np.asarray(tensor.codebook).dtype)
        decoded_bytes = math.prod(np.shape(tensor.indices)) * decoded_dtype.itemsize
        if clustered.length > decoded_bytes and not options.keep_clustered:  # decoded only when it may be kept
            decoded = tensor.decode()
            if options.codebook_dtype is not None:
                decoded = decoded.astype(options.codebook_dtype)  # a cast commutes with the codebook lookup
            plain = PayloadBuilder()
            array_record = _encode_array(name, decoded, options, plain)
            if plain.length < clustered.length:
                record, clustered = array_record, plain
        return _append_record(record, clustered.chunks, payload)
    return _encode_array(name, tensor, options, payload)


@dataclass(frozen=True)
class EncodedRecord:
    """One tensor encoded apart from the file (e.g. in a worker process): its header record, section offsets
    counted from 0, and its sections' bytes in order. The writer appends the same bytes with the offsets moved,
    so the file is byte-identical to one written by encoding the tensor in place."""

    record: dict
    sections: tuple[bytes, ...]


def encode_record(name: str, tensor, options: EncodeOptions) -> EncodedRecord:
    """`tensor` encoded on its own (see :func:`encode_tensor`), for :func:`append_encoded` later."""
    sections = PayloadBuilder()
    record = encode_tensor(name, tensor, options, sections)
    return EncodedRecord(record, tuple(sections.chunks))


def append_encoded(encoded: EncodedRecord, payload: PayloadBuilder) -> dict:
    """The record of `encoded` with its sections appended to `payload`."""
    return _append_record(encoded.record, encoded.sections, payload)


def _append_record(record: dict, chunks, payload: PayloadBuilder) -> dict:
    """`record` with its sections (`chunks`, built in their own builder) moved to the end of `payload`."""
    shift = payload.length
    for chunk in chunks:  # the same bytes, so the same CRCs, at offsets moved by `shift`
        payload.add(chunk)
    return {key: ({**value, "offset": value["offset"] + shift} if isinstance(value, dict) and "offset" in value
                  else value) for key, value in record.items()}


def _encode_clustered(name: str, tensor: ClusteredTensor, options: EncodeOptions, payload) -> dict:
    codebook, indices = _checked_clustered(name, tensor)
    if options.codebook_dtype is not None:
        codebook = codebook.astype(options.codebook_dtype)
    groups, k = codebook.shape
    flat = indices.ravel()
    group_map = tensor.group_of_each_weight()  # broadcastable to the shape: no per-weight array
    per_group, nonzero = _group_histograms(flat, indices.shape, group_map, codebook)
    background = _most_common(per_group, flat, indices.shape, group_map, groups, k)
    record = {
        "name": name, "kind": "clustered", "shape": list(indices.shape), "dtype": codebook.dtype.name,
        "nonzero": nonzero, "clusters": int(k), "groups": int(groups),
        "axis": None if tensor.axis is None else int(tensor.axis), "group_size": int(tensor.group_size),
        "index_dtype": indices.dtype.name,
    }
    candidates = []
    if options.layout in (Layout.AUTO, Layout.DENSE):
        histogram = per_group.sum(axis=0) if per_group is not None else symbol_histogram(flat, k)
        plan = plan_stream(histogram, k, options.coding)
        candidates.append(_Candidate(0, plan.lower_bound, plan.estimate,
                                     lambda: encode_symbols(flat, k, options.coding, histogram=histogram, plan=plan)))
    if options.layout in (Layout.AUTO, Layout.SPARSE):
        # The kept indices' histogram: every row's histogram without its background index.
        kept_histogram = None
        if per_group is not None:
            without_background = per_group.copy()
            without_background[np.arange(groups), background] = 0
            kept_histogram = without_background.sum(axis=0)
        background_map = background[group_map] if groups else np.zeros((1,) * indices.ndim, indices.dtype)
        keep = (indices != background_map).ravel()
        per_weight = background_map if groups <= 1 else np.broadcast_to(background_map, indices.shape).ravel()
        candidates += _sparse_candidates(
            flat, keep, per_weight.ravel()[0] if groups <= 1 else per_weight, options, value_alphabet=k,
            value_histogram=lambda positions, fillers: _value_histogram(flat, positions, fillers, background,
                                                                        indices.shape,
                                                                 tensor, k, kept_histogram),
            encode_values=lambda values, histogram: encode_symbols(values, k, options.coding, histogram=histogram))
    chosen = _smallest(candidates)
    record["codebook"] = payload.add(raw_bytes(codebook))
    if chosen.key == 0:
        record["layout"] = "dense"
        record["indices"] = payload.add_stream(chosen.encoded)
    else:
        gap_bits, gaps, values = chosen.encoded
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
    candidates = []
    if options.layout is not Layout.SPARSE:
        candidates.append(_Candidate(0, raw_size, raw_size, lambda: None))
    keep = _bit_pattern(flat) != 0  # background: the all-zero bit pattern (so -0.0 is an entry)
    # Sparse storage holds every entry's value raw plus the gaps: with every position kept it cannot be
    # smaller than the raw data, so AUTO does not try it (same bytes, none of its work).
    if options.layout is not Layout.DENSE and not (options.layout is Layout.AUTO and keep.all()):
        itemsize = array.dtype.itemsize
        candidates += _sparse_candidates(
            flat, keep, 0, options, value_alphabet=None, value_histogram=None,
            encode_values=lambda values, histogram: _RawValues(values), value_bytes=itemsize)
    chosen = _smallest(candidates)
    if chosen.key == 0:
        record["layout"] = "dense"
        record["data"] = payload.add(raw_bytes(flat))
    else:
        gap_bits, gaps, values = chosen.encoded
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


class _Candidate:
    """One way to store a tensor: dense (key 0) or sparse with `key` gap bits; sized before it is encoded.

    lower_bound: no encoding of it is smaller (exact for packed/Huffman/raw, a bound for ANS);
    estimate: its likely size, to try the most promising first; encode(): builds it (kept afterwards).
    """

    def __init__(self, key: int, lower_bound: int, estimate: int, encode):
        self.key, self.lower_bound, self.estimate, self._encode = key, lower_bound, estimate, encode
        self.encoded, self.size = None, None

    def build(self) -> int:
        self.encoded = self._encode()
        parts = self.encoded[1:] if isinstance(self.encoded, tuple) else (self.encoded,)
        self.size = self.lower_bound if self.encoded is None else sum(part.size for part in parts)
        return self.size


NEGLIGIBLE_SAVING_SHIFT = 16  # a candidate that could save at most 1/65,536 of the best size is not encoded


def _smallest(candidates: list[_Candidate]) -> _Candidate:
    """The smallest candidate (ties: dense, then fewer gap bits), as if every one were encoded, but encoding
    only the most promising one and those whose lower bound could still beat it by more than 1/65,536 of its
    size (below 64 KiB: by any byte, so small records are exactly the smallest). Encoding a near-tie costs as
    much as the record itself (an ANS pass over millions of indices) to save at most a few bytes of megabytes:
    k = 256 indices of 4 M normal weights, dense 4,035,840 bytes, sparse bounded at 4,035,835 (and 4,035,855
    once encoded): 0.4 s of the record's 0.8 s."""
    ordered = sorted(candidates, key=lambda c: (c.estimate, c.key))
    best = ordered[0]
    best.build()
    for candidate in sorted(ordered[1:], key=lambda c: (c.lower_bound, c.key)):
        margin = best.size >> NEGLIGIBLE_SAVING_SHIFT
        if (candidate.lower_bound + margin, candidate.key) >= (best.size, best.key):
            break
        if (candidate.build(), candidate.key) < (best.size, best.key):
            best = candidate
    return best


def _sparse_candidates(flat, keep, background, options: EncodeOptions, *, value_alphabet, value_histogram,
                       encode_values, value_bytes: int = 0) -> list[_Candidate]:
    """A candidate per gap width (the given one, or every width up to the first that needs no fillers),
    sized from the gap and value histograms that width implies, without building its streams.

    Every width's gap histogram follows from one histogram of the raw gaps (kept position minus the
    previous one, minus one): a raw gap g is stored as g mod 2^w after g >> w fillers of 2^w − 1.
    """
    positions = _KeptPositions(keep)
    raw_histogram = positions.raw_gap_histogram()
    gap_values = np.arange(raw_histogram.size, dtype=np.int64) if raw_histogram is not None else None
    widths = [options.gap_bits] if options.gap_bits is not None else range(1, MAX_GAP_BITS + 1)
    candidates = []
    for gap_bits in widths:
        span = 1 << gap_bits
        if raw_histogram is not None:
            fillers = int(np.dot(raw_histogram, gap_values >> gap_bits))
            gap_histogram = np.bincount(gap_values & (span - 1), weights=raw_histogram, minlength=span)
            gap_histogram = np.rint(gap_histogram).astype(np.int64)
        else:
            fillers = int((positions.raw_gaps >> gap_bits).sum())
            gap_histogram = np.bincount(positions.raw_gaps & (span - 1), minlength=span)
        gap_histogram[span - 1] += fillers
        gap_plan = plan_stream(gap_histogram, span, options.coding)
        entries = positions.count + fillers
        if value_alphabet is None:
            value_size = entries * value_bytes
            lower_bound, estimate = gap_plan.lower_bound + value_size, gap_plan.estimate + value_size
            histogram = None
        else:
            histogram = value_histogram(positions, (fillers, gap_bits))
            value_plan = plan_stream(histogram, value_alphabet, options.coding)
            lower_bound = gap_plan.lower_bound + value_plan.lower_bound
            estimate = gap_plan.estimate + value_plan.estimate
        candidates.append(_Candidate(gap_bits, lower_bound, estimate, _sparse_encoder(
            flat, background, gap_bits, gap_histogram, histogram, options, encode_values)))
        if fillers == 0:
            break  # wider gaps would only widen the gap alphabet
    return candidates


def _sparse_encoder(flat, background, gap_bits, gap_histogram, value_histogram, options, encode_values):
    def encode():
        stream, values = sparse_encode(flat, background, gap_bits)
        gaps = encode_symbols(stream.gaps, 1 << gap_bits, options.coding, histogram=gap_histogram)
        return gap_bits, gaps, encode_values(values, value_histogram)
    return encode


def _group_histograms(flat, shape, group_map, codebook):
    """(per-group index histogram (groups, k) or None when too large, count of weights decoding to nonzero)."""
    groups, k = codebook.shape
    zero = codebook == 0
    if groups <= 1:
        histogram = symbol_histogram(flat, k)[None, :] if groups else np.zeros((0, k), np.int64)
        return histogram, int(flat.size - histogram[zero].sum())
    group_of_weight = np.broadcast_to(group_map, shape).ravel()
    if groups * k <= _BINCOUNT_LIMIT:
        histogram = np.bincount(group_of_weight * k + flat.astype(np.int64, copy=False),
                                minlength=groups * k).reshape(groups, k)
        return histogram, int(flat.size - histogram[zero].sum())
    return None, int(flat.size - np.count_nonzero(zero[group_of_weight, flat]))


def _most_common(per_group, flat, shape, group_map, groups: int, k: int) -> np.ndarray:
    """Each group's most frequent index (lowest on ties; 0 for a group without weights)."""
    if per_group is not None:
        return per_group.argmax(axis=1) if flat.size else np.zeros(groups, dtype=np.int64)
    group_of_weight = np.broadcast_to(group_map, shape).ravel()
    return _most_common_per_group(flat, group_of_weight, groups, k)


class _KeptPositions:
    """The positions of a sparse layout's entries (`keep` True) and the raw gaps before each, built only when
    asked for: the gap histogram alone comes from one pass over `keep` (no position arrays: a 4 M-weight tensor
    saves ~30 ms of index arrays it does not need)."""

    def __init__(self, keep: np.ndarray):
        self.keep = keep
        self._kept = self._raw_gaps = None
        self._histogram, self.count, longest = _raw_gap_counts(keep, _BINCOUNT_LIMIT)
        self.fits = longest < _BINCOUNT_LIMIT

    def raw_gap_histogram(self) -> np.ndarray | None:
        """np.bincount of the raw gaps, or None when the longest gap is too long for one."""
        return self._histogram if self.fits else None

    @property
    def kept(self) -> np.ndarray:
        if self._kept is None:
            self._kept = np.flatnonzero(self.keep)
        return self._kept

    @property
    def raw_gaps(self) -> np.ndarray:
        if self._raw_gaps is None:
            self._raw_gaps = np.diff(self.kept, prepend=np.int64(-1)) - 1
        return self._raw_gaps


@numba.njit(cache=True, nogil=True)
def _raw_gap_counts(keep, limit):
    """(histogram of the raw gaps (empty unless the longest is below `limit`), entries, longest raw gap)."""
    count = 0
    longest = 0
    previous = -1
    for i in range(keep.shape[0]):
        if keep[i]:
            gap = i - previous - 1
            if gap > longest:
                longest = gap
            previous = i
            count += 1
    histogram = np.zeros(longest + 1 if longest < limit else 0, dtype=np.int64)
    if longest < limit:
        previous = -1
        for i in range(keep.shape[0]):
            if keep[i]:
                histogram[i - previous - 1] += 1
                previous = i
    if count == 0:
        histogram = np.zeros(1 if limit > 0 else 0, dtype=np.int64)
    return histogram, count, longest


def _value_histogram(flat, positions, fillers, background, shape, tensor: ClusteredTensor, k: int,
                     kept_histogram: np.ndarray | None = None) -> np.ndarray:
    """Histogram of a sparse value stream: the kept indices plus each filler's background index.

    positions: the entries' :class:`_KeptPositions`; fillers: (total fillers, gap bits); `kept_histogram`, when
    known, saves a pass over `flat`."""
    total, gap_bits = fillers
    histogram = (symbol_histogram(flat[positions.kept], k) if kept_histogram is None else kept_histogram).copy()
    if total == 0:
        return histogram
    if background.size == 1:
        histogram[int(background[0])] += total
        return histogram
    # Filler j (1-based) after kept entry i sits at previous position + j·2^gap_bits.
    kept, raw_gaps = positions.kept, positions.raw_gaps
    fillers_before = raw_gaps >> gap_bits
    owner = np.repeat(np.arange(kept.size), fillers_before)
    step = np.arange(total) - np.repeat(np.cumsum(fillers_before) - fillers_before, fillers_before) + 1
    positions = (kept - raw_gaps - 1)[owner] + (step << gap_bits)
    axis = tensor.axis % len(shape)
    channel = (positions // math.prod(shape[axis + 1:])) % shape[axis]
    histogram += np.bincount(background[channel // tensor.group_size], minlength=k)
    return histogram


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
        indices = decode_symbols(raw["indices"], reader, f"{where} indices").astype(index_dtype, copy=False)
    else:
        gaps = decode_symbols(raw["gaps"], reader, f"{where} gaps")
        values = decode_symbols(raw["values"], reader, f"{where} values").astype(index_dtype, copy=False)
        background = np.asarray(raw["background"], dtype=index_dtype)
        if record.elements:
            # The group layout of the tensor, from a zero-strided stand-in for its indices (no allocation).
            layout = ClusteredTensor(codebook, np.broadcast_to(np.zeros((), np.uint8), record.shape), axis, group_size)
            per_weight = np.broadcast_to(background[layout.group_of_each_weight()], record.shape).ravel()
        else:  # no weights: no per-channel layout to build (its axes may still be long)
            per_weight = np.zeros(0, dtype=index_dtype)
        indices = _sparse_decode(gaps, values, per_weight, record, where)
    return ClusteredTensor(codebook, indices.reshape(record.shape), axis, group_size)


def decode_record_values(record: TensorRecord, reader: PayloadReader, *, buffer: np.ndarray | None = None) -> np.ndarray:
    """The decoded values of a checked record (a clustered tensor's centroid per weight), bit-exact.

    A dense clustered tensor with one codebook and ANS-coded indices is decoded straight into centroid values
    (the decoder writes ``codebook[index]``: no index array, no lookup pass), into `buffer` (a 1-D uint8 array)
    when it is large enough: the result then shares its memory and is only valid until the buffer is used again.
    Any other record is decoded as by :func:`decode_record` and then looked up into a new array."""
    raw = record.raw
    if record.kind == "clustered" and record.layout == "dense" and raw["groups"] == 1 \
            and raw["indices"]["coding"] == "ans":
        where = record.where
        codebook = decode_raw(raw["codebook"], reader, f"{where} codebook", record.dtype, raw["clusters"])
        nbytes = record.elements * record.dtype.itemsize
        out = None
        if buffer is not None and buffer.dtype == np.uint8 and buffer.ndim == 1 and buffer.size >= nbytes:
            out = buffer[:nbytes].view(record.dtype)
        values = decode_symbols(raw["indices"], reader, f"{where} indices", table=codebook, out=out)
        return values.reshape(record.shape)
    tensor = decode_record(record, reader)
    if not isinstance(tensor, ClusteredTensor):
        return tensor
    if tensor.indices.size == 0:  # nothing to look up (and no per-channel layout to build for long empty axes)
        return np.zeros(tensor.shape, dtype=tensor.codebook.dtype)
    return tensor.decode()


def _sparse_decode(gaps, values, background, record: TensorRecord, where: str) -> np.ndarray:
    try:
        return sparse_decode(gaps, values, background, record.elements, dtype=values.dtype)
    except WeightzipError as error:
        raise WzFormatError(f"{where}: {error}") from None
