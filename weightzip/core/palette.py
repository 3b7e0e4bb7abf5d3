"""Lossless palettization: a tensor that already holds few distinct values, as codebook + indices.

After clustered training and `strip_clustering`, every kernel holds at most k distinct values (per
channel or per tensor). Recovering the codebook from the values themselves lets the storage stage work on
any such model, whatever front end or wrapper produced it, without trusting wrapper internals.
"""

from __future__ import annotations

import numpy as np

from weightzip.core.assign import index_dtype
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.errors import InvalidClusterCountError
from weightzip.core.validation import as_weight_array


def palettize_exact(weights, max_clusters: int, *, axis: int | None = None) -> ClusteredTensor:
    """Codebook of the distinct values of `weights` (per channel along `axis`), with exact indices.

    Raises :class:`InvalidClusterCountError` naming the channel when a group holds more than
    `max_clusters` distinct values (the tensor was not clustered to that k). Codebook rows are padded
    to a common width with their largest value; decode() reproduces `weights` bit for bit.
    """
    array = as_weight_array(weights)
    if axis is None:
        rows = array.reshape(1, -1)
    else:
        if not -array.ndim <= axis < array.ndim:
            raise ValueError(f"axis {axis} is out of range for a tensor of rank {array.ndim}")
        axis %= array.ndim
        rows = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    palettes = []
    for channel, row in enumerate(rows):
        distinct = np.unique(row)
        if distinct.shape[0] > max_clusters:
            where = "the tensor" if axis is None else f"channel {channel}"
            raise InvalidClusterCountError(
                f"{where} holds {distinct.shape[0]} distinct values, more than max_clusters={max_clusters}: "
                "cluster it first"
            )
        palettes.append(distinct)
    width = max(p.shape[0] for p in palettes)
    codebook = np.stack([np.pad(p, (0, width - p.shape[0]), mode="edge") for p in palettes]).astype(array.dtype)
    indices = np.empty(rows.shape, dtype=index_dtype(width))
    for channel, (row, palette) in enumerate(zip(rows, palettes)):
        indices[channel] = np.searchsorted(palette, row)
    if axis is None:
        return ClusteredTensor(codebook, indices.reshape(array.shape), None, 1)
    moved_shape = (array.shape[axis],) + tuple(np.delete(array.shape, axis))
    return ClusteredTensor(codebook, np.moveaxis(indices.reshape(moved_shape), 0, axis), axis, 1)
