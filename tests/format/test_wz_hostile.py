"""Hostile files (issue 10): each is answered by a WzFormatError (or one CLI line, exit 2), and nothing is
allocated from a claimed size before the claim is checked against the bytes that back it."""

import random
import tracemalloc

import numpy as np
import pytest
from wz_mutations import mutate
from wz_samples import assert_same_tensors, pruned_array, random_clustered

from weightzip.core import ClusteredTensor
from weightzip.core.bitpack import pack_bits
from weightzip.format import WriteOptions, WzFormatError, decode_dense, decode_wz, encode_wz
from weightzip.format.container import assemble, disassemble
from weightzip.format.streams import PayloadBuilder


def peak_allocation(function):
    """(result or raised exception, peak bytes traced while running `function`)."""
    tracemalloc.start()
    try:
        try:
            outcome = function()
        except Exception as error:  # noqa: BLE001 - returned for the caller to assert on
            outcome = error
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def file_with(records, payload: PayloadBuilder, metadata=None) -> bytes:
    return assemble({"metadata": metadata or {}, "tensors": records, "payload_length": payload.length},
                    payload.payload())


def empty_array_record(payload, shape):
    return {"name": "empty", "kind": "array", "shape": shape, "dtype": "float32", "nonzero": 0,
            "layout": "dense", "data": payload.add(b"")}


def empty_clustered_record(payload, shape, layout):
    record = {"name": "empty", "kind": "clustered", "shape": shape, "dtype": "float32", "nonzero": 0,
              "clusters": 2, "groups": 1, "axis": 1, "group_size": max(shape[1], 1), "index_dtype": "uint8",
              "layout": layout, "codebook": payload.add(np.zeros(2, "<f4").tobytes())}
    stream = {"coding": "packed", "count": 0, "alphabet": 2, "bits": 1}
    if layout == "dense":
        record["indices"] = payload.add(b"", **stream)
    else:
        record.update(background=[0], gap_bits=4, gaps=payload.add(b"", **{**stream, "alphabet": 16, "bits": 4}),
                      values=payload.add(b"", **stream))
    return record


@pytest.mark.parametrize("shape", [[0, 1 << 40], [1 << 61, 0], [0, 1 << 31, 1 << 31], [0, 1 << 61, 1 << 61]])
@pytest.mark.parametrize("kind", ["array", "clustered-dense", "clustered-sparse"])
def test_a_zero_length_axis_does_not_make_a_huge_one_free(shape, kind):
    payload = PayloadBuilder()
    record = empty_array_record(payload, shape) if kind == "array" else \
        empty_clustered_record(payload, shape, kind.split("-")[1])
    data = file_with([record], payload)
    assert len(data) < 600
    outcome, peak = peak_allocation(lambda: decode_dense(decode_wz(data)[0]))
    assert isinstance(outcome, WzFormatError), outcome
    assert "element limit" in str(outcome) and "no elements" in str(outcome)
    assert peak < 64 * len(data) + (1 << 20)


@pytest.mark.parametrize("kind", ["array", "clustered-dense", "clustered-sparse"])
def test_empty_tensors_with_modest_axes_read_back(kind):
    payload = PayloadBuilder()
    record = empty_array_record(payload, [0, 1000]) if kind == "array" else \
        empty_clustered_record(payload, [0, 1000], kind.split("-")[1])
    tensors, _ = decode_wz(file_with([record], payload))
    dense = decode_dense(tensors)["empty"]
    assert dense.shape == (0, 1000) and dense.dtype == np.float32


def test_writer_and_reader_agree_on_zero_codebook_rows():
    # A per-channel tensor with no channels has no codebook rows: the writer writes it, the reader reads it.
    tensors = {"no_channels": ClusteredTensor(np.zeros((0, 4), np.float32), np.zeros((0, 3), np.uint8), axis=0),
               "w": random_clustered((4, 3), 4, axis=0)}
    for layout in ("dense", "sparse"):
        data = encode_wz(tensors, options=WriteOptions(layout=layout, keep_clustered=True))
        header, _ = disassemble(data)
        assert header["tensors"][0]["groups"] == 0
        read, _ = decode_wz(data)
        assert_same_tensors(read, tensors)
        assert decode_dense(read)["no_channels"].shape == (0, 3)


def ans_file(count, counts, words):
    """A one-tensor file whose k=len(counts) dense indices are an ANS stream of `count` symbols."""
    payload = PayloadBuilder()
    count_bits = max(1, int(max(counts)).bit_length())
    table = pack_bits(np.asarray(counts), count_bits)
    k = len(counts)
    record = {"name": "w", "kind": "clustered", "shape": [count], "dtype": "float32", "nonzero": 0,
              "clusters": k, "groups": 1, "axis": None, "group_size": 1, "index_dtype": "uint8", "layout": "dense",
              "codebook": payload.add(np.zeros(k, "<f4").tobytes())}
    record["indices"] = payload.add(table + np.asarray(words, "<u4").tobytes(), coding="ans", count=count,
                                    alphabet=k, count_bits=count_bits, table_bytes=len(table))
    return file_with([record], payload)


def test_ans_symbol_count_is_bounded_by_the_stream_length():
    # 2^28 symbols of a uniform 2-symbol model carry 2^28 bits: 100 words cannot hold them.
    data = ans_file(1 << 28, [1 << 27, 1 << 27], np.arange(100))
    assert len(data) < 1000
    outcome, peak = peak_allocation(lambda: decode_wz(data))
    assert isinstance(outcome, WzFormatError) and "cannot hold" in str(outcome), outcome
    assert peak < 64 * len(data) + (1 << 20)


def test_ans_streams_the_writer_makes_pass_the_bound():
    # Skewed and uniform streams, near the bound: every one the writer produces reads back.
    rng = np.random.default_rng(0)
    for p_zero in (0.5, 0.9, 0.999, 1.0):
        indices = np.where(rng.random(5000) < p_zero, 0, rng.integers(1, 4, 5000)).astype(np.uint8)
        tensor = ClusteredTensor(np.arange(4, dtype=np.float32)[None], indices)
        data = encode_wz({"w": tensor}, options=WriteOptions(coding="ans", layout="dense"))
        assert_same_tensors(decode_wz(data)[0], {"w": tensor})


STRUCTURAL_SAMPLES = [encode_wz({
    "fc": random_clustered((30, 20), 8, density=0.1, seed=1),
    "conv": random_clustered((3, 3, 2, 4), 4, axis=-1, group_size=3, seed=2),
    "bias": np.linspace(-1, 1, 20, dtype=np.float32), "sparse": pruned_array((40,), 0.1, seed=3),
    "count": np.array(3, dtype=np.int64)}, {"framework": "test"}, WriteOptions(coding=coding, layout=layout))
    for coding in ("packed", "huffman", "ans") for layout in ("dense", "sparse")]


def test_forged_crc_structural_mutations_raise_only_wz_format_errors():
    """A bounded run of benchmarks/fuzz_wz.py's mutations (that script runs >= 100,000 of them)."""
    rng = random.Random(1234)
    outcomes = {"read": 0, "refused": 0}
    for _ in range(400):
        data = mutate(rng, rng.choice(STRUCTURAL_SAMPLES))
        try:
            tensors, metadata = decode_wz(data)
        except WzFormatError as error:
            assert str(error) and "\n" not in str(error)
            outcomes["refused"] += 1
            continue
        for name, dense in decode_dense(tensors).items():
            assert isinstance(dense, np.ndarray), name
        outcomes["read"] += 1
    assert outcomes["refused"] > 100 and outcomes["read"] > 20  # the mutations reach past the envelope
