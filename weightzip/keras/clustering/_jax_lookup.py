"""The clustered kernel on the JAX backend (CPU, float32): the search with the gather, and the
centroid gradient's segment sum, as numba kernels (:mod:`._numba_kernels`) called from the jitted step
through XLA FFI targets (:mod:`._xla_ffi`).

XLA:CPU runs the portable path of :func:`.ops.clustered_kernel` well except for two loops: the counted
search (not vectorised) and above all the scatter-add of the centroid gradient, which is serial. Here
the forward pass is one parallel pass writing the clustered kernel and each weight's table position (one
byte where the table has at most 256 entries); the backward pass sums the upstream gradient per
position in one more pass. The gradients are those of :func:`.ops.shared_weight_lookup`: per table
entry, the sum (or mean) of its members' upstream gradients; to the original weights, the upstream
gradient itself (straight-through). A stored index outside the table reads as NaN (XLA cannot raise).
"""

from __future__ import annotations

import functools

import keras
import numba
import numpy as np

from weightzip.keras.clustering import _numba_fast, _numba_kernels, _xla_ffi
from weightzip.keras.clustering._xla_ffi import HANDLER_SIGNATURE, flat_argument, flat_result, matrix_argument

_PREFIX = "weightzip_cluster_"


# jaxlib releases whose FFI call frame the struct offsets in `_xla_ffi` were checked against. The C API is
# 0.x (not ABI-stable), so any other jaxlib takes the portable XLA path of `ops.clustered_kernel` (same results,
# slower) instead of reading a call frame whose layout may have moved.
TESTED_JAXLIB = ("0.10.2",)


def runs_here() -> bool:
    """Whether the FFI targets run: the JAX backend on CPU with a tested jaxlib."""
    if keras.backend.backend() != "jax":
        return False
    import jax
    import jaxlib

    return jaxlib.__version__ in TESTED_JAXLIB and jax.default_backend() == "cpu"


def applies(original, table) -> bool:
    """Whether these kernels serve the tensors: where they run (:func:`runs_here`), a float32 kernel and table."""
    return runs_here() and original.dtype == np.float32 and table.dtype == np.float32


def midpoints_between(sorted_keys):
    """The search's midpoints ``(groups, k - 1)`` between ascending keys ``(groups, k)`` (no gradient)."""
    import jax

    return jax.lax.stop_gradient((sorted_keys[:, 1:] + sorted_keys[:, :-1]) / 2.0)


def searched_lookup(flat_table, sorted_keys, original, *, channel_axis, average_gradient):
    """Each weight of `original` replaced by its nearest entry of its table row; straight-through to `original`.

    flat_table: ``(groups * k,)`` centroid values, each row in ascending order of `sorted_keys`.
    sorted_keys: ``(groups, k)`` ascending search keys (the centroids; +inf for a pinned zero).
    """

    midpoints = midpoints_between(sorted_keys)
    shape = tuple(original.shape)
    inner = 1 if channel_axis is None else int(np.prod(shape[channel_axis % len(shape) + 1:], dtype=np.int64))
    return _functions().searched(flat_table, midpoints, original, inner, bool(average_gradient))


def indexed_lookup(flat_table, index, *, average_gradient):
    """``take(flat_table, index)`` (`index`: flat table positions), gradients to the table only.

    uint8 positions (stored so up to 256 clusters) are read as they are: a quarter of int32's bytes.
    """
    import jax.numpy as jnp

    index = jnp.asarray(index)
    if index.dtype != jnp.uint8:
        index = index.astype(jnp.int32)
    return _functions().indexed(flat_table, index, bool(average_gradient))


def _index_dtype(table_size: int):
    return np.uint8 if table_size <= 256 else np.int32


def table_gradient(upstream, index, size: int, average: bool):
    """Per table entry, the sum (or mean) of `upstream` over the positions `index` holds it (flat, same length)."""
    import jax
    import jax.numpy as jnp

    _functions()  # (registers the FFI targets)
    call = jax.ffi.ffi_call(f"{_PREFIX}segment_sums_{np.dtype(index.dtype).name}",
                            jax.ShapeDtypeStruct((size,), upstream.dtype))
    return call(upstream, index, jnp.full((1,), int(average), jnp.int32))


def nearest_index(table, midpoints, weights):
    """The one-byte table position nearest each weight (one codebook of at most 16 entries, `midpoints` ``(1, k - 1)``
    ascending), without the clustered kernel: :mod:`._jax_dense`'s every-step product never forms it."""
    import jax
    import jax.numpy as jnp

    _functions()  # (registers the FFI targets)
    call = jax.ffi.ffi_call(f"{_PREFIX}search_index_uint8", jax.ShapeDtypeStruct(weights.shape, np.uint8))
    return call(weights, midpoints, table, jnp.full((1,), 1, jnp.int32))


@functools.cache
def _functions():
    """The differentiable lookups (built, and their FFI targets registered, on first use)."""
    import jax
    import jax.numpy as jnp

    _register_targets()

    def search(table, midpoints, weights, inner):
        index_dtype = _index_dtype(table.shape[0])
        call = jax.ffi.ffi_call(f"{_PREFIX}search_{np.dtype(index_dtype).name}",
                                (jax.ShapeDtypeStruct(weights.shape, weights.dtype),
                                 jax.ShapeDtypeStruct(weights.shape, index_dtype)))
        return call(weights, midpoints, table, jnp.full((1,), inner, jnp.int32))

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def searched(table, midpoints, weights, inner, average):
        return search(table, midpoints, weights, inner)[0]

    def searched_forward(table, midpoints, weights, inner, average):
        out, index = search(table, midpoints, weights, inner)
        return out, (index, jnp.zeros_like(table), jnp.zeros_like(midpoints))

    def searched_backward(inner, average, residuals, upstream):
        index, table_zeros, midpoint_zeros = residuals
        return table_gradient(upstream, index, table_zeros.shape[0], average), midpoint_zeros, upstream

    searched.defvjp(searched_forward, searched_backward)

    def look_up(table, index):
        call = jax.ffi.ffi_call(f"{_PREFIX}look_up_{np.dtype(index.dtype).name}",
                                jax.ShapeDtypeStruct(index.shape, table.dtype))
        return call(table, index)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def indexed(table, index, average):
        return look_up(table, index)

    def indexed_forward(table, index, average):
        return look_up(table, index), (index, jnp.zeros_like(table))

    def indexed_backward(average, residuals, upstream):
        index, table_zeros = residuals
        return table_gradient(upstream, index, table_zeros.shape[0], average), None

    indexed.defvjp(indexed_forward, indexed_backward)
    return _Lookups(searched, indexed)


class _Lookups:
    def __init__(self, searched, indexed):
        self.searched, self.indexed = searched, indexed


# ----------------------------------------------------------------------------- the FFI targets
# One handler per index type (uint8 for tables of <= 256 entries, else int32): numba cannot cache a
# handler specialised by a closure. numba's cache of a handler is keyed on its own file only: after an edit
# of _numba_kernels.py, _numba_fast.py, _numba_dense.py or _xla_ffi.py, delete __pycache__/_jax_lookup.* and
# __pycache__/_jax_dense.* (installs rewrite every file, so their caches start afresh; a commit that changes
# those kernels also edits this comment, so that a checkout's cache is rebuilt: last, the index-only search and
# _numba_dense's blocks for CPUs without AVX-512). A handler loaded from numba's cache links against the parallel
# runtime's symbols, which exist once numba's threads are started: one tiny parallel call first.
_numba_kernels.look_up(np.zeros(1, np.float32), np.zeros(1, np.int32), np.empty(1, np.float32))


@numba.cfunc(HANDLER_SIGNATURE, cache=True)
def _search_uint8(frame):
    if _xla_ffi.should_execute(frame):
        _numba_fast.search_and_look_up(
            flat_argument(frame, 0, np.float32), matrix_argument(frame, 1, np.float32),
            flat_argument(frame, 2, np.float32), flat_argument(frame, 3, np.int32)[0],
            flat_result(frame, 0, np.float32), flat_result(frame, 1, np.uint8))
    return _xla_ffi.success()


@numba.cfunc(HANDLER_SIGNATURE, cache=True)
def _search_int32(frame):
    if _xla_ffi.should_execute(frame):
        _numba_fast.search_and_look_up(
            flat_argument(frame, 0, np.float32), matrix_argument(frame, 1, np.float32),
            flat_argument(frame, 2, np.float32), flat_argument(frame, 3, np.int32)[0],
            flat_result(frame, 0, np.float32), flat_result(frame, 1, np.int32))
    return _xla_ffi.success()


@numba.cfunc(HANDLER_SIGNATURE, cache=True)
def _search_index_uint8(frame):
    if _xla_ffi.should_execute(frame):
        _numba_fast.search_and_look_up(
            flat_argument(frame, 0, np.float32), matrix_argument(frame, 1, np.float32),
            flat_argument(frame, 2, np.float32), flat_argument(frame, 3, np.int32)[0], None,
            flat_result(frame, 0, np.uint8))
    return _xla_ffi.success()


@numba.cfunc(HANDLER_SIGNATURE, cache=True)
def _segment_sums_uint8(frame):
    if _xla_ffi.should_execute(frame):
        _numba_fast.segment_sums(flat_argument(frame, 0, np.float32), flat_argument(frame, 1, np.uint8),
                                 flat_argument(frame, 2, np.int32)[0] != 0, flat_result(frame, 0, np.float32))
    return _xla_ffi.success()


@numba.cfunc(HANDLER_SIGNATURE, cache=True)
def _segment_sums_int32(frame):
    if _xla_ffi.should_execute(frame):
        _numba_fast.segment_sums(flat_argument(frame, 0, np.float32), flat_argument(frame, 1, np.int32),
                                 flat_argument(frame, 2, np.int32)[0] != 0, flat_result(frame, 0, np.float32))
    return _xla_ffi.success()


@numba.cfunc(HANDLER_SIGNATURE, cache=True)
def _look_up_int32(frame):
    if _xla_ffi.should_execute(frame):
        _numba_fast.look_up_checked(flat_argument(frame, 0, np.float32), flat_argument(frame, 1, np.int32),
                                    flat_result(frame, 0, np.float32))
    return _xla_ffi.success()


@numba.cfunc(HANDLER_SIGNATURE, cache=True)
def _look_up_uint8(frame):
    if _xla_ffi.should_execute(frame):
        _numba_fast.look_up_checked(flat_argument(frame, 0, np.float32), flat_argument(frame, 1, np.uint8),
                                    flat_result(frame, 0, np.float32))
    return _xla_ffi.success()


def _register_targets() -> None:
    handlers = {"search_uint8": _search_uint8, "search_int32": _search_int32, "search_index_uint8": _search_index_uint8,
                "segment_sums_uint8": _segment_sums_uint8,
                "segment_sums_int32": _segment_sums_int32, "look_up_int32": _look_up_int32,
                "look_up_uint8": _look_up_uint8}
    for name, handler in handlers.items():
        _xla_ffi.register(_PREFIX + name, handler)
