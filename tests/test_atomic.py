import os

import pytest

from weightzip.atomic import atomic_output, check_output_path, write_bytes_atomically
from weightzip.core.errors import WeightzipError


def test_writes_complete_file(tmp_path):
    target = tmp_path / "out.bin"
    write_bytes_atomically(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_existing_output_is_kept_without_overwrite(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(WeightzipError, match="already exists"):
        write_bytes_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    write_bytes_atomically(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"


def test_input_is_never_overwritten_even_with_overwrite(tmp_path):
    source = tmp_path / "model.keras"
    source.write_bytes(b"model")
    with pytest.raises(WeightzipError, match="input file"):
        write_bytes_atomically(source, b"x", overwrite=True, inputs=(source,))
    assert source.read_bytes() == b"model"


def test_failure_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.keras"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as temporary:
            assert temporary.suffix == ".keras" and temporary.parent == tmp_path
            temporary.write_bytes(b"half")
            raise RuntimeError("writer crashed")
    assert os.listdir(tmp_path) == []


def test_output_appearing_meanwhile_is_not_clobbered(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(WeightzipError, match="already exists"):
        with atomic_output(target) as temporary:
            temporary.write_bytes(b"mine")
            target.write_bytes(b"theirs")
    assert target.read_bytes() == b"theirs"


def test_directory_is_refused(tmp_path):
    with pytest.raises(WeightzipError, match="is a directory"):
        check_output_path(tmp_path, overwrite=True)


def test_early_writeback_asks_for_the_written_range_and_leaves_the_bytes_alone(tmp_path, monkeypatch):
    import io

    from weightzip import atomic

    calls = []
    monkeypatch.setattr(atomic.os, "posix_fadvise", lambda fd, offset, length, advice: calls.append(
        (offset, length, advice)), raising=False)
    with open(tmp_path / "f.bin", "wb") as stream:
        stream.write(b"a" * 1000)
        assert atomic.early_writeback(stream, 0) == 1000
        stream.write(b"b" * 24)
        assert atomic.early_writeback(stream, 1000) == 1024
        assert atomic.early_writeback(stream, 1024) == 1024  # nothing new: no call
    assert calls == [(0, 1000, os.POSIX_FADV_DONTNEED), (1000, 24, os.POSIX_FADV_DONTNEED)]
    assert (tmp_path / "f.bin").read_bytes() == b"a" * 1000 + b"b" * 24
    buffer = io.BytesIO()
    buffer.write(b"xyz")
    assert atomic.early_writeback(buffer, 0) == 3 and len(calls) == 2  # no file descriptor: nothing to do


def test_streamed_writers_start_writeback_as_they_go_and_write_the_same_bytes(tmp_path, monkeypatch):
    import numpy as np

    from weightzip import atomic, shards
    from weightzip.format import encode_wz, write_wz, writer

    ranges = []
    real = atomic.early_writeback

    def recorded(stream, start):
        end = real(stream, start)
        ranges.append((start, end))
        return end

    for module in (writer, shards):
        monkeypatch.setattr(module, "WRITEBACK_BYTES", 4096)
        monkeypatch.setattr(module, "early_writeback", recorded)
    tensors = {f"t{i}": np.full(3000, i + 1, dtype=np.float32) for i in range(4)}  # 12 kB each, stored raw
    write_wz(tmp_path / "m.wz", tensors)
    assert len(ranges) == 4 and ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert (tmp_path / "m.wz").read_bytes() == encode_wz(tensors)
    ranges.clear()
    shards.write_safetensors_arrays(tmp_path / "m.safetensors", [(name, "F32", (3000,)) for name in tensors],
                                    tensors.__getitem__)
    assert len(ranges) == 4 and ranges[-1][1] == (tmp_path / "m.safetensors").stat().st_size
    from safetensors.numpy import load_file

    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert all(np.array_equal(loaded[name], tensors[name]) for name in tensors)
