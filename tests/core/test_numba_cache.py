"""numba's on-disk cache index stays right when two savers of one kernel overlap (weightzip.core._numba_cache)."""

import threading
import time

from numba.core import caching

import weightzip.core  # noqa: F401  (installs the locked save)
from weightzip.core import _numba_cache


def _overlapping_saves(directory, save):
    """Two savers of one cache index; the first pauses just after reading the index, the second saves meanwhile."""
    first, second = (caching.IndexDataCacheFile(str(directory), "kernel-1.py311", ("stamp", 1)) for _ in range(2))
    first_read = threading.Event()
    read_index = first._load_index

    def slow_read():
        overloads = read_index()
        first_read.set()
        time.sleep(0.3)
        return overloads

    first._load_index = slow_read
    thread = threading.Thread(target=save, args=(first, "signature-a", b"code of a"))
    thread.start()
    assert first_read.wait(10)
    save(second, "signature-b", b"code of b")
    thread.join(10)
    reader = caching.IndexDataCacheFile(str(directory), "kernel-1.py311", ("stamp", 1))
    return reader, reader._load_index()


def test_installed_for_every_numba_cache():
    assert _numba_cache.INSTALLED
    assert caching.IndexDataCacheFile.save is _numba_cache.locked_save


def test_overlapping_saves_keep_each_signature_with_its_own_code(tmp_path):
    reader, overloads = _overlapping_saves(tmp_path, _numba_cache.locked_save)
    assert set(overloads) == {"signature-a", "signature-b"}
    assert overloads["signature-a"] != overloads["signature-b"]
    assert reader.load("signature-a") == b"code of a"
    assert reader.load("signature-b") == b"code of b"


def test_numbas_own_save_loses_or_mixes_entries_when_saves_overlap(tmp_path):
    """The race the lock closes: without it, one signature is lost or maps to the other's code."""
    reader, overloads = _overlapping_saves(tmp_path, _numba_cache._unlocked_save)
    wrong = [key for key, name in overloads.items() if reader.load(key) != b"code of " + key[-1:].encode()]
    assert len(overloads) < 2 or wrong


def _locator_of(py_file):
    def kernel():
        return 0

    return caching.InTreeCacheLocator(kernel, str(py_file))


def test_package_digest_changes_with_any_file_of_the_package(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("X = 1\n")
    (tmp_path / "sub" / "b.py").write_text("Y = 2\n")
    digests = [_numba_cache.package_digest.__wrapped__(tmp_path)]
    (tmp_path / "sub" / "b.py").write_text("Y = 3\n")
    digests.append(_numba_cache.package_digest.__wrapped__(tmp_path))
    (tmp_path / "c.py").write_text("")
    digests.append(_numba_cache.package_digest.__wrapped__(tmp_path))
    assert len(set(digests)) == 3


def test_weightzip_kernels_are_stamped_with_the_whole_package(monkeypatch, tmp_path):
    """A kernel's cache entry goes stale when another weightzip file changes (a callee or a constant it froze in)."""
    assert _numba_cache.STAMPS_PACKAGE
    own_file = _locator_of(_numba_cache.PACKAGE_DIR / "core" / "assign.py")
    stamps = []
    for digest in (b"package one", b"package two"):
        monkeypatch.setattr(_numba_cache, "package_digest", lambda digest=digest: digest)
        stamps.append(own_file.get_source_stamp())
    assert stamps[0] != stamps[1]
    outside = tmp_path / "user_code.py"
    outside.write_text("def kernel():\n    return 0\n")
    assert _locator_of(outside).get_source_stamp() == _numba_cache._own_source_stamp(_locator_of(outside))
