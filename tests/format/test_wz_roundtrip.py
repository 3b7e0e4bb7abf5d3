"""Writing then reading .wz files gives every tensor back bit-exactly, whatever the encoding chosen."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wz_samples import assert_same_tensors, pruned_array, random_clustered

from weightzip.core import ClusterConfig, cluster_array
from weightzip.format import WriteOptions, decode_wz, encode_wz, read_wz, read_wz_dense, write_wz
from weightzip.format.container import disassemble

CODINGS = ["auto", "packed", "huffman", "ans"]
LAYOUTS = ["auto", "dense", "sparse"]


@st.composite
def clustered_tensors(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=rank, max_size=rank)))
    k = draw(st.sampled_from([1, 2, 3, 4, 7, 16, 32, 255, 256, 257]))
    axis = draw(st.one_of(st.none(), st.integers(-rank, rank - 1)))
    group_size = draw(st.integers(1, 3)) if axis is not None else 1
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    index_type = draw(st.sampled_from([None, np.int64, np.uint32]))
    return random_clustered(shape, k, density=density, axis=axis, group_size=group_size, dtype=dtype,
                            seed=draw(st.integers(0, 2 ** 32 - 1)), index_type=index_type)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor=clustered_tensors(), coding=st.sampled_from(CODINGS), layout=st.sampled_from(LAYOUTS),
       gap_bits=st.one_of(st.none(), st.integers(1, 16)))
def test_clustered_round_trip_is_bit_exact(tensor, coding, layout, gap_bits):
    tensors = {"w": tensor, "bias": np.arange(3, dtype=np.float32)}
    data = encode_wz(tensors, {"k": tensor.number_of_clusters},
                     WriteOptions(coding=coding, layout=layout, gap_bits=gap_bits, keep_clustered=True))
    decoded, metadata = decode_wz(data)
    assert metadata == {"k": tensor.number_of_clusters}
    assert_same_tensors(decoded, tensors)


@settings(max_examples=80, deadline=None)
@given(dtype=st.sampled_from(["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                              "uint16", "uint32", "uint64", "bool"]),
       shape=st.lists(st.integers(0, 6), max_size=3), density=st.floats(0, 1), layout=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 2 ** 32 - 1))
def test_plain_array_round_trip_is_bit_exact(dtype, shape, density, layout, seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    array = np.array(raw.view(dtype).reshape(shape) if dtype != "bool" else raw.reshape(shape) > 127)
    array[rng.random(array.shape) >= density] = 0
    tensors = {"a": array}
    assert_same_tensors(decode_wz(encode_wz(tensors, options=WriteOptions(layout=layout)))[0], tensors)


def test_special_float_values_survive_sparse_and_dense():
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
    for layout in ("dense", "sparse"):
        tensors = {"s": special, "scalar": np.float64(2.5) * np.ones(()), "empty": np.zeros((0, 3))}
        assert_same_tensors(decode_wz(encode_wz(tensors, options=WriteOptions(layout=layout)))[0], tensors)


def test_real_clustering_output_and_metadata_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    kernel = pruned_array((40, 30), 0.1)
    conv = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
    tensors = {
        "fc/kernel": cluster_array(kernel, ClusterConfig(16, preserve_sparsity=True)),
        "conv/kernel": cluster_array(conv, ClusterConfig(8, axis=-1, group_size=3, init="kmeans++", seed=0)),
        "fc/bias": rng.normal(size=30).astype(np.float32),
        "bn/count": np.array(7, dtype=np.int64),
    }
    metadata = {"framework": "keras", "layers": [{"name": "fc", "units": 30}], "note": "naïve ✓", "ok": True}
    path = tmp_path / "model.wz"
    size = write_wz(path, tensors, metadata)
    assert size == path.stat().st_size
    decoded, read_metadata = read_wz(path)
    assert read_metadata == metadata
    assert_same_tensors(decoded, tensors)
    dense, _ = read_wz_dense(path)
    np.testing.assert_array_equal(dense["fc/kernel"], tensors["fc/kernel"].decode())
    assert dense["fc/kernel"].dtype == np.float32
    np.testing.assert_array_equal(dense["fc/bias"], tensors["fc/bias"])


def test_auto_is_never_larger_than_any_forced_choice():
    tensors = {"fc": random_clustered((120, 200), 16, density=0.08, seed=1),
               "conv": random_clustered((3, 3, 16, 32), 32, density=0.6, axis=-1, seed=2),
               "dense_bias": np.linspace(-1, 1, 200, dtype=np.float32),
               "sparse_bias": pruned_array(2000, 0.02, seed=3)}
    auto = len(encode_wz(tensors))
    for coding in CODINGS:
        for layout in LAYOUTS:
            assert auto <= len(encode_wz(tensors, options=WriteOptions(coding=coding, layout=layout)))


@pytest.mark.parametrize("k, bits", [(2, 1), (5, 3), (16, 4), (17, 5), (256, 8), (300, 9)])
def test_packing_stores_ceil_log2_k_bits_per_index(k, bits):
    tensor = random_clustered((100, 81), k, seed=0)
    data = encode_wz({"w": tensor}, options=WriteOptions(coding="packed", layout="dense"))
    header, _ = disassemble(data)
    (record,) = header["tensors"]
    assert record["indices"]["bits"] == bits
    assert record["indices"]["length"] == -(-8100 * bits // 8)
    assert record["codebook"]["length"] == 4 * k


def test_float16_codebook_option_halves_the_codebook_and_reads_back_float16():
    tensor = random_clustered((64, 8), 16, axis=-1, dtype=np.float32)
    decoded, _ = decode_wz(encode_wz({"w": tensor}, options=WriteOptions(codebook_dtype="float16")))
    assert decoded["w"].codebook.dtype == np.float16
    np.testing.assert_array_equal(decoded["w"].codebook, tensor.codebook.astype(np.float16))
    np.testing.assert_array_equal(decoded["w"].indices, tensor.indices)


@pytest.mark.parametrize("bad, message", [
    ({1: np.zeros(2)}, "names"),
    ({"x": np.zeros(2, dtype=np.complex64)}, "dtype"),
    ({"x": "not an array"}, "dtype"),
])
def test_bad_tensors_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        encode_wz(bad)


def test_inconsistent_clustered_tensor_is_refused():
    from weightzip.core import ClusteredTensor
    good = random_clustered((4, 6), 4, axis=1, group_size=2)
    with pytest.raises(ValueError, match="rows"):
        encode_wz({"w": ClusteredTensor(good.codebook[:2], good.indices, 1, 2)})
    with pytest.raises(ValueError, match="lie in"):
        encode_wz({"w": ClusteredTensor(good.codebook, good.indices + 4, 1, 2)})
    with pytest.raises(ValueError, match="metadata"):
        encode_wz({"w": good}, {"x": float("nan")})
    with pytest.raises(ValueError, match="coding"):
        WriteOptions(coding="zip")


def test_background_by_sort_matches_background_by_histogram(monkeypatch):
    # Huge groups × k histograms take a sort-based path; both must give the same file.
    import weightzip.format.records as records
    tensors = {"w": random_clustered((30, 12), 8, density=0.2, axis=1, group_size=5, seed=4)}
    options = WriteOptions(layout="sparse")
    by_histogram = encode_wz(tensors, options=options)
    monkeypatch.setattr(records, "_BINCOUNT_LIMIT", 0)
    assert encode_wz(tensors, options=options) == by_histogram
    assert_same_tensors(decode_wz(by_histogram)[0], tensors)


def test_numpy_integer_axis_is_stored_as_json():
    from weightzip.core import ClusteredTensor
    tensor = random_clustered((4, 6), 4, axis=1, group_size=2)
    tensors = {"w": ClusteredTensor(tensor.codebook, tensor.indices, np.int64(1), np.int64(2))}
    decoded = decode_wz(encode_wz(tensors))[0]["w"]
    assert (decoded.axis, decoded.group_size) == (1, 2)
    np.testing.assert_array_equal(decoded.indices, tensor.indices)
