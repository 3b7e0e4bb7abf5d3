"""``save_wz`` / ``load_wz``: the PyTorch front end's names for its `.wz` round trip, the same verbs as
``weightzip.keras.save_wz`` / ``load_wz`` (safetensors' habit: one pair of verbs per framework, each a thin
converter over one format layer).

They only convert: :func:`save_wz` is :func:`~weightzip.torch.checkpoint.compress_state_dict` and :func:`load_wz`
is :func:`~weightzip.torch.checkpoint.decompress`, whose docstrings say what is stored and how. A `.wz` holds a
PyTorch model's tensors, not its code, so loading gives a state_dict for ``model.load_state_dict``; the Keras
``load_wz`` rebuilds the model itself from the architecture stored with it.
"""

from __future__ import annotations

import torch

from weightzip.torch.checkpoint import compress_state_dict, decompress

__all__ = ["load_wz", "save_wz"]


def save_wz(source, path, **options) -> int:
    """Write `source` (an ``nn.Module``, a state_dict, or a checkpoint path) to the `.wz` file `path`; returns its
    size in bytes. `options` are :func:`~weightzip.torch.checkpoint.compress_state_dict`'s (``overwrite``,
    ``number_of_clusters``, ``sparsity``, ``options`` ...)."""
    return compress_state_dict(source, path, **options)


def load_wz(path, *, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The dense state_dict stored in the `.wz` file `path`, under the plain names, in the original dtypes:
    ``model.load_state_dict(load_wz(path))`` loads it strictly into the unclustered architecture."""
    return decompress(path, device=device)
