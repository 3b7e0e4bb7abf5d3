"""Safetensors checkpoints with torch tensors: the torch dtypes of the safetensors names, tensor views of a
mapped file, and streaming writers. Reading and checking checkpoints is :mod:`weightzip.shards` (no torch),
whose names are re-exported here.
"""

from __future__ import annotations

import json
import math
import mmap
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from weightzip.shards import (  # noqa: F401  (re-exported: the checkpoint API lives there)
    INDEX_FILE,
    ITEMSIZES,
    MAX_HEADER_BYTES,
    SINGLE_FILE,
    SafetensorsCheckpoint,
    SafetensorsHeader,
    ShardError,
    ShardLayout,
    TensorEntry,
    open_safetensors,
    read_header,
    write_safetensors_arrays,
)

# safetensors dtype names <-> torch dtypes
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attribute in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                          ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attribute):
        DTYPES[_name] = getattr(torch, _attribute)
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def tensors(checkpoint: SafetensorsCheckpoint):
    """(name, torch tensor) in layout order, one at a time, from `checkpoint`'s memory-mapped files (CPU):
    views of the mapping with their own dtypes (bfloat16 and float8 included), resident memory about one
    tensor however large the checkpoint (see :meth:`SafetensorsCheckpoint.views`)."""
    yield from checkpoint.views(torch_view)


def torch_view(mapped: mmap.mmap, start: int, entry: TensorEntry) -> torch.Tensor:
    """The tensor `entry` at byte `start` of `mapped` (see :func:`tensors`)."""
    dtype = DTYPES[entry.dtype]
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    return torch.frombuffer(mapped, dtype=dtype, count=entry.nbytes // dtype.itemsize,
                            offset=start).reshape(entry.shape)


def write_safetensors(path, specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
                      fetch: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file at `path` holding the tensors `specs` (name, dtype, shape) in that order,
    calling ``fetch(name)`` for each one's values just before writing them; returns the bytes written.
    The torch view of :func:`weightzip.shards.write_safetensors_arrays` (one writer): each tensor is handed
    over as its stored bytes, reinterpreted without a copy."""
    specs = [(name, dtype, tuple(shape)) for name, dtype, shape in specs]
    for name, dtype, _ in specs:
        if dtype not in DTYPE_NAMES:
            raise ShardError(f"tensor {name!r}: dtype {dtype} has no safetensors name")
    expected = {name: (dtype, shape) for name, dtype, shape in specs}

    def stored_bytes(name: str) -> np.ndarray:
        tensor, (dtype, shape) = fetch(name), expected[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ShardError(f"tensor {name!r}: got {tensor.dtype}{list(tensor.shape)}, expected {dtype}{list(shape)}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        return data.view(f"<u{dtype.itemsize}").reshape(shape)

    return write_safetensors_arrays(path, [(name, DTYPE_NAMES[dtype], shape) for name, dtype, shape in specs],
                                    stored_bytes, metadata)


def write_sharded(directory, layout: ShardLayout, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                  fetch: Callable[[str], torch.Tensor]) -> list[str]:
    """Write the shards of `layout` (and its index when sharded) into the existing `directory`.

    specs: dtype and shape of every tensor; ``fetch(name)`` gives its values, one tensor at a time.
    Returns the file names written.
    """
    directory = Path(directory)
    weight_map, total = {}, 0
    for file, names, metadata in layout.shards:
        write_safetensors(directory / file, [(name, *specs[name]) for name in names], fetch, metadata)
        for name in names:
            dtype, shape = specs[name]
            weight_map[name] = file
            total += math.prod(shape) * dtype.itemsize
    if layout.sharded:
        index_metadata = dict(layout.index_metadata)
        if "total_size" in index_metadata:
            index_metadata["total_size"] = total
        (directory / INDEX_FILE).write_text(
            json.dumps({"metadata": index_metadata, "weight_map": weight_map}, indent=2) + "\n", encoding="utf-8")
    return list(layout.files)


