"""Writing .wz files: atomic, never over an input, over an existing output only when asked."""

import os
import stat

import numpy as np
import pytest
from wz_samples import random_clustered

from weightzip.core.errors import WeightzipError
from weightzip.format import WriteOptions, read_wz, write_wz

TENSORS = {"w": random_clustered((8, 6), 4), "b": np.ones(6, dtype=np.float32)}


def leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_returns_the_file_size_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "m.wz"
    size = write_wz(path, TENSORS)
    assert size == path.stat().st_size
    assert leftovers(tmp_path) == []
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IWUSR and not mode & stat.S_IXUSR


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "m.wz"
    path.write_bytes(b"precious")
    with pytest.raises(WeightzipError, match="already exists"):
        write_wz(path, TENSORS)
    assert path.read_bytes() == b"precious"
    write_wz(path, TENSORS, overwrite=True)
    assert list(read_wz(path)[0]) == ["w", "b"]
    assert leftovers(tmp_path) == []


def test_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path):
    source = tmp_path / "model.keras"
    source.write_bytes(b"the original model")
    os.symlink(source, tmp_path / "alias.wz")
    for target in (source, tmp_path / "alias.wz", tmp_path / "." / "model.keras"):
        with pytest.raises(WeightzipError, match="input file"):
            write_wz(target, TENSORS, overwrite=True, inputs=[source])
    assert source.read_bytes() == b"the original model"


def test_failed_encoding_creates_nothing(tmp_path):
    path = tmp_path / "m.wz"
    with pytest.raises(WeightzipError):
        write_wz(path, {"x": np.zeros(3, dtype=np.complex128)})
    assert not path.exists() and leftovers(tmp_path) == []


def test_failed_write_keeps_the_old_output(tmp_path, monkeypatch):
    path = tmp_path / "m.wz"
    write_wz(path, TENSORS)
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_wz(path, {"other": np.zeros(100)}, overwrite=True)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_directory_target_is_refused(tmp_path):
    with pytest.raises(WeightzipError, match="directory"):
        write_wz(tmp_path, TENSORS, overwrite=True)


def test_a_clustered_tensor_is_never_stored_larger_than_its_float_values(tmp_path):
    from weightzip.core import ClusterConfig, cluster_array
    from weightzip.format import inspect_wz

    rng = np.random.default_rng(0)
    depthwise = rng.normal(size=(3, 3, 32, 1)).astype(np.float32)  # 9 weights per channel, 16 centroids each
    per_channel = cluster_array(depthwise, ClusterConfig(16, init="optimal", axis=2))
    dense = cluster_array(rng.normal(size=(64, 64)).astype(np.float32), ClusterConfig(16, init="optimal"))
    path = tmp_path / "m.wz"
    write_wz(path, {"depthwise": per_channel, "dense": dense})
    tensors, _ = read_wz(path)
    assert isinstance(tensors["depthwise"], np.ndarray)  # 32 x 16 codebook entries > 288 raw values
    np.testing.assert_array_equal(tensors["depthwise"], per_channel.decode())
    assert tensors["depthwise"].dtype == np.float32
    assert not isinstance(tensors["dense"], np.ndarray)  # clustered where that is smaller
    np.testing.assert_array_equal(tensors["dense"].decode(), dense.decode())
    rows = {row.name: row for row in inspect_wz(path).report.rows}
    assert rows["depthwise"].encoded_bytes <= depthwise.nbytes
    write_wz(path, {"depthwise": per_channel}, options=WriteOptions(keep_clustered=True), overwrite=True)
    assert not isinstance(read_wz(path)[0]["depthwise"], np.ndarray)  # as asked
