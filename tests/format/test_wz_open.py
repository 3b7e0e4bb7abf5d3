"""`open_wz`: the public reading API tensor by tensor, and `read_packed`, the packed indices as stored."""

import zlib

import numpy as np
import pytest

from weightzip.core import ClusteredTensor
from weightzip.core.bitpack import unpack_bits
from weightzip.format import PackedIndices, WriteOptions, WzFormatError, container, open_wz, read_wz, write_wz
from weightzip.format import reader as wz_reader


def clustered(shape, k, axis, seed):
    rng = np.random.default_rng(seed)
    groups = 1 if axis is None else shape[axis]
    codebook = np.sort(rng.standard_normal((groups, k)), axis=1).astype(np.float32)
    return ClusteredTensor(codebook, rng.integers(0, k, size=shape).astype(np.uint8), axis, 1)


def sample(tmp_path, coding="packed"):
    tensors = {"fc.weight": clustered((6, 30), 5, 0, 1), "emb.weight": clustered((7, 40), 16, None, 2),
               "fc.bias": np.arange(6, dtype=np.float32)}
    path = tmp_path / f"{coding}.wz"
    write_wz(path, tensors, {"framework": "torch"}, options=WriteOptions(coding=coding, layout="dense"))
    return path, tensors


def test_open_wz_lists_every_tensor_and_reads_each_bit_exactly(tmp_path):
    path, tensors = sample(tmp_path)
    with open_wz(path) as wz:
        assert wz.metadata["framework"] == "torch"
        assert set(wz.tensors) == set(tensors)
        info = wz.tensors["emb.weight"]
        assert (info.kind, info.shape, info.clusters, info.axis, info.layout) == ("clustered", (7, 40), 16, None, "dense")
        assert wz.tensors["fc.bias"].clusters is None
        expected, _ = read_wz(path)
        for name in tensors:
            got = wz.read(name)
            if isinstance(got, ClusteredTensor):
                np.testing.assert_array_equal(got.indices, expected[name].indices)
                np.testing.assert_array_equal(got.codebook, expected[name].codebook)
            else:
                np.testing.assert_array_equal(got, expected[name])
        with pytest.raises(WzFormatError, match="no tensor named 'nope'"):
            wz.read("nope")


def test_read_packed_gives_the_stored_bit_stream_and_codebook(tmp_path):
    path, tensors = sample(tmp_path)
    with open_wz(path) as wz:
        packed = wz.read_packed("fc.weight")
        assert isinstance(packed, PackedIndices) and packed.bits == 3 and packed.shape == (6, 30)
        np.testing.assert_array_equal(unpack_bits(packed.data, 180, 3).reshape(6, 30), tensors["fc.weight"].indices)
        np.testing.assert_array_equal(packed.codebook, tensors["fc.weight"].codebook)
        assert (packed.axis, packed.group_size) == (0, 1)
        assert wz.read_packed("fc.bias") is None  # not clustered
    huffman, _ = sample(tmp_path, "huffman")
    with open_wz(huffman) as wz:
        assert wz.read_packed("emb.weight") is None  # not bit-packed: read() decodes it


def test_read_packed_refuses_an_index_outside_the_codebook_even_with_valid_checksums(tmp_path):
    path, _ = sample(tmp_path)

    def first_index_7(stream):  # first index := 7 >= k = 5
        stream[0] |= 0b111

    early = forged(tmp_path, path, "fc.weight", first_index_7)
    for load in (True, False):
        with open_wz(early) as wz, pytest.raises(WzFormatError, match="packed symbol 7 outside alphabet 5"):
            wz.read_packed("fc.weight", load=load)


def test_read_packed_without_loading_checks_the_stream_and_says_where_it_lies_in_the_file(tmp_path):
    path, tensors = sample(tmp_path)
    raw = path.read_bytes()
    with open_wz(path) as wz:
        packed = wz.read_packed("fc.weight", load=False)
        assert packed.data is None and packed.length == 68  # 180 values at 3 bits
        stream = raw[packed.file_offset:packed.file_offset + packed.length]
        np.testing.assert_array_equal(unpack_bits(stream, 180, 3).reshape(6, 30), tensors["fc.weight"].indices)
        np.testing.assert_array_equal(packed.codebook, tensors["fc.weight"].codebook)
    corrupt = bytearray(raw)
    corrupt[packed.file_offset + 3] ^= 0x10  # inside the stream; its CRC no longer matches
    broken = tmp_path / "broken.wz"
    broken.write_bytes(bytes(corrupt))
    with open_wz(broken) as wz, pytest.raises(WzFormatError, match="checksum mismatch"):
        wz.read_packed("fc.weight", load=False)


def forged(tmp_path, path, name, edit):
    """A copy of the .wz file `path` whose tensor `name`'s index bytes were changed by `edit` (bytearray ->
    None), with the section's CRC-32 fixed to match (only the alphabet check can catch it)."""
    header, payload = container.disassemble(path.read_bytes())
    payload = bytearray(payload)
    section = next(r for r in header["tensors"] if r["name"] == name)["indices"]
    stream = payload[section["offset"]:section["offset"] + section["length"]]
    edit(stream)
    payload[section["offset"]:section["offset"] + section["length"]] = stream
    section["crc32"] = zlib.crc32(bytes(stream))
    out = tmp_path / "forged-chunks.wz"
    out.write_bytes(container.assemble(header, bytes(payload)))
    return out


def test_read_packed_without_loading_reads_the_stream_once_and_reports_corruption_before_the_alphabet(
        tmp_path, monkeypatch):
    # k = 5 (3 bits), 6 x 4000 values: 9000 bytes checked in chunks of 96 bytes (monkeypatched from 1 MiB),
    # each read once for both the CRC and the alphabet check.
    monkeypatch.setattr(wz_reader, "_CHECK_CHUNK_BYTES", 96)
    tensor = clustered((6, 4000), 5, 0, 3)
    path = tmp_path / "long.wz"
    write_wz(path, {"fc.weight": tensor}, {"framework": "torch"}, options=WriteOptions(coding="packed", layout="dense"))
    with open_wz(path) as wz:
        before = wz._reader.source.bytes_read
        packed = wz.read_packed("fc.weight", load=False)
        assert wz._reader.source.bytes_read - before == packed.length + packed.codebook.nbytes
    stream = path.read_bytes()[packed.file_offset:packed.file_offset + packed.length]
    np.testing.assert_array_equal(unpack_bits(stream, 24000, 3).reshape(6, 4000), tensor.indices)

    def last_index_7(stream):  # index 23999 sits at bits [71997, 72000) of the 9000-byte stream
        stream[-1] |= 0b11100000

    late = forged(tmp_path, path, "fc.weight", last_index_7)
    with open_wz(late) as wz, pytest.raises(WzFormatError, match="packed symbol 7 outside alphabet 5"):
        wz.read_packed("fc.weight", load=False)
    corrupt = bytearray(path.read_bytes())
    corrupt[packed.file_offset] |= 0b111  # index 0 := 7 in the first chunk, and the CRC no longer matches
    broken = tmp_path / "broken.wz"
    broken.write_bytes(bytes(corrupt))
    with open_wz(broken) as wz, pytest.raises(WzFormatError, match="indices: section checksum mismatch"):
        wz.read_packed("fc.weight", load=False)


def test_array_offset_checks_a_raw_array_and_says_where_its_values_lie(tmp_path):
    path, tensors = sample(tmp_path)
    raw = path.read_bytes()
    with open_wz(path) as wz:
        offset = wz.array_offset("fc.bias")
        assert wz.array_offset("fc.weight") is None  # clustered
        packed = wz.read_packed("fc.weight", load=False)
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4", count=6, offset=offset), tensors["fc.bias"])
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4", count=30, offset=packed.codebook_offset).reshape(6, 5),
                                  tensors["fc.weight"].codebook)
    corrupt = bytearray(raw)
    corrupt[offset + 5] ^= 0x01
    broken = tmp_path / "broken.wz"
    broken.write_bytes(bytes(corrupt))
    with open_wz(broken) as wz, pytest.raises(WzFormatError, match="'fc.bias' data: section checksum mismatch"):
        wz.array_offset("fc.bias")
