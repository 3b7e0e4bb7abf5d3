"""Format 1.1: the writer streams sections to disk and ends with the header (the index of every section);
`read_tensor`, `inspect_wz` and `read_metadata` read only the header and the sections they need."""

import os
import tracemalloc

import numpy as np
import pytest
from wz_samples import assert_same_tensors, random_clustered

from weightzip.core.errors import WeightzipError
from weightzip.format import (
    WzFormatError,
    container,
    encode_wz,
    inspect_wz,
    read_metadata,
    read_tensor,
    read_wz,
    write_wz,
)

BIG = 1 << 20  # float32 weights of the big tensor: 4 MiB on disk


def model():
    rng = np.random.default_rng(0)
    return {"blocks.0.big": rng.normal(size=BIG).astype(np.float32),
            "blocks.1.fc": random_clustered((64, 32), 16, density=0.2, seed=1),
            "blocks.1.bias": np.linspace(-1, 1, 32, dtype=np.float32)}


@pytest.fixture
def counted_reads(monkeypatch):
    """Bytes returned by the reader's positioned reads."""
    counter = {"bytes": 0}
    real = os.pread

    def pread(fd, length, offset):
        chunk = real(fd, length, offset)
        counter["bytes"] += len(chunk)
        return chunk

    monkeypatch.setattr(container.os, "pread", pread)
    return counter


def test_one_tensor_and_the_table_read_only_what_they_need(tmp_path, counted_reads):
    path = tmp_path / "m.wz"
    tensors = model()
    size = write_wz(path, tensors, {"framework": "test"})
    assert size > 4 * BIG
    counted_reads["bytes"] = 0
    assert_same_tensors({"blocks.1.fc": read_tensor(path, "blocks.1.fc")}, {"blocks.1.fc": tensors["blocks.1.fc"]})
    assert counted_reads["bytes"] < 4096  # preamble, header, footer and the fc sections: not the 4 MiB tensor
    counted_reads["bytes"] = 0
    summary = inspect_wz(path)
    assert summary.version == "1.1" and summary.report.file_bytes == size
    assert read_metadata(path) == {"framework": "test"}
    assert counted_reads["bytes"] < 4096
    counted_reads["bytes"] = 0
    assert_same_tensors(read_wz(path)[0], tensors)  # the whole read checks the whole-file CRC
    assert size <= counted_reads["bytes"] <= 2 * size + 4096


def test_read_tensor_checks_what_it_reads(tmp_path):
    path = tmp_path / "m.wz"
    write_wz(path, model())
    with pytest.raises(WzFormatError, match="no tensor named 'nope'"):
        read_tensor(path, "nope")
    data = bytearray(path.read_bytes())
    data[container.PREAMBLE.size + 10] ^= 1  # inside the big tensor's section
    path.write_bytes(bytes(data))
    assert read_tensor(path, "blocks.1.bias").shape == (32,)  # an untouched tensor still reads
    with pytest.raises(WzFormatError, match="blocks.0.big.*checksum"):
        read_tensor(path, "blocks.0.big")
    with pytest.raises(WzFormatError, match="whole-file checksum"):
        read_wz(path)


def test_the_writer_streams_one_tensor_at_a_time(tmp_path):
    count, weights = 8, 1 << 19  # 8 tensors of 2 MiB: 16 MiB of file

    def tensors():
        for index in range(count):
            yield f"layer.{index}", np.full(weights, index + 0.5, dtype=np.float32) + np.arange(weights, dtype=np.float32)

    path = tmp_path / "m.wz"
    tracemalloc.start()
    try:
        size = write_wz(path, tensors())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == path.stat().st_size > count * 4 * weights
    assert peak < 4 * (4 * weights)  # a few copies of one tensor, not the 16 MiB file
    assert path.read_bytes() == encode_wz(dict(tensors()))
    assert list(read_wz(path)[0]) == [f"layer.{i}" for i in range(count)]


def test_streamed_names_must_be_unique_pairs(tmp_path):
    with pytest.raises(WeightzipError, match="given twice"):
        write_wz(tmp_path / "a.wz", iter([("x", np.ones(2)), ("x", np.ones(2))]))
    with pytest.raises(WeightzipError, match="pairs"):
        write_wz(tmp_path / "b.wz", [np.ones(2)])
    assert list(tmp_path.iterdir()) == []


def test_crc32_combine_matches_zlib():
    import zlib

    rng = np.random.default_rng(0)
    for length in (0, 1, 7, 28, 1000, 65537):
        a, b = rng.bytes(28), rng.bytes(length)
        assert container.crc32_combine(zlib.crc32(a), zlib.crc32(b), length) == zlib.crc32(a + b)
