"""Options of trained weight clustering in Keras, validated once, with TFMOT's spellings accepted.

- :class:`GradientAggregation`: how a centroid's gradient is formed from its members' gradients
  (TFMOT's ``cluster_gradient_aggregation``).
- :class:`Reassignment`: whether weights may change cluster during fine-tuning.
- :class:`ClusteringParams`: everything :func:`weightzip.keras.cluster_weights` was asked for.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from weightzip.core import CentroidInitialization, InvalidClusterCountError
from weightzip.core.options import GradientAggregation, ParsableEnum
from weightzip.core.validation import check_cluster_count


class Reassignment(ParsableEnum):
    """Whether a weight may move to another cluster while the clustered model is fine-tuned.

    ``EVERY_STEP`` (default, TFMOT's behaviour): the layer keeps its original weights as trainable
    variables. The forward pass replaces each by its nearest centroid; the backward pass gives the
    centroids the (summed or averaged) gradient of their members and, by a straight-through estimator,
    each original weight the gradient of its clustered value. Weights therefore drift across cluster
    boundaries and are reassigned at every step.

    ``FIXED`` (the Deep Compression paper): the assignment computed when the layer is clustered is
    stored and never changes; only the centroids train and the original weights are frozen. Cheaper
    per step (no search, no optimizer state for the kernel), less able to recover accuracy at small k.
    """

    EVERY_STEP = "every_step"
    FIXED = "fixed"


@dataclass(frozen=True)
class ClusteringParams:
    """The clustering requested for every clusterable weight of a layer.

    number_of_clusters: k, the number of shared values per weight tensor (per channel when
        `cluster_per_channel`). With `preserve_sparsity`, one of the k is the exact zero.
    cluster_centroids_init: where the centroids start (see :class:`CentroidInitialization`).
    cluster_per_channel: one codebook per output channel instead of one per tensor.
    preserve_sparsity: weights that are zero stay exactly zero; the zero centroid does not train.
    cluster_gradient_aggregation: see :class:`GradientAggregation`.
    reassignment: see :class:`Reassignment`.
    seed: seed of the RANDOM and KMEANS_PLUS_PLUS initialisations.
    """

    number_of_clusters: int
    cluster_centroids_init: CentroidInitialization = CentroidInitialization.LINEAR
    cluster_per_channel: bool = False
    preserve_sparsity: bool = False
    cluster_gradient_aggregation: GradientAggregation = GradientAggregation.SUM
    reassignment: Reassignment = Reassignment.EVERY_STEP
    seed: int | None = None

    def __post_init__(self):
        check_cluster_count(self.number_of_clusters)
        object.__setattr__(self, "number_of_clusters", int(self.number_of_clusters))
        object.__setattr__(
            self, "cluster_centroids_init", _parse_init(self.cluster_centroids_init)
        )
        object.__setattr__(
            self,
            "cluster_gradient_aggregation",
            GradientAggregation.parse(self.cluster_gradient_aggregation),
        )
        object.__setattr__(self, "reassignment", Reassignment.parse(self.reassignment))
        for flag in ("cluster_per_channel", "preserve_sparsity"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.preserve_sparsity and self.number_of_clusters < 2:
            raise InvalidClusterCountError(
                "preserve_sparsity needs number_of_clusters >= 2: one centroid is reserved for zero"
            )
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    def to_config(self) -> dict:
        """Plain JSON-serialisable values (enums as their string values)."""
        config = asdict(self)
        for key, value in config.items():
            if isinstance(value, enum.Enum):
                config[key] = value.value
        return config


def _parse_init(value) -> CentroidInitialization:
    """The core's parser, also accepting TFMOT's ``"CentroidInitialization.LINEAR"`` strings."""
    if isinstance(value, str) and "." in value and not isinstance(value, CentroidInitialization):
        value = value.rpartition(".")[2]
    return CentroidInitialization.parse(value)
