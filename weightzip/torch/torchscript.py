"""TorchScript archives (``torch.jit.save``) in and out of `.wz` files.

A TorchScript archive is a zip holding the module's code, constants and tensor storages. It is
recognised by its content (a zip with ``<name>/code/`` or ``<name>/constants.pkl`` entries), never by
its suffix, and loaded with ``torch.jit.load``, which rebuilds TorchScript modules from their own
restricted format: it does not unpickle arbitrary Python objects the way ``torch.load(weights_only=False)``
would. Plain ``torch.save`` checkpoints keep their ``weights_only=True`` loading.

What the `.wz` stores of an archive: its state_dict, compressed like any checkpoint's, and a *skeleton*:
the same archive re-saved with every state_dict tensor replaced by an empty one (code, constants and
every other attribute intact; a few KB). ``decompress`` loads the skeleton, puts the decoded tensors back
and saves the archive again, which then runs as the original did with the decoded weights.
Tensors shared under two names (tied weights) come back as two equal tensors.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from weightzip.core.errors import WeightzipError

ARCHIVE_TENSOR = "__torchscript_archive__"  # the name of the skeleton's byte array in the .wz
ARCHIVE_SUFFIXES = (".pt", ".pth", ".jit", ".ts", ".torchscript", ".zip")


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether `path` is a TorchScript archive (by its zip entries; False for anything else)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any("/code/" in name or name.endswith("/constants.pkl") for name in names)


def load_archive(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], bytes]:
    """The state_dict of the TorchScript archive `path` and the archive's skeleton (see the module doc)."""
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch raises RuntimeError and others for damaged archives
        raise WeightzipError(f"{path}: not a loadable TorchScript archive ({type(error).__name__}: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") from None
    state = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    if ARCHIVE_TENSOR in state:
        raise WeightzipError(f"{path}: has a tensor named {ARCHIVE_TENSOR!r}, a name weightzip reserves")
    for name, tensor in state.items():
        _replace(module, name, torch.empty(0, dtype=tensor.dtype))
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return state, buffer.getvalue()


def skeleton_array(skeleton: bytes) -> np.ndarray:
    """The skeleton as the uint8 array stored under :data:`ARCHIVE_TENSOR`."""
    return np.frombuffer(skeleton, dtype=np.uint8).copy()


def rebuild_archive(skeleton: np.ndarray | bytes, state: dict[str, torch.Tensor]) -> bytes:
    """The archive bytes: the skeleton with `state`'s tensors put back."""
    data = skeleton.tobytes() if isinstance(skeleton, np.ndarray) else bytes(skeleton)
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as error:
        raise WeightzipError(f"the stored TorchScript skeleton does not load ({type(error).__name__})") from None
    expected = set(module.state_dict())
    if expected != set(state):
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise WeightzipError(f"the stored tensors do not match the TorchScript module: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
    for name, tensor in state.items():
        _replace(module, name, tensor)
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def _replace(module, name: str, tensor: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    current = getattr(owner, leaf)
    if isinstance(current, nn.Parameter):
        tensor = nn.Parameter(tensor, requires_grad=current.requires_grad)
    setattr(owner, leaf, tensor)


def is_archive_output(path: str | os.PathLike) -> bool:
    """Whether decompressing a TorchScript `.wz` to `path` writes the archive (else: a state_dict file)."""
    return Path(path).suffix in ARCHIVE_SUFFIXES
