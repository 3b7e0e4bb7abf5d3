"""XLA typed-FFI handlers written with numba: a jitted JAX step calls :mod:`._numba_kernels` in place.

``jax.pure_callback`` would copy every kernel-sized input and output through Python at each step; an
FFI target runs inside the compiled XLA program on XLA's own buffers. The handler ABI is XLA's C API
(``jaxlib/include/xla/ffi/api/c_api.h``, API 0.x): ``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)``,
read here field by field with the struct offsets of a 64-bit build. A handler answers the metadata
query that XLA may send at registration, runs only at the execute stage, and returns NULL (success).
Kernels cannot raise inside XLA: invalid input must be reported through the outputs (NaN).
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# Offsets in XLA_FFI_CallFrame, in 8-byte words: extension_start, then args.args and rets.rets (void**).
_FRAME_WORDS, _EXTENSION, _ARGS, _RETS = 15, 1, 9, 14
_STAGE_BYTE = 32  # XLA_FFI_ExecutionStage (int32)
_EXECUTE_STAGE = 3
_METADATA_EXTENSION = 1
# The C API version these offsets follow (XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR).
_API_MAJOR, _API_MINOR = 0, 3
HANDLER_SIGNATURE = types.voidptr(types.int64)


@intrinsic
def _pointer(typingctx, address):
    """The int64 `address` as a void pointer (for ``numba.carray``)."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.int64), codegen


@numba.njit(inline="always")
def _words(address, count):
    return numba.carray(_pointer(address), (count,), dtype=np.int64)


@numba.njit(inline="always")
def _int32s(address, count):
    return numba.carray(_pointer(address), (count,), dtype=np.int32)


@numba.njit(inline="always")
def success():
    """The handler's return value on success (a NULL XLA_FFI_Error*)."""
    return _pointer(0)


@numba.njit
def should_execute(frame) -> bool:
    """Whether the call frame asks for the computation; a metadata query is answered here instead."""
    extension = _words(frame, _FRAME_WORDS)[_EXTENSION]
    if extension != 0 and _int32s(extension + 8, 1)[0] == _METADATA_EXTENSION:
        metadata = _words(extension, 4)[3]  # XLA_FFI_Metadata_Extension.metadata
        fields = _words(metadata, 6)
        fields[1] = 24  # api_version.struct_size
        fields[2] = 0  # api_version.extension_start
        version = _int32s(metadata + 24, 3)
        version[0], version[1], version[2] = _API_MAJOR, _API_MINOR, 0  # major, minor, traits
        fields[5] = 0  # state_type_id: XLA_FFI_UNKNOWN_TYPE_ID
        return False
    return _int32s(frame + _STAGE_BYTE, 1)[0] == _EXECUTE_STAGE


@numba.njit(inline="always")
def _buffer_fields(frame, table_word, position):
    table = _words(frame, _FRAME_WORDS)[table_word]
    return _words(_words(table, position + 1)[position], 6)  # XLA_FFI_Buffer: data at word 3, rank 4, dims 5


@numba.njit
def _size(fields):
    count = 1
    if fields[4] > 0:
        dims = _words(fields[5], fields[4])
        for axis in range(fields[4]):
            count *= dims[axis]
    return count


@numba.njit
def flat_argument(frame, position, dtype):
    """Argument `position` of the call as a flat array of `dtype` (XLA's buffer, not a copy)."""
    fields = _buffer_fields(frame, _ARGS, position)
    return numba.carray(_pointer(fields[3]), (_size(fields),), dtype=dtype)


@numba.njit(inline="always")
def _matrix(fields, dtype):
    dims = _words(fields[5], 2)
    return numba.carray(_pointer(fields[3]), (dims[0], dims[1]), dtype=dtype)


@numba.njit
def matrix_argument(frame, position, dtype):
    """A rank-2 argument as a 2-D array of `dtype`."""
    return _matrix(_buffer_fields(frame, _ARGS, position), dtype)


@numba.njit
def flat_result(frame, position, dtype):
    """Result `position` of the call as a flat array of `dtype`, to be written."""
    fields = _buffer_fields(frame, _RETS, position)
    return numba.carray(_pointer(fields[3]), (_size(fields),), dtype=dtype)


@numba.njit
def matrix_result(frame, position, dtype):
    """A rank-2 result as a 2-D array of `dtype`, to be written."""
    return _matrix(_buffer_fields(frame, _RETS, position), dtype)


def register(name: str, handler) -> None:
    """Register a ``numba.cfunc(HANDLER_SIGNATURE)`` as the CPU FFI target `name` of JAX."""
    import jax

    capsule_new = ctypes.pythonapi.PyCapsule_New
    capsule_new.restype = ctypes.py_object
    capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    jax.ffi.register_ffi_target(name, capsule_new(handler.address, None, None), platform="cpu")
