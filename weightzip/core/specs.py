"""One spec per technique, shared by the Keras and PyTorch front ends.

A spec says *what* to do to every selected weight, with the same field names in both front ends:

- :class:`ClusteringSpec`: trained (or post-training) weight clustering: number_of_clusters, init, granularity
  (per tensor, per channel, or `group_size` channels per codebook), preserve_sparsity, gradient_aggregation,
  reassignment, lloyd_iterations, seed;
- :class:`PruningSpec`: magnitude pruning: pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n,
  per_channel.

``weightzip.torch.cluster_weights(module, spec=None, **same_names)`` and ``prune_low_magnitude`` build one from
their keywords (keywords given next to a spec override its fields, through :func:`dataclasses.replace`);
``weightzip.keras.ClusteringParams`` is the TFMOT-spelled view of a :class:`ClusteringSpec`
(``cluster_centroids_init`` is `init`, ``cluster_per_channel`` is `per_channel`, ``cluster_gradient_aggregation``
is `gradient_aggregation`). Specs are frozen and validated when built, so a bad value fails at the call that
names it, with a :class:`~weightzip.core.errors.WeightzipError` subclass.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from weightzip.core.centroid_init import CentroidInitialization
from weightzip.core.cluster import ClusterConfig
from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError, InvalidClusterCountError
from weightzip.core.options import BlockPooling, GradientAggregation, InvalidOptionError, Reassignment
from weightzip.core.pruning import InvalidSparsityError
from weightzip.core.schedules import ConstantSparsity, PruningSchedule, schedule_from_config
from weightzip.core.validation import check_cluster_count

__all__ = ["ClusteringSpec", "PruningSpec", "build_spec"]


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r}")


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ClusteringSpec:
    """How to cluster every selected weight.

    number_of_clusters: k, the shared values per codebook (with `preserve_sparsity`, one of them is the exact 0).
    init: where the centroids start (:class:`CentroidInitialization`, or its value or name).
    per_channel: one codebook per output channel (each layer type's channel axis) instead of one per tensor;
    group_size: with `per_channel`, that many consecutive channels share a codebook (1 = per channel).
    preserve_sparsity: zero weights stay exactly zero (the zero centroid does not train).
    gradient_aggregation: how a centroid's gradient is formed from its members' (:class:`GradientAggregation`).
    reassignment: :class:`Reassignment` during fine-tuning; None = the front end's default (Keras EVERY_STEP as
        TFMOT; PyTorch FIXED, the only mode it implements, so it refuses EVERY_STEP).
    lloyd_iterations: Lloyd refinement of the initial centroids (0 = none, as TFMOT).
    seed: seed of the RANDOM and KMEANS_PLUS_PLUS initialisations.
    """

    number_of_clusters: int
    init: CentroidInitialization = CentroidInitialization.LINEAR
    per_channel: bool = False
    group_size: int = 1
    preserve_sparsity: bool = False
    gradient_aggregation: GradientAggregation = GradientAggregation.SUM
    reassignment: Reassignment | None = None
    lloyd_iterations: int = 0
    seed: int | None = None

    def __post_init__(self):
        check_cluster_count(self.number_of_clusters)
        set_ = object.__setattr__
        set_(self, "number_of_clusters", int(self.number_of_clusters))
        set_(self, "init", CentroidInitialization.parse(self.init))
        set_(self, "gradient_aggregation", GradientAggregation.parse(self.gradient_aggregation,
                                                                   "gradient_aggregation (GradientAggregation)"))
        if self.reassignment is not None:
            set_(self, "reassignment", Reassignment.parse(self.reassignment, "reassignment (Reassignment)"))
        _check_flag("per_channel", self.per_channel)
        _check_flag("preserve_sparsity", self.preserve_sparsity)
        _check_count("group_size", self.group_size, 1)
        if self.group_size != 1 and not self.per_channel:
            raise InvalidArgumentError("group_size only applies with per_channel=True")
        _check_count("lloyd_iterations", self.lloyd_iterations, 0)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ArgumentTypeError(f"seed must be an integer or None, got {self.seed!r}")
        if self.preserve_sparsity and self.number_of_clusters < 2:
            raise InvalidClusterCountError(
                "preserve_sparsity needs number_of_clusters >= 2: one centroid is reserved for zero"
            )

    @property
    def granularity(self) -> str:
        """"per tensor", "per channel" or "per N channels", in words (for reports and reprs)."""
        if not self.per_channel:
            return "per tensor"
        return "per channel" if self.group_size == 1 else f"per {self.group_size} channels"

    def cluster_config(self, channel_axis: int | None) -> ClusterConfig:
        """The core's per-tensor :class:`ClusterConfig` for a weight whose output channels lie on `channel_axis`."""
        return ClusterConfig(self.number_of_clusters, self.init, self.lloyd_iterations,
                             channel_axis if self.per_channel else None, self.group_size, self.preserve_sparsity,
                             self.seed)

    def get_config(self) -> dict:
        """Plain JSON values (enums as their string values); :meth:`from_config` rebuilds the spec."""
        return {key: value.value if isinstance(value, enum.Enum) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> "ClusteringSpec":
        return cls(**config)


@dataclass(frozen=True)
class PruningSpec:
    """How to magnitude-prune every selected weight (TFMOT's ``prune_low_magnitude`` arguments, both front ends).

    pruning_schedule: when and how much (:class:`~weightzip.core.pruning.ConstantSparsity`,
        :class:`~weightzip.core.pruning.PolynomialDecay`, or a schedule's ``get_config()`` dict); default 50 % from
        step 0.
    block_size: ``(rows, cols)`` blocks pruned together, over the weight's (output, input) axes; None (or
        ``(1, 1)``, TFMOT's spelling) prunes single weights.
    block_pooling_type: how a block's magnitudes are scored (:class:`BlockPooling`: "avg"/"AVG" or "max"/"MAX").
    sparsity_m_by_n: ``(n, m)``: keep the n largest of every m consecutive weights along the input axis (``(2, 4)``
        is 2:4); the schedule then only says *when* to prune.
    per_channel: every output channel pruned to the same sparsity (else the tensor is ranked as a whole).
    """

    pruning_schedule: PruningSchedule = ConstantSparsity(0.5, 0)
    block_size: tuple[int, int] | None = None
    block_pooling_type: BlockPooling = BlockPooling.AVG
    sparsity_m_by_n: tuple[int, int] | None = None
    per_channel: bool = False

    def __post_init__(self):
        set_ = object.__setattr__
        schedule = self.pruning_schedule
        if isinstance(schedule, dict):
            schedule = schedule_from_config(schedule)
        if not isinstance(schedule, PruningSchedule):
            raise ArgumentTypeError(f"pruning_schedule must be a weightzip PruningSchedule (ConstantSparsity, "
                                    f"PolynomialDecay), got {schedule!r}")
        set_(self, "pruning_schedule", schedule)
        try:
            set_(self, "block_pooling_type", BlockPooling.parse(self.block_pooling_type))
        except InvalidOptionError:
            raise InvalidSparsityError(f"block_pooling_type must be 'AVG' or 'MAX', got {self.block_pooling_type!r}") \
                from None
        block = None if self.block_size is None else _pair("block_size", self.block_size, "(rows, cols)")
        if block is not None and min(block) < 1:
            raise InvalidSparsityError(f"block_size entries must be >= 1, got {self.block_size!r}")
        set_(self, "block_size", None if block == (1, 1) else block)
        if self.sparsity_m_by_n is not None:
            n, m = _pair("sparsity_m_by_n", self.sparsity_m_by_n, "(n, m)")
            if not 0 < n <= m:
                raise InvalidSparsityError(f"sparsity_m_by_n needs 0 < n <= m, got {self.sparsity_m_by_n!r}")
            set_(self, "sparsity_m_by_n", (n, m))
            if self.block_size is not None or self.per_channel:
                raise InvalidSparsityError("sparsity_m_by_n cannot be combined with block_size or per_channel")
        _check_flag("per_channel", self.per_channel)


def _pair(name: str, value, shape: str) -> tuple[int, int]:
    try:
        first, second = value
    except (TypeError, ValueError):
        raise InvalidSparsityError(f"{name} must be a pair {shape}, got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (first, second)):
        raise InvalidSparsityError(f"{name} must be a pair of integers {shape}, got {value!r}")
    return int(first), int(second)


def build_spec(spec_type: type, spec, what: str, **fields):
    """A `spec_type` from `spec` and the keyword `fields` a front-end call was given (None = not given).

    Without `spec` the fields build one (the type's defaults fill the rest); with it, the given fields
    override its values (:func:`dataclasses.replace`), so ``cluster_weights(model, spec=s, seed=1)`` is
    ``cluster_weights(model, spec=dataclasses.replace(s, seed=1))``.
    """
    given = {name: value for name, value in fields.items() if value is not None}
    if spec is None:
        try:
            return spec_type(**given)
        except ArgumentTypeError:
            raise
        except TypeError as error:  # a required field (number_of_clusters) is missing
            raise ArgumentTypeError(f"{what}: {error}; pass it or spec={spec_type.__name__}(...)") from None
    if not isinstance(spec, spec_type):
        raise ArgumentTypeError(f"{what}: spec must be a {spec_type.__name__}, got {type(spec).__name__}")
    return dataclasses.replace(spec, **given)
