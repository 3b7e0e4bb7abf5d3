"""The one storage rule for a checkpoint's tensors, shared by every route that writes them (the streamed
safetensors route, its worker processes, PyTorch state_dicts): floating tensors of rank >= 2 are pruned and
clustered (or stored as an exact palette where that is smaller); everything else is kept as it is, with the
reason recorded, so that no tensor is left alone in silence."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from weightzip.core.cluster import ClusterConfig, ClusteredTensor, cluster_array
from weightzip.core.errors import WeightzipError
from weightzip.core.palette import drop_unused_centroids, smallest_exact_palette
from weightzip.core.pruning import apply_mask, magnitude_mask


@dataclass(frozen=True)
class TensorAction:
    """What was done to one tensor: ``clustered``, ``palette`` (few distinct values, stored exactly) or
    ``kept`` (stored as it is), with the reason where it was not clustered."""

    name: str
    action: str
    reason: str = ""


def encode_array(name, array: np.ndarray, axes, config: ClusterConfig | None, per_channel: bool,
                 max_clusters: int, sparsity: float | None = None):
    """Prune, cluster, palettize exactly, or keep `array` (a checkpoint's tensor as NumPy): floating tensors
    of rank >= 2 (with `axes`, a name -> channel axis map: only those named) are pruned to `sparsity`, then
    clustered with `config` (channel axis 0 without `axes`), or without `config` stored as an exact palette
    where that is smaller; everything else is kept as it is."""
    if not np.issubdtype(array.dtype, np.floating) or array.ndim < 2 or array.size == 0:
        return array
    if axes is not None and name not in axes:
        return array  # a module's tensor that is not a supported layer's weight
    axis = 0 if axes is None else axes[name]
    if sparsity:  # a sparsity of 0 prunes nothing: skip the pass over the tensor
        array = apply_mask(array, magnitude_mask(array, sparsity))
    if config is not None:
        layer_config = dataclasses.replace(config, axis=axis if per_channel else None)
        try:
            return drop_unused_centroids(cluster_array(array, layer_config))
        except WeightzipError as error:
            raise WeightzipError(f"tensor {name!r}: {error}") from None
    palette = smallest_exact_palette(array, max_clusters, channel_axis=axis) if np.all(np.isfinite(array)) else None
    return array if palette is None else palette


def action_of(name: str, value, config) -> TensorAction:
    """The :class:`TensorAction` that storing `value` (what :func:`encode_array` returned) amounts to."""
    if isinstance(value, ClusteredTensor):
        return TensorAction(name, "clustered" if config is not None else "palette",
                            "" if config is not None else "few distinct values, stored exactly")
    if not np.issubdtype(value.dtype, np.floating):
        return TensorAction(name, "kept", f"not floating ({value.dtype})")
    if value.ndim < 2:
        return TensorAction(name, "kept", f"rank {value.ndim} (biases and normalisation are kept exactly)")
    if value.size == 0:
        return TensorAction(name, "kept", "empty")
    return TensorAction(name, "kept", "no --clusters given and too many distinct values for a palette")
