"""numba's on-disk kernel cache, made safe for processes that compile at the same time.

Every ``@numba.njit(cache=True)`` kernel of weightzip is compiled once per signature and saved beside its module
(or under ``NUMBA_CACHE_DIR``). numba's cache index is a pickled ``{signature: data file}`` map that each saver
reads, extends and writes back without a lock. Two processes compiling different signatures of one kernel at the
same moment (two ``weightzip`` commands on float32 and float64 checkpoints, Dask workers, ``pytest -n 2``) both read
the same index, both choose the same free data file name, and the index can end up mapping one signature to the
other's machine code. The next process that loads that signature runs the wrong code; in weightzip this crashed a
Keras-on-PyTorch training step with SIGSEGV.

:func:`install` makes each save one critical section under an exclusive ``flock`` on ``<index>.lock`` beside the
index, and writes the data file before the index entry that names it. A reader (numba's unchanged, lock-free load)
therefore only ever finds an entry whose file holds that signature's code: files are replaced atomically by numba's
own writer, and a name in the index is never reused for another signature.

numba also keys a cache entry on the SHA-256 of the kernel's *own* source file only. A weightzip kernel that calls
kernels of another module, or reads a module constant (frozen into the machine code), would keep running the code it
was compiled with after that other file changed: an upgrade in place (pip leaves cache files it did not install) or
an edit in a checkout. :func:`install` therefore also makes the source stamp of every kernel defined in weightzip the
digest of its own file *and* of every ``.py`` file of the package (:func:`package_digest`, read once per process).

Where ``fcntl`` does not exist (Windows) or numba's cache class no longer has the methods this relies on, numba's
own behaviour is kept and :data:`INSTALLED` says so.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from pathlib import Path

from numba.core import caching

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_REQUIRED = ("_load_index", "_save_index", "_save_data", "_data_name", "save")

_unlocked_save = getattr(getattr(caching, "IndexDataCacheFile", None), "save", None)
"""numba's own save, kept for the tests that show the race it has."""

INSTALLED = False
"""Whether numba's cache saves are serialised by :func:`install` in this process."""

PACKAGE_DIR = Path(__file__).resolve().parent.parent
"""The weightzip package directory: kernels defined below it get the package-wide source stamp."""

_SourceBacked = getattr(caching, "_SourceFileBackedLocatorMixin", None)
_own_source_stamp = getattr(_SourceBacked, "get_source_stamp", None)
"""numba's stamp of one kernel: the SHA-256 of the file that defines it."""

STAMPS_PACKAGE = False
"""Whether weightzip kernels' cache entries are keyed on the whole package's sources in this process."""


@functools.lru_cache(maxsize=None)
def package_digest(package_dir: Path = PACKAGE_DIR) -> bytes:
    """SHA-256 over the relative path and content of every ``.py`` file under *package_dir*, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.digest()


def package_source_stamp(locator) -> object:
    """numba's stamp of *locator*'s kernel, joined with :func:`package_digest` where the kernel is weightzip's."""
    stamp = _own_source_stamp(locator)
    py_file = getattr(locator, "_py_file", None)
    if not isinstance(stamp, bytes) or py_file is None or not _inside(Path(py_file), PACKAGE_DIR):
        return stamp
    return hashlib.sha256(stamp + package_digest()).digest()


def _inside(path: Path, directory: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(directory)
    except OSError:
        return False


def locked_save(cache_file: caching.IndexDataCacheFile, key, data) -> None:
    """Save one cache entry of *cache_file* as numba does, but under a file lock and data before index."""
    with open(cache_file._index_path + ".lock", "ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            overloads = cache_file._load_index()
            data_name = overloads.get(key)
            if data_name is None:
                taken = set(overloads.values())
                data_name = next(name for name in map(cache_file._data_name, itertools.count(1)) if name not in taken)
            cache_file._save_data(data_name, data)
            if overloads.get(key) != data_name:
                overloads[key] = data_name
                cache_file._save_index(overloads)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def install() -> bool:
    """Route every numba cache save in this process through :func:`locked_save`; idempotent."""
    global INSTALLED
    cache_class = getattr(caching, "IndexDataCacheFile", None)
    if INSTALLED or fcntl is None or cache_class is None:
        return INSTALLED
    if not all(hasattr(cache_class, name) for name in _REQUIRED):
        return False
    cache_class.save = locked_save
    INSTALLED = True
    _install_package_stamp()
    return True


def _install_package_stamp() -> None:
    """Key weightzip kernels' cache entries on the package's sources (kept as numba's where its API differs)."""
    global STAMPS_PACKAGE
    if _own_source_stamp is None:
        return
    _SourceBacked.get_source_stamp = package_source_stamp
    STAMPS_PACKAGE = True


install()
