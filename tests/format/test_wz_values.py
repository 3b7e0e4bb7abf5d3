"""`WzFile.read_values`: a tensor's decoded values, straight from an ANS stream into centroid values where the
record allows (dense, one codebook), otherwise decoded and looked up: the same bits as ``read(name).decode()``."""

import copy
import zlib

import numpy as np
import pytest
from wz_samples import pruned_array, random_clustered

from weightzip.core import ClusteredTensor
from weightzip.format import WriteOptions, WzFormatError, encode_wz, open_wz, write_wz
from weightzip.format.container import assemble, disassemble


def skewed(shape, k, *, dtype=np.float32, seed=0, axis=None) -> ClusteredTensor:
    """A clustered tensor whose indices are skewed (ANS wins) and whose codebook holds -0.0 and a NaN."""
    rng = np.random.default_rng(seed)
    tensor = random_clustered(shape, k, dtype=dtype, seed=seed, axis=axis)
    codebook = tensor.codebook.copy()
    codebook[:, 0], codebook[:, -1] = np.array(-0.0, dtype), np.array(np.nan, dtype)
    probabilities = np.exp(-np.arange(k) / (k / 6))  # ~3 bits of entropy at k=16: dense and ANS-coded
    indices = rng.choice(k, size=shape, p=probabilities / probabilities.sum()).astype(tensor.indices.dtype)
    return ClusteredTensor(codebook, indices, tensor.axis, tensor.group_size)


def tensors():
    return {"ans16": skewed((300, 70), 16), "ans256_f16": skewed((20_011,), 256, dtype=np.float16, seed=1),
            "per_channel": skewed((40, 30), 8, axis=0, seed=2), "sparse": random_clustered((50, 64), 16, density=0.1),
            "empty": skewed((0, 5), 4, seed=3), "bias": pruned_array((33,), 0.5), "sparse_bias": pruned_array((900,), 0.05)}


@pytest.mark.parametrize("coding", ["auto", "ans", "huffman", "packed"])
def test_read_values_equals_read_then_decode(tmp_path, coding):
    path = tmp_path / "m.wz"
    write_wz(path, tensors(), options=WriteOptions(coding=coding, layout="auto"))
    with open_wz(path) as wz:
        if coding in ("auto", "ans"):
            assert wz._records["ans16"].raw["indices"]["coding"] == "ans"  # the fused path is exercised
        if coding == "ans":
            assert wz._records["ans256_f16"].raw["indices"]["coding"] == "ans"
        for name in wz.tensors:
            value = wz.read(name)
            expected = value.decode() if isinstance(value, ClusteredTensor) and value.indices.size else \
                np.zeros(value.shape, value.codebook.dtype) if isinstance(value, ClusteredTensor) else value
            got = wz.read_values(name)
            assert got.dtype == expected.dtype and got.shape == expected.shape, name
            assert got.tobytes() == expected.tobytes(), name


def resealed(data: bytes, edit) -> bytes:
    """`data` after `edit(header, payload)`, every checksum made valid again (so the decoder itself must object)."""
    header, payload = disassemble(data)
    header, payload = copy.deepcopy(header), bytearray(payload)
    edit(header, payload)
    for record in header["tensors"]:
        for value in record.values():
            if isinstance(value, dict) and "crc32" in value:
                value["crc32"] = zlib.crc32(bytes(payload[value["offset"]:value["offset"] + value["length"]]))
    return assemble(header, bytes(payload))


def test_read_values_refuses_a_corrupt_ans_stream(tmp_path):
    path = tmp_path / "m.wz"
    write_wz(path, {"w": skewed((200, 50), 16)}, options=WriteOptions(coding="ans", layout="dense"))

    def flip_a_word(header, payload):
        indices = header["tensors"][0]["indices"]
        middle = indices["offset"] + indices["table_bytes"] + (indices["length"] - indices["table_bytes"]) // 2
        payload[middle] ^= 0x5A

    bad = tmp_path / "bad.wz"
    bad.write_bytes(resealed(path.read_bytes(), flip_a_word))
    with open_wz(bad) as wz, pytest.raises(WzFormatError, match=r"bad\.wz: tensor .*indices: ANS stream"):
        wz.read_values("w")


def test_read_values_refuses_an_alphabet_larger_than_the_codebook(tmp_path):
    """A header whose index alphabet outgrows its codebook is refused before decoding, never indexed past it."""
    path = tmp_path / "m.wz"
    write_wz(path, {"w": skewed((200, 50), 16)}, options=WriteOptions(coding="ans", layout="dense"))

    def widen(header, payload):
        header["tensors"][0]["indices"]["alphabet"] = 17

    bad = tmp_path / "bad.wz"
    bad.write_bytes(resealed(path.read_bytes(), widen))
    with pytest.raises(WzFormatError, match="alphabet 17"):
        with open_wz(bad) as wz:
            wz.read_values("w")


def test_forged_crc_mutations_through_the_values_path_raise_only_wz_format_errors_or_agree():
    """The structural mutations of benchmarks/fuzz_wz.py (checksums re-sealed) read through the values path:
    each record either decodes to exactly what decode + lookup gives, or both refuse it with a WzFormatError."""
    import random

    from wz_mutations import mutate

    from weightzip.format.container import ByteSource
    from weightzip.format.reader import _checked_source
    from weightzip.format.records import decode_record, decode_record_values

    samples = [encode_wz({"w": skewed((40, 30), 16, seed=5), "c": skewed((12, 5), 4, axis=1, seed=6),
                          "b": pruned_array((20,), 0.3)}, options=WriteOptions(coding=coding, layout="dense"))
               for coding in ("ans", "auto")]
    rng = random.Random(7)
    outcomes = {"agree": 0, "refused": 0}
    for _ in range(300):
        data = mutate(rng, rng.choice(samples))
        try:
            _, records, reader, _ = _checked_source(ByteSource(data), None, "<bytes>", verify_file_crc=False)
        except WzFormatError:
            outcomes["refused"] += 1
            continue
        for record in records:
            try:
                tensor = decode_record(record, reader)
            except WzFormatError:
                with pytest.raises(WzFormatError):
                    decode_record_values(record, reader)
                outcomes["refused"] += 1
                continue
            expected = tensor.decode() if isinstance(tensor, ClusteredTensor) and tensor.indices.size else \
                np.zeros(tensor.shape, tensor.codebook.dtype) if isinstance(tensor, ClusteredTensor) else tensor
            got = decode_record_values(record, reader)
            assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
            outcomes["agree"] += 1
    assert outcomes["refused"] > 50 and outcomes["agree"] > 50


def test_read_values_decodes_into_a_given_buffer_when_it_is_large_enough(tmp_path):
    path = tmp_path / "m.wz"
    write_wz(path, tensors(), options=WriteOptions(coding="ans", layout="dense"))
    fused_names = []
    with open_wz(path) as wz:
        for name in wz.tensors:
            expected = wz.read_values(name)
            buffer = np.full(expected.nbytes + 7, 0xAB, np.uint8)
            got = wz.read_values(name, buffer=buffer)
            assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), name
            raw = wz._records[name].raw
            fused = raw["kind"] == "clustered" and raw["groups"] == 1 and raw["indices"]["coding"] == "ans"
            assert np.shares_memory(got, buffer) == (fused and expected.size > 0), name
            if fused:
                fused_names.append(name)
            small = np.zeros(max(expected.nbytes - 1, 0), np.uint8)
            assert not np.shares_memory(wz.read_values(name, buffer=small), small), name
    assert {"ans16", "ans256_f16"} <= set(fused_names) and "per_channel" not in fused_names
