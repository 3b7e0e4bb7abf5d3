"""Options of trained weight clustering in Keras: TFMOT's spellings as a view of the core's ClusteringSpec.

- :class:`GradientAggregation`: how a centroid's gradient is formed from its members' gradients
  (TFMOT's ``cluster_gradient_aggregation``).
- :class:`Reassignment`: whether weights may change cluster during fine-tuning.
- :class:`ClusteringParams`: everything :func:`weightzip.keras.cluster_weights` was asked for, under TFMOT's names
  (``cluster_centroids_init``, ``cluster_per_channel``, ``cluster_gradient_aggregation``): a view of the
  :class:`~weightzip.core.specs.ClusteringSpec` that both front ends share (``init``, ``per_channel``,
  ``gradient_aggregation``), validated by it.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from weightzip.core import CentroidInitialization
from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError
from weightzip.core.options import GradientAggregation, Reassignment
from weightzip.core.specs import ClusteringSpec

__all__ = ["ClusteringParams", "GradientAggregation", "Reassignment", "TFMOT_ALIASES"]

TFMOT_ALIASES = {
    "cluster_centroids_init": "init",
    "cluster_per_channel": "per_channel",
    "cluster_gradient_aggregation": "gradient_aggregation",
}
"""TFMOT's keyword -> the ClusteringSpec field (the name both front ends use); the other names are the same."""


@dataclass(frozen=True)
class ClusteringParams:
    """The clustering requested for every clusterable weight of a layer, under TFMOT's names.

    number_of_clusters: k, the number of shared values per weight tensor (per channel when
        `cluster_per_channel`). With `preserve_sparsity`, one of the k is the exact zero.
    cluster_centroids_init: where the centroids start (see :class:`CentroidInitialization`); the spec's `init`.
    cluster_per_channel: one codebook per output channel instead of one per tensor; the spec's `per_channel`.
    preserve_sparsity: weights that are zero stay exactly zero; the zero centroid does not train.
    cluster_gradient_aggregation: see :class:`GradientAggregation`; the spec's `gradient_aggregation`.
    reassignment: see :class:`Reassignment` (EVERY_STEP, TFMOT's, by default).
    seed: seed of the RANDOM and KMEANS_PLUS_PLUS initialisations.

    :attr:`spec` is the same request as a :class:`~weightzip.core.specs.ClusteringSpec`; :meth:`from_spec` the way
    back.
    """

    number_of_clusters: int
    cluster_centroids_init: CentroidInitialization = CentroidInitialization.LINEAR
    cluster_per_channel: bool = False
    preserve_sparsity: bool = False
    cluster_gradient_aggregation: GradientAggregation = GradientAggregation.SUM
    reassignment: Reassignment = Reassignment.EVERY_STEP
    seed: int | None = None

    def __post_init__(self):
        if self.reassignment is None:
            object.__setattr__(self, "reassignment", Reassignment.EVERY_STEP)
        spec = ClusteringSpec(self.number_of_clusters, self.cluster_centroids_init, self.cluster_per_channel,
                              preserve_sparsity=self.preserve_sparsity,
                              gradient_aggregation=self.cluster_gradient_aggregation,
                              reassignment=self.reassignment, seed=self.seed)
        for name, field in (("number_of_clusters", "number_of_clusters"), ("reassignment", "reassignment"),
                            *((tfmot, field) for tfmot, field in TFMOT_ALIASES.items())):
            object.__setattr__(self, name, getattr(spec, field))

    @property
    def spec(self) -> ClusteringSpec:
        """This request as the core's :class:`ClusteringSpec` (the names PyTorch's ``cluster_weights`` takes)."""
        return ClusteringSpec(self.number_of_clusters, self.cluster_centroids_init, self.cluster_per_channel,
                              preserve_sparsity=self.preserve_sparsity,
                              gradient_aggregation=self.cluster_gradient_aggregation,
                              reassignment=self.reassignment, seed=self.seed)

    @property
    def init(self) -> CentroidInitialization:
        return self.cluster_centroids_init

    @property
    def per_channel(self) -> bool:
        return self.cluster_per_channel

    @property
    def gradient_aggregation(self) -> GradientAggregation:
        return self.cluster_gradient_aggregation

    @classmethod
    def from_spec(cls, spec: ClusteringSpec) -> "ClusteringParams":
        """The Keras view of `spec`. Keras clusters one codebook per tensor or per channel, from the initial
        centroids as TFMOT does: a spec asking for `group_size` > 1 or Lloyd iterations is refused, not ignored."""
        if not isinstance(spec, ClusteringSpec):
            raise ArgumentTypeError(f"spec must be a ClusteringSpec, got {type(spec).__name__}")
        for field, default in (("group_size", 1), ("lloyd_iterations", 0)):
            if getattr(spec, field) != default:
                raise InvalidArgumentError(f"{field}={getattr(spec, field)!r} is not available on the Keras front "
                                           f"end (PyTorch and post-training clustering only)")
        return cls(spec.number_of_clusters, spec.init, spec.per_channel, spec.preserve_sparsity,
                   spec.gradient_aggregation, spec.reassignment, spec.seed)

    def to_config(self) -> dict:
        """Plain JSON-serialisable values (enums as their string values)."""
        config = asdict(self)
        for key, value in config.items():
            if isinstance(value, enum.Enum):
                config[key] = value.value
        return config
