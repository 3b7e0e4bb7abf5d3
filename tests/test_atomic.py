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
