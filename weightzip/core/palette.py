"""Lossless palettization: a tensor that already holds few distinct values, as codebook + indices.

After clustered training and `strip_clustering`, every kernel holds at most k distinct values (per
channel or per tensor). Recovering the codebook from the values themselves lets the storage stage work on
any such model, whatever front end or wrapper produced it, without trusting wrapper internals.
"""

from __future__ import annotations

import math

import numpy as np

from weightzip.core.ans import symbol_counts
from weightzip.core.assign import index_dtype
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.errors import InvalidArgumentError, InvalidClusterCountError
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
            raise InvalidArgumentError(f"axis {axis} is out of range for a tensor of rank {array.ndim}")
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


def smallest_exact_palette(weights, max_clusters: int, *, channel_axis: int | None = None) -> ClusteredTensor | None:
    """The exact palette (per tensor, or per channel along `channel_axis`) that stores fewest bits, or None
    when no palette of at most `max_clusters` entries stores fewer bits than the raw values.

    Only nonzero weights are counted: the zeros of a pruned tensor cost the same in both forms once the
    `.wz` writer stores it sparsely. Non-floating or empty arrays have no palette.
    """
    array = np.asarray(weights)
    if not np.issubdtype(array.dtype, np.floating) or array.ndim == 0 or array.size == 0:
        return None
    value_bits = array.dtype.itemsize * 8
    stored = max(1, int(np.count_nonzero(array)))
    best, best_bits = None, stored * value_bits
    for axis in (None,) if channel_axis is None or array.ndim < 2 else (None, channel_axis):
        try:
            palette = palettize_exact(array, max_clusters, axis=axis)
        except InvalidClusterCountError:
            continue
        groups, k = palette.codebook.shape
        bits = groups * k * value_bits + stored * (math.ceil(math.log2(k)) if k > 1 else 0)
        if bits < best_bits:
            best, best_bits = palette, bits
    return best


def drop_unused_centroids(clustered: ClusteredTensor) -> ClusteredTensor:
    """The same tensor with every codebook row cut to the entries some weight uses (lossless).

    Per-channel codebooks of small channels (a depthwise 3x3 kernel has 9 weights) cannot use k = 256
    entries; the rows are shortened to the largest number used in any row (shorter rows padded with
    their last used value, never referenced) and the indices renumbered, so fewer index bits and less
    codebook are stored and held. Row order is kept (sorted rows stay sorted).
    """
    codebook = np.asarray(clustered.codebook)
    groups, k = codebook.shape
    group = np.broadcast_to(clustered.group_of_each_weight(), clustered.shape)
    if groups == 1:  # one row: a histogram of the indices, no per-weight code array
        used = (symbol_counts(np.asarray(clustered.indices), k) > 0).reshape(1, k)  # no widened copy
    else:
        codes = group.astype(np.int64) * k + clustered.indices
        used = np.zeros(groups * k, dtype=bool)
        used[codes.ravel()] = True
        used = used.reshape(groups, k)
    width = max(1, int(used.sum(axis=1).max()))
    if width == k:
        return clustered
    rank = np.cumsum(used, axis=1) - 1
    rows, columns = np.nonzero(used)
    last_used = used.shape[1] - 1 - np.argmax(used[:, ::-1], axis=1)  # every row uses at least one entry
    compact = np.repeat(codebook[np.arange(groups), last_used][:, None], width, axis=1)
    compact[rows, rank[rows, columns]] = codebook[rows, columns]
    indices = rank[group, clustered.indices].astype(index_dtype(width))
    return ClusteredTensor(compact, indices, clustered.axis, clustered.group_size)
