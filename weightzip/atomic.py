"""Writing outputs so that nothing is lost: never over an input, never half-written, never clobbering.

Every file weightzip produces (`.wz`, `.keras`, `.tflite`, checkpoints) goes through
:func:`atomic_output`: the content is written to a temporary file beside the target, flushed to disk,
then moved into place, so the target is either untouched or complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from weightzip.core.errors import WeightzipError


def check_output_path(path, *, overwrite: bool = False, inputs=()) -> Path:
    """`path` as a Path, after refusing an input file, a directory, or (without `overwrite`) an existing file."""
    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)):
            raise WeightzipError(f"refusing to write {path}: it is an input file ({source})")
    if path.is_dir():
        raise WeightzipError(f"{path} is a directory")
    if path.exists() and not overwrite:
        raise WeightzipError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    return path


WRITEBACK_BYTES = 64 << 20  # written bytes between two early writebacks (see early_writeback)


def early_writeback(stream, start: int) -> int:
    """Start writing the bytes of `stream` (a binary file being written) from offset `start` up to its current
    position to disk now, without waiting; returns that position (the next call's `start`).

    :func:`atomic_output` fsyncs the finished file; without this the kernel writes a file's pages back only once
    they are ~30 s old, so that fsync waits for nearly the whole file (~1 s per 470 MB here: a 1 B-weight `.wz`
    written in 24 s; 4 GB of decompressed safetensors ~8 s), all after the work is done. Started per 64 MiB
    (``posix_fadvise(DONTNEED)``: asynchronous writeback of the dirty pages, clean ones dropped from the cache),
    the writing overlaps the work and the final fsync finds little left; the copy into the page cache costs what
    it did. A stream without a file descriptor (BytesIO) or a system without posix_fadvise: nothing is done."""
    stream.flush()
    position = stream.tell()
    if hasattr(os, "posix_fadvise") and position > start:
        try:
            os.posix_fadvise(stream.fileno(), start, position - start, os.POSIX_FADV_DONTNEED)
        except (OSError, ValueError):  # no file descriptor (io.UnsupportedOperation is both), or refused: no hurry
            pass
    return position


@contextlib.contextmanager
def atomic_output(path, *, overwrite: bool = False, inputs=()):
    """Yield a temporary path beside `path` (same suffix) to write to; publish it to `path` on success.

    Without `overwrite`, publishing uses a hard link, which fails if `path` appeared meanwhile.
    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = check_output_path(path, overwrite=overwrite, inputs=inputs)
    directory = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix="".join(path.suffixes))
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp's 0600 -> what open() would give
    try:
        yield Path(temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        _publish(Path(temporary), path, overwrite)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextlib.contextmanager
def atomic_directory(path, *, overwrite: bool = False, inputs=()):
    """Yield a new temporary directory beside `path` to fill; publish it as `path` on success.

    Without `overwrite`, an existing `path` (file or directory) is refused before anything is created; with it,
    an existing directory is replaced only once the new one is complete. On an exception nothing is left.
    """
    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)) or Path(source).resolve().is_relative_to(path.resolve()):
            raise WeightzipError(f"refusing to write {path}: it is or holds an input ({source})")
    if path.exists() and not overwrite:
        raise WeightzipError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    if path.exists() and not path.is_dir():
        raise WeightzipError(f"{path} exists and is not a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise WeightzipError(f"{parent}: no such directory")
    temporary = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}."))
    os.chmod(temporary, 0o777 & ~_current_umask())
    old = None
    try:
        yield temporary
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.old."))
            os.replace(path, old / "replaced")
        try:
            os.rename(temporary, path)
        except OSError:
            if old is not None:
                os.replace(old / "replaced", path)
            raise WeightzipError(f"{path} appeared while it was being written; left as it is") from None
    finally:
        for leftover in (temporary, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def write_bytes_atomically(path, data: bytes, *, overwrite: bool = False, inputs=()) -> None:
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as temporary:
        temporary.write_bytes(data)


def _publish(temporary: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)  # fails if `path` appeared meanwhile: never clobbers
    except FileExistsError:
        raise WeightzipError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)") from None
    except OSError:  # no hard links on this file system
        if path.exists():
            raise WeightzipError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)") from None
        os.replace(temporary, path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
