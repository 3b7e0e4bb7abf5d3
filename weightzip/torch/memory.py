"""Handing freed heap memory back to the operating system after a load.

glibc's allocator keeps freed blocks in its arenas (and below the top of the heap) for reuse, so a
process that decoded a file piece by piece keeps the pieces' pages resident after they were freed.
``malloc_trim(0)`` returns them. Other C libraries (musl, macOS) have no such call: nothing is done there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc); whether it could be asked."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
