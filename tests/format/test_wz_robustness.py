"""Damaged, truncated, foreign, future and hostile .wz files give a WzFormatError, never anything else.

Forged files (valid checksums around inconsistent content) check the reader's structural checks and
the stream decoders directly: those must either raise WzFormatError or return well-formed tensors.
"""

import copy
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wz_samples import assert_same_tensors, pruned_array, random_clustered

from weightzip.core import ClusteredTensor, WeightzipError
from weightzip.format import WriteOptions, WzFormatError, decode_wz, encode_wz, read_wz
from weightzip.format.container import PREAMBLE, assemble, disassemble

TENSORS = {
    "fc/kernel": random_clustered((60, 50), 16, density=0.08, seed=1),
    "conv/kernel": random_clustered((3, 3, 4, 8), 8, axis=-1, group_size=3, seed=2),
    "fc/bias": np.linspace(-1, 1, 50, dtype=np.float32),
    "sparse": pruned_array((40,), 0.1, seed=3),
}


def sample_files():
    """The same model encoded every way, so that every decoder path is fuzzed."""
    files = {"auto": encode_wz(TENSORS, {"m": 1})}
    for coding in ("packed", "huffman", "ans"):
        for layout in ("dense", "sparse"):
            files[f"{coding}-{layout}"] = encode_wz(TENSORS, {"m": 1}, WriteOptions(coding=coding, layout=layout))
    return files


FILES = sample_files()
VALID = FILES["auto"]


def check_outcome(data):
    """Reading `data` either fails with WzFormatError or returns the tensors' well-formed types."""
    try:
        tensors, metadata = decode_wz(data)
    except WzFormatError as error:
        assert str(error)
        return None
    assert isinstance(metadata, dict)
    for tensor in tensors.values():
        assert isinstance(tensor, (ClusteredTensor, np.ndarray))
        if isinstance(tensor, ClusteredTensor):
            assert tensor.decode().shape == tensor.shape
    return tensors


def forge(data, edit_header=None, edit_payload=None):
    """Re-assemble `data` after editing its header dict / payload bytes, with all checksums made valid."""
    header, payload = disassemble(data)
    header = copy.deepcopy(header)
    payload = bytearray(payload)
    if edit_payload is not None:
        edit_payload(payload)
        for descriptor in sections(header):
            if isinstance(descriptor.get("offset"), int) and isinstance(descriptor.get("length"), int):
                chunk = bytes(payload[descriptor["offset"]:descriptor["offset"] + descriptor["length"]])
                descriptor["crc32"] = zlib.crc32(chunk)
    if edit_header is not None:
        edit_header(header)
    return assemble(header, bytes(payload))


def sections(header):
    for record in header["tensors"]:
        for value in record.values():
            if isinstance(value, dict) and "crc32" in value:
                yield value


def test_valid_files_read_back_exactly():
    for data in FILES.values():
        assert_same_tensors(decode_wz(data)[0], TENSORS)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(FILES)), position=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_any_byte_flip_is_detected(name, position, xor):
    data = bytearray(FILES[name])
    data[int(position * len(data))] ^= xor
    with pytest.raises(WzFormatError):
        decode_wz(bytes(data))


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(FILES)), keep=st.floats(0, 1, exclude_max=True))
def test_any_truncation_is_detected(name, keep):
    data = FILES[name]
    with pytest.raises(WzFormatError):
        decode_wz(data[: int(keep * len(data))])


@settings(max_examples=100, deadline=None)
@given(garbage=st.binary(max_size=2000), keep_magic=st.booleans())
def test_random_garbage_is_rejected(garbage, keep_magic):
    data = (VALID[:8] if keep_magic else b"") + garbage
    with pytest.raises(WzFormatError):
        decode_wz(data)


def test_foreign_files_name_the_problem(tmp_path):
    for data in (b"PK\x03\x04" + bytes(100), b"\x89HDF\r\n\x1a\n" + bytes(100), b"", b"{}"):
        with pytest.raises(WzFormatError, match="not a .wz file"):
            decode_wz(data)
    with pytest.raises(WzFormatError, match="no such file"):
        read_wz(tmp_path / "missing.wz")
    with pytest.raises(WzFormatError, match="no such file"):
        read_wz(tmp_path)


def test_appended_bytes_are_rejected():
    with pytest.raises(WzFormatError, match="end marker missing"):  # format 1.1: the file ends with its header
        decode_wz(VALID + b"\0")
    header, payload = disassemble(VALID)
    version_1_0 = assemble(header, bytes(payload), header_at_end=False)
    assert_same_tensors(decode_wz(version_1_0)[0], TENSORS)
    with pytest.raises(WzFormatError, match="unexpected bytes"):
        decode_wz(version_1_0 + b"\0" * 8 + b"WZND")


@pytest.mark.parametrize("major, minor, flags, message", [
    (2, 0, 1, "newer version"), (0, 9, 1, "unknown version"), (1, 0, 0x10, "unknown .wz flags")])
def test_future_versions_and_unknown_flags_are_refused(major, minor, flags, message):
    fields = list(PREAMBLE.unpack_from(VALID, 0))
    fields[1:4] = [major, minor, flags]
    data = PREAMBLE.pack(*fields) + VALID[PREAMBLE.size:]
    with pytest.raises(WzFormatError, match=message):
        decode_wz(data)


def test_minor_version_additions_are_accepted():
    fields = list(PREAMBLE.unpack_from(VALID, 0))
    fields[2] = 7
    body = PREAMBLE.pack(*fields) + VALID[PREAMBLE.size:-8]
    data = body + struct.pack("<I4s", zlib.crc32(body), b"WZND")
    assert_same_tensors(decode_wz(data)[0], TENSORS)


def set_shape(shape):
    def edit(header):
        header["tensors"][0]["shape"] = shape
    return edit


@pytest.mark.parametrize("shape", [[2 ** 40], [2 ** 31, 2 ** 31, 2 ** 31], [2 ** 20, 2 ** 20]])
def test_huge_shapes_are_refused_before_allocating(shape):
    data = forge(VALID, edit_header=set_shape(shape))
    tracemalloc.start()
    try:
        with pytest.raises(WzFormatError, match="elements|limit"):
            decode_wz(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(VALID) + (1 << 20)


def test_huge_shape_within_the_limit_is_refused_by_section_sizes():
    data = forge(FILES["packed-dense"], edit_header=set_shape([3000, 1000]))
    with pytest.raises(WzFormatError, match="holds|bytes"):
        decode_wz(data, max_elements=1 << 40)


def test_huge_symbol_counts_are_refused():
    def claim(header):
        header["tensors"][0]["gaps"]["count"] = 10 ** 12
    with pytest.raises(WzFormatError, match="out of range"):
        decode_wz(forge(FILES["ans-sparse"], edit_header=claim))


def test_header_bomb_is_refused():
    fields = list(PREAMBLE.unpack_from(VALID, 0))
    fields[5] = 2 ** 31  # inflated length claim
    with pytest.raises(WzFormatError, match="limit"):
        decode_wz(PREAMBLE.pack(*fields) + VALID[PREAMBLE.size:])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FILES)), tensor=st.integers(0, 3), data=st.data())
def test_forged_header_fields_never_crash(name, tensor, data):
    header, _ = disassemble(FILES[name])
    record = header["tensors"][tensor]
    path = [data.draw(st.sampled_from(sorted(record)))]
    if isinstance(record[path[0]], dict):
        path.append(data.draw(st.sampled_from(sorted(record[path[0]]))))
    value = data.draw(st.one_of(JSON_VALUES, st.integers(-3, 70), st.sampled_from(
        ["packed", "huffman", "ans", "dense", "sparse", "clustered", "array", "float16", "uint8", "bool"])))

    def edit(h):
        target = h["tensors"][tensor]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    check_outcome(forge(FILES[name], edit_header=edit))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FILES)), flips=st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4))
def test_forged_payload_corruption_never_crashes(name, flips):
    def edit(payload):
        for position, xor in flips:
            payload[int(position * len(payload))] ^= xor
    check_outcome(forge(FILES[name], edit_payload=edit))


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(sorted(FILES)), key=st.sampled_from(["metadata", "tensors", "payload_length"]),
       value=JSON_VALUES)
def test_forged_top_level_fields_never_crash(name, key, value):
    def edit(header):
        header[key] = value
    try:
        data = forge(FILES[name], edit_header=edit)
    except WeightzipError:
        return  # the payload length no longer fits: nothing to read
    check_outcome(data)


def test_duplicate_names_are_refused():
    def duplicate(header):
        header["tensors"][1]["name"] = header["tensors"][0]["name"]
    with pytest.raises(WzFormatError, match="twice"):
        decode_wz(forge(VALID, edit_header=duplicate))


def test_header_that_is_not_json_is_refused():
    header_json = b"{not json"
    stored = zlib.compress(header_json)
    preamble = PREAMBLE.pack(b"\x89WZF\r\n\x1a\n", 1, 0, 1, len(stored), len(header_json), zlib.crc32(stored))
    body = preamble + stored
    with pytest.raises(WzFormatError, match="JSON"):
        decode_wz(body + struct.pack("<I4s", zlib.crc32(body), b"WZND"))


def test_error_names_the_tensor_and_section():
    header, payload = disassemble(VALID)
    offset = header["tensors"][0]["codebook"]["offset"]
    payload = bytearray(payload)
    payload[offset] ^= 1
    data = assemble(header, bytes(payload))  # whole-file CRC valid, section CRC stale
    with pytest.raises(WzFormatError, match="fc/kernel.*codebook.*checksum"):
        decode_wz(data)


def test_element_limit_counts_all_tensors_together():
    total = sum(t.indices.size if isinstance(t, ClusteredTensor) else t.size for t in TENSORS.values())
    largest = max(t.indices.size if isinstance(t, ClusteredTensor) else t.size for t in TENSORS.values())
    assert_same_tensors(decode_wz(VALID, max_elements=total)[0], TENSORS)
    for limit in (largest, total - 1):
        with pytest.raises(WzFormatError, match="element limit"):
            decode_wz(VALID, max_elements=limit)
