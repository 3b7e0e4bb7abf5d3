"""Moving weights between torch and the NumPy core, and the index dtypes used on the torch side."""

from __future__ import annotations

import numpy as np
import torch


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float NumPy copy of `tensor` (bfloat16/float16 widened to float32, which NumPy handles)."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.cpu().numpy()


def torch_index_dtype(k: int) -> torch.dtype:
    """Smallest torch integer dtype that indexes a codebook of `k` entries and that every backend supports.

    uint8 up to 256 entries; int16 and int32 beyond (torch's uint16/uint32 lack many kernels).
    """
    if k <= 1 << 8:
        return torch.uint8
    if k <= 1 << 15:
        return torch.int16
    return torch.int32


def channel_groups(shape: tuple[int, ...], axis: int | None, group_size: int) -> torch.Tensor:
    """Codebook row of every weight, as an int64 tensor broadcastable to `shape` (all zeros if axis None)."""
    if axis is None:
        return torch.zeros((1,) * len(shape), dtype=torch.int64)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return (torch.arange(shape[axis], dtype=torch.int64) // group_size).reshape(view)


def number_of_groups(shape: tuple[int, ...], axis: int | None, group_size: int) -> int:
    """Codebook rows needed: one per tensor, or one per `group_size` consecutive channels along `axis`."""
    if axis is None:
        return 1
    return -(-shape[axis] // group_size)
