"""The compiled lookup-table kernels (``lut_kernels.cpp``) and their ctypes binding.

Why a small C++ library and not numba: measured with ``benchmarks/bench_palettized_runtime.py --numba``
(4096x4096 weight, 4 bits, batch 1, one thread, thread CPU time on our 2-core AMD EPYC): dense float32
5.2 ms, a numba loop (scalar lookups; LLVM does not turn them into register shuffles) 14.1 ms, the AVX2
kernel (32 indices unpacked and looked up in registers with ``vpshufb`` byte planes) 2.1 ms; on a 2-core Intel
Xeon with AVX-512 (Sapphire Rapids class): dense 4.7 ms, numba 11.0 ms, the AVX-512 kernel (one ``vpermps`` per
16 weights, the codebook in one register) 0.79 ms. The library
is plain C ABI: it needs no Python or torch headers, builds with g++ in seconds, and is called through
ctypes with tensors' data pointers. Its OpenMP runtime is torch's own (torch, imported first, has loaded
``libgomp.so.1``), so both share one thread pool.

It is built by ``make kernels`` (part of ``make install``/``make test``), never at import time. When it is
missing, :func:`available` is False, :func:`require` raises :class:`KernelsUnavailableError` with the
command that builds it, and the palettized layers fall back to torch ops (with a one-time warning).
"""

from __future__ import annotations

import ctypes
import functools
import threading
import warnings
from pathlib import Path

import torch

from weightzip.core.errors import WeightzipError

LIBRARY = Path(__file__).with_name("_lut_kernels.so")
SOURCE = Path(__file__).with_name("lut_kernels.cpp")
ABI_VERSION = 6

SCALAR, AVX2, BEST = 0, 1, 2
"""Values of the kernels' `simd` argument: the portable scalar path, at most AVX2 + FMA, or the widest path the CPU
has (AVX-512 for 1/2/4-bit indices into <= 16 entries). Everything but tests and benchmarks uses BEST."""
BUILD_COMMAND = "make kernels"


class KernelsUnavailableError(WeightzipError):
    """The compiled palettized kernels are not built (or were built from another source version)."""


_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int


@functools.cache
def _load() -> ctypes.CDLL | str:
    """The loaded library, or the reason it cannot be used."""
    if not LIBRARY.is_file():
        return f"{LIBRARY} is not built; run `{BUILD_COMMAND}`"
    if SOURCE.is_file() and SOURCE.stat().st_mtime > LIBRARY.stat().st_mtime:
        return f"{LIBRARY} is older than {SOURCE.name}; run `{BUILD_COMMAND}`"
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as error:
        return f"cannot load {LIBRARY}: {error}"
    if lib.wz_abi_version() != ABI_VERSION:
        return f"{LIBRARY} has ABI version {lib.wz_abi_version()}, expected {ABI_VERSION}; run `{BUILD_COMMAND}`"
    lib.wz_simd_level.restype = _INT
    lib.wz_gemv.argtypes = [_P, _I64, _INT, _I64, _I64, _P, _INT, _I64, _P, _P, _I64, _P, _P, _INT, _INT]
    lib.wz_gemv.restype = None
    lib.wz_gemm_rows.argtypes = [_P, _I64, _INT, _I64, _I64, _P, _INT, _I64, _P, _P, _I64, _P, _INT, _INT]
    lib.wz_gemm_rows.restype = None
    lib.wz_decode_rows.argtypes = [_P, _I64, _INT, _I64, _P, _I64, _I64, _P, _INT, _I64, _P, _P, _INT, _INT]
    lib.wz_decode_rows.restype = None
    lib.wz_sparse_gemm.argtypes = [_P, _P, _P, _I64, _P, _INT, _I64, _P, _I64, _P, _INT]
    lib.wz_sparse_gemm.restype = None
    lib.wz_rnn.argtypes = [_INT, _I64, _I64, _I64, _P, _P, _I64, _INT, _P, _INT, _I64, _P, _P, _P, _P, _P, _INT, _INT,
                           _INT]
    lib.wz_rnn.restype = None
    return lib


def available() -> bool:
    """Whether the compiled kernels can be used."""
    return not isinstance(_load(), str)


def loaded() -> ctypes.CDLL | None:
    """The library when it can be used, else None (no warning: for hot paths that fall back by themselves)."""
    lib = _load()
    return None if isinstance(lib, str) else lib


def require() -> ctypes.CDLL:
    """The library, or :class:`KernelsUnavailableError` saying how to build it."""
    lib = _load()
    if isinstance(lib, str):
        raise KernelsUnavailableError(lib)
    return lib


def simd_level() -> int:
    """The widest path the kernels take on this CPU: :data:`BEST` (AVX-512), :data:`AVX2` or :data:`SCALAR`."""
    return int(require().wz_simd_level())


def simd_name() -> str:
    """:func:`simd_level` in words, for reports."""
    return {BEST: "AVX-512", AVX2: "AVX2", SCALAR: "scalar"}[simd_level()]


@functools.cache
def warn_fallback_once() -> None:
    warnings.warn(f"weightzip palettized layers run on torch ops (slower): {_load()}", RuntimeWarning, stacklevel=3)


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def gemv(packed: torch.Tensor, stride: int, bits: int, rows: int, cols: int, codebook: torch.Tensor, k: int,
         rows_per_group: int, col_offsets: torch.Tensor | None, x: torch.Tensor, *, bias: torch.Tensor | None = None,
         simd: int = BEST) -> torch.Tensor:
    """``x @ W.T`` (``+ bias``, added inside the kernel: a contiguous float32 CPU vector) for a contiguous float32
    `x` of shape (batch, cols); one pass over W per 4 batch rows."""
    y = torch.empty(x.shape[0], rows, dtype=torch.float32)
    require().wz_gemv(packed.data_ptr(), stride, bits, rows, cols, codebook.data_ptr(), k, rows_per_group,
                      _ptr(col_offsets), x.data_ptr(), x.shape[0], _ptr(bias), y.data_ptr(), torch.get_num_threads(),
                      simd)
    return y


def gemm_rows(packed: torch.Tensor, stride: int, bits: int, rows: int, cols: int, codebook: torch.Tensor, k: int,
              rows_per_group: int, col_offsets: torch.Tensor | None, x: torch.Tensor, *,
              simd: int = BEST) -> torch.Tensor:
    """``x @ W.T`` for a contiguous float32 `x` (batch, cols) that fits in L2: each weight row is decoded once."""
    y = torch.empty(x.shape[0], rows, dtype=torch.float32)
    require().wz_gemm_rows(packed.data_ptr(), stride, bits, rows, cols, codebook.data_ptr(), k, rows_per_group,
                           _ptr(col_offsets), x.data_ptr(), x.shape[0], y.data_ptr(), torch.get_num_threads(),
                           simd)
    return y


def decode_rows(packed: torch.Tensor, stride: int, bits: int, cols: int, codebook: torch.Tensor, k: int,
                rows_per_group: int, col_offsets: torch.Tensor | None, *, first_row: int = 0, count: int = 0,
                row_ids: torch.Tensor | None = None, out: torch.Tensor | None = None,
                simd: int = BEST, threads: int | None = None) -> torch.Tensor:
    """Rows ``first_row .. first_row + count`` (or the int64 `row_ids`) of W decoded to float32 (count, cols)."""
    if row_ids is not None:
        count = row_ids.numel()
    if out is None:
        out = torch.empty(count, cols, dtype=torch.float32)
    require().wz_decode_rows(packed.data_ptr(), stride, bits, cols, _ptr(row_ids), first_row, count,
                             codebook.data_ptr(), k, rows_per_group, _ptr(col_offsets), out.data_ptr(),
                             torch.get_num_threads() if threads is None else threads, simd)
    return out


class WholeDecoder:
    """Decodes the whole of one palettized weight (float32, on the CPU) with the least work per call: its
    fixed ctypes arguments are converted once. For the eager forward of small layers (a MobileNetV2 conv is
    decoded in ~5-80 us; the generic path's Python around it cost about as much). The decoder holds the
    tensors it points into; :meth:`serves` tells whether it still matches a layer's current ones."""

    def __init__(self, packed: torch.Tensor, stride: int, bits: int, rows: int, cols: int, codebook: torch.Tensor,
                 k: int, rows_per_group: int, col_offsets: torch.Tensor | None, shape: tuple[int, ...]):
        self.tensors = (packed, codebook, col_offsets)
        self._pointers = (packed.data_ptr(), codebook.data_ptr(), _ptr(col_offsets))
        self.shape, self._numel = tuple(shape), rows * cols
        self._cached = None  # (scratch buffer, the decoded weight's view of it, its data_ptr)
        self._call = functools.partial(require().wz_decode_rows, packed.data_ptr(), stride, bits, cols, None, 0, rows,
                                       codebook.data_ptr(), k, rows_per_group, _ptr(col_offsets))

    def serves(self, packed: torch.Tensor, codebook: torch.Tensor, col_offsets: torch.Tensor | None) -> bool:
        """Whether the layer's tensors are still the ones decoded from (same memory: a deep copy is not)."""
        return (packed.data_ptr(), codebook.data_ptr(), _ptr(col_offsets)) == self._pointers

    def __call__(self) -> torch.Tensor:
        """The decoded weight. With gradients off it is written into this thread's scratch buffer (reused by the
        next layer: a fresh multi-MiB tensor a layer cost ~350 page faults a MobileNetV2 forward), so the caller
        must be done with it before the next call; with gradients on (autograd may keep it), a new tensor."""
        if torch.is_grad_enabled():
            out = torch.empty(self.shape, dtype=torch.float32)
            self._call(out.data_ptr(), 1, 1)
            return out
        # The view of this thread's scratch buffer and its pointer are kept while the buffer stays the same (one
        # tuple, swapped whole, so threads never mix theirs): a slice, a view and a data_ptr a call less.
        buffer, cached = getattr(_SCRATCH, "buffer", None), self._cached
        if cached is None or cached[0] is not buffer or buffer is None:
            out = _scratch(self._numel).view(self.shape)
            cached = self._cached = (_SCRATCH.buffer, out, out.data_ptr())
        self._call(cached[2], 1, 1)
        return cached[1]


_SCRATCH = threading.local()


def _scratch(numel: int) -> torch.Tensor:
    """The first `numel` floats of this thread's scratch buffer (grown as needed; at most one tile,
    ops.TILE_ELEMENTS floats, as only weights that small are decoded whole)."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = _SCRATCH.buffer = torch.empty(numel, dtype=torch.float32)
    return buffer[:numel]


def sparse_gemm(row_ptr: torch.Tensor, gaps: torch.Tensor, values: torch.Tensor, rows: int, codebook: torch.Tensor,
                rows_per_group: int, x: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for a float32 `x` (batch, cols) and a pruned W in CSR with relative indices; `codebook`
    is (groups, k + 1) float32 whose last column is the fillers' 0.0."""
    xt = x.t().contiguous()
    y = torch.empty(x.shape[0], rows, dtype=torch.float32)
    require().wz_sparse_gemm(row_ptr.data_ptr(), gaps.data_ptr(), values.data_ptr(), rows, codebook.data_ptr(),
                             codebook.shape[-1], rows_per_group, xt.data_ptr(), x.shape[0], y.data_ptr(),
                             torch.get_num_threads())
    return y


RNN_MODES = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}


def rnn_steps(mode: str, gi: torch.Tensor, packed: torch.Tensor, stride: int, bits: int, codebook: torch.Tensor,
              k: int, rows_per_group: int, col_offsets: torch.Tensor | None, b_hh: torch.Tensor | None,
              h0: torch.Tensor, c0: torch.Tensor | None, *, reverse: bool = False,
              simd: int = BEST) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The time loop of one recurrent layer and direction in the kernel: `gi` (steps, batch, gates) holds the
    input projections (b_ih added), the palettized W_hh (gates x hidden) gives each step's hidden projection.
    Returns (outputs (steps, batch, hidden), h_T, c_T or None); all float32 and contiguous."""
    gi = gi.contiguous()  # held: the kernel reads its memory
    b_hh = None if b_hh is None else b_hh.contiguous()
    steps, batch, _ = gi.shape
    hidden = h0.shape[-1]
    h = h0.to(torch.float32, copy=True).contiguous()
    c = None if c0 is None else c0.to(torch.float32, copy=True).contiguous()
    out = torch.empty(steps, batch, hidden, dtype=torch.float32)
    require().wz_rnn(RNN_MODES[mode], steps, batch, hidden, gi.data_ptr(), packed.data_ptr(), stride,
                     bits, codebook.data_ptr(), k, rows_per_group, _ptr(col_offsets), _ptr(b_hh), h.data_ptr(),
                     _ptr(c), out.data_ptr(), int(reverse), torch.get_num_threads(), simd)
    return out, h, c
