"""How a custom layer tells weightzip which of its weights to cluster (TFMOT's ``ClusterableLayer``).

A custom layer becomes clusterable by implementing ``get_clusterable_weights()``, returning
``[(name, variable), ...]``; it may subclass :class:`ClusterableLayer` as with TFMOT or simply define
the method (the protocol is checked structurally). ``get_clusterable_algorithm(weight_name)`` is
optional: return a :class:`ClusteringAlgorithm` to choose the weight's channel axis for per-channel
clustering, or None for the default (the last axis).
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass

from weightzip.core.errors import InvalidArgumentError


@dataclass(frozen=True)
class ClusteringAlgorithm:
    """Per-weight clustering options a :class:`ClusterableLayer` may return for one of its weights.

    channel_axis: the kernel axis that indexes output channels, used with ``cluster_per_channel``
        (each index along it gets its own codebook).

    Unlike TFMOT's class of the same name this holds options, not code: the lookup itself is
    weightzip's (nearest centroid by binary search), the same for every layer.
    """

    channel_axis: int = -1

    def __post_init__(self):
        if isinstance(self.channel_axis, bool) or not isinstance(self.channel_axis, int):
            raise InvalidArgumentError(f"channel_axis must be an integer, got {self.channel_axis!r}")


class ClusterableLayer(abc.ABC):
    """A layer that lists the weights it wants clustered (a structural protocol).

    Implement ``get_clusterable_weights()`` returning ``[(name, variable), ...]`` where each variable
    is a Keras variable owned by the layer (or one of its sublayers) and each name is unique within
    the layer. Subclassing this class is optional; it exists for TFMOT-style code::

        class MyDense(keras.layers.Dense, ClusterableLayer):
            def get_clusterable_weights(self):
                return [("kernel", self.kernel)]

    ``isinstance(layer, ClusterableLayer)`` is true for any object with a callable
    ``get_clusterable_weights``, subclass or not.
    """

    @abc.abstractmethod
    def get_clusterable_weights(self) -> list:
        """The (name, variable) pairs to cluster during training."""
        raise NotImplementedError

    @classmethod
    def __subclasshook__(cls, subclass):
        if cls is ClusterableLayer:
            method = getattr(subclass, "get_clusterable_weights", None)
            return True if callable(method) else NotImplemented
        return NotImplemented

    def get_clusterable_algorithm(self, weight_name: str) -> ClusteringAlgorithm | None:
        """Options for one weight, or None for the defaults. Optional."""
        return None


@dataclass(frozen=True, eq=False)
class ClusterableWeight:
    """One weight of a layer to cluster: a display name, the variable, its channel axis and its input axis (the one
    the layer contracts with its input; N:M pruning groups along it)."""

    name: str
    variable: object
    channel_axis: int = -1
    input_axis: int = -2

    @property
    def key(self) -> str:
        """`name` made safe for a Keras variable name (letters, digits and underscores)."""
        return re.sub(r"[^0-9A-Za-z_]+", "_", self.name).strip("_") or "weight"
