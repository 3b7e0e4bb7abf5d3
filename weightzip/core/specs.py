"""One spec per technique, shared by the Keras and PyTorch front ends.

A spec says *what* to do to every selected weight, with the same field names in both front ends:

- :class:`ClusteringSpec`: trained (or post-training) weight clustering: number_of_clusters, init, granularity
  (per tensor, per channel, or `group_size` channels per codebook), preserve_sparsity, gradient_aggregation,
  reassignment, lloyd_iterations, seed;
- :class:`PruningSpec`: magnitude pruning: pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n,
  per_channel;
- :class:`PostTrainingSpec`: post-training compression (no retraining): clusters / sparsity (values or
  :class:`~weightzip.core.rules.LayerRules`), init, granularity, the size or fidelity goal, sensitivity, the
  calibration split, compensation and bias correction.

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

from weightzip.core.allocation import Candidates
from weightzip.core.centroid_init import CentroidInitialization
from weightzip.core.cluster import ClusterConfig
from weightzip.core.codebook_tuning import CodebookTuning
from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError, InvalidClusterCountError
from weightzip.core.options import BlockPooling, GradientAggregation, InvalidOptionError, Reassignment
from weightzip.core.post_training import Sensitivity, check_goals, choose_plan
from weightzip.core.pruning import InvalidSparsityError
from weightzip.core.rules import LayerRules
from weightzip.core.schedules import ConstantSparsity, PruningSchedule, schedule_from_config
from weightzip.core.validation import check_cluster_count, check_fraction

__all__ = ["ClusteringSpec", "PostTrainingSpec", "PruningSpec", "build_spec", "granularity_of"]


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


GRANULARITIES = ("tensor", "channel", "group")


def granularity_of(granularity: str | None, group_size: int | None, per_channel: bool) -> str:
    """The granularity meant by the `granularity` / `per_channel` / `group_size` keywords: `granularity` when
    given, else "group" (a `group_size` other than 1) or "channel" with `per_channel`, else "tensor"."""
    _check_flag("per_channel", per_channel)
    if granularity is None:
        return ("group" if group_size not in (None, 1) else "channel") if per_channel else "tensor"
    if per_channel and granularity == "tensor":
        raise InvalidArgumentError("per_channel=True contradicts granularity='tensor'")
    return granularity


@dataclass(frozen=True)
class PostTrainingSpec:
    """How to compress a trained model without retraining, the same on both front ends.

    ``weightzip.keras.compress_post_training`` and ``weightzip.torch.compress_post_training`` take one as
    ``spec=``, or build one from keywords of the same names (plus ``per_channel`` for granularity "channel" /
    "group", and ``conv_clusters`` / ``conv_sparsity``, the :data:`~weightzip.core.rules.CONVOLUTION` type rule of
    `clusters` / `sparsity`); the CLI builds one from its options.

    clusters: k for every compressed tensor, or :class:`LayerRules` (global / layer type / layer name values);
        the allocation goals below choose k per tensor instead.
    sparsity: magnitude pruning before clustering (a fraction, or LayerRules), pruned zeros kept exactly.
    init: centroid initialisation of uniform clustering (default OPTIMAL, the exact 1-D k-means).
    granularity: "tensor", "channel", or "group" of `group_size` channels per codebook.
    bits_per_weight / target_bytes / min_fidelity: at most one goal; the allocation picks k and granularity per
        tensor to meet it (bits per compressed weight; bytes of the whole `.wz` file; fidelity on the fit part).
    sensitivity: what weights the clustering error (:class:`Sensitivity`); None: "fisher" with calibration
        inputs, "none" without.
    outliers: a dense-and-sparse side stream (not supported by this version: 0).
    candidates: the allocation's candidate settings (:class:`~weightzip.core.allocation.Candidates`).
    held_out: the calibration fraction held out to measure fidelity; seed: the split's and the Fisher
        sampling's seed.
    classifier: whether the outputs are class scores (top-1 agreement); None: a 2-D output of >= 2 columns.
    compensation: with calibration and a sensitivity, re-choose the clustered kernels' indices for their
        layers' output error (:mod:`weightzip.core.compensation`).
    bias_correction: with calibration, restore each compressed layer's float output mean (its bias, or on
        PyTorch a following BatchNorm's mean); None: on.
    output_scale: with bias correction, a layer whose output feeds only a batch normalisation also gets a
        per-channel scale fitted to the float outputs, folded into that normalisation's statistics
        (:mod:`weightzip.core.output_correction`). None: on (both front ends).
    codebook_tuning: with calibration, train the chosen plan's centroids for the float model's outputs
        (:class:`~weightzip.core.codebook_tuning.CodebookTuning`, or True / False / a dict of its fields);
        None: off (both front ends).
    """

    clusters: int | LayerRules = 16
    sparsity: float | LayerRules = 0.0
    init: CentroidInitialization = CentroidInitialization.OPTIMAL
    granularity: str = "tensor"
    group_size: int | None = None
    bits_per_weight: float | None = None
    target_bytes: int | None = None
    min_fidelity: float | None = None
    sensitivity: Sensitivity | None = None
    outliers: float = 0.0
    candidates: Candidates | None = None
    held_out: float = 0.25
    seed: int = 0
    classifier: bool | None = None
    compensation: bool = True
    bias_correction: bool | None = None
    output_scale: bool | None = None
    codebook_tuning: CodebookTuning | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "clusters", LayerRules.of(self.clusters).checked(_checked_k, "clusters"))
        set_(self, "sparsity", LayerRules.of(self.sparsity).checked(_checked_sparsity, "sparsity"))
        set_(self, "init", CentroidInitialization.parse(self.init))
        if self.granularity not in GRANULARITIES:
            raise InvalidArgumentError(f"granularity must be 'tensor', 'channel' or 'group', got {self.granularity!r}")
        if self.granularity == "group":
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
                raise InvalidArgumentError(f"granularity 'group' needs group_size, a positive integer, got "
                                           f"{self.group_size!r}")
        elif self.group_size not in (None, 1):
            raise InvalidArgumentError(f"group_size only applies with granularity 'group' (got {self.granularity!r})")
        else:
            set_(self, "group_size", None)
        goals = [name for name in ("bits_per_weight", "target_bytes", "min_fidelity") if getattr(self, name) is not None]
        if len(goals) > 1:
            raise InvalidArgumentError("give at most one of bits_per_weight, target_bytes and min_fidelity")
        if self.bits_per_weight is not None and not _positive(self.bits_per_weight, float):
            raise InvalidArgumentError(f"bits_per_weight must be a positive number, got {self.bits_per_weight!r}")
        if self.target_bytes is not None and not _positive(self.target_bytes, int):
            raise InvalidArgumentError(f"target_bytes must be a positive integer, got {self.target_bytes!r}")
        if self.min_fidelity is not None and not (_positive(self.min_fidelity, float) and self.min_fidelity <= 1.0):
            raise InvalidArgumentError(f"min_fidelity must be a number in (0, 1], got {self.min_fidelity!r}")
        if goals and self.planned_by_rules:
            raise InvalidArgumentError("sparsity, conv_sparsity, conv_clusters and init apply to uniform clustering "
                                       "only; bits_per_weight / target_bytes / min_fidelity choose them per tensor")
        if self.sensitivity is not None:
            set_(self, "sensitivity", Sensitivity.parse(self.sensitivity, "sensitivity"))
        if self.outliers:
            raise InvalidArgumentError("outliers (a dense-and-sparse side stream) are not supported by this version: "
                                       "leave outliers at 0")
        if self.candidates is not None and not isinstance(self.candidates, Candidates):
            raise ArgumentTypeError(f"candidates must be a Candidates, got {type(self.candidates).__name__}")
        if isinstance(self.held_out, bool) or not isinstance(self.held_out, (int, float)) \
                or not 0.0 < self.held_out < 1.0:
            raise InvalidArgumentError(f"held_out must be a fraction in (0, 1), got {self.held_out!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ArgumentTypeError(f"seed must be an integer, got {self.seed!r}")
        _check_flag("compensation", self.compensation)
        for name in ("classifier", "bias_correction", "output_scale"):
            if getattr(self, name) is not None:
                _check_flag(name, getattr(self, name))
        if self.codebook_tuning is not None:
            set_(self, "codebook_tuning", CodebookTuning.of(self.codebook_tuning))

    @property
    def goal(self) -> bool:
        """Whether a size or fidelity goal is given (the allocation then chooses k and granularity per tensor)."""
        return any(g is not None for g in (self.bits_per_weight, self.target_bytes, self.min_fidelity))

    @property
    def prunes_or_sets_init(self) -> bool:
        """Whether some layer is pruned or the init is not OPTIMAL (the pruned uniform plan then applies)."""
        return any(value > 0 for value in self.sparsity.values) or self.init is not CentroidInitialization.OPTIMAL

    @property
    def varied_clusters(self) -> bool:
        """Whether the rules give layers different k (each k's tensors are then planned together)."""
        return len(set(self.clusters.values)) > 1

    @property
    def planned_by_rules(self) -> bool:
        """Whether the rules vary k, prune or set the init, so that they plan the tensors (uniform_plans.rule_plan),
        not the goal (such a plan is neither allocated nor compensated)."""
        return self.prunes_or_sets_init or self.varied_clusters

    def plan(self, tensors: list, sensitivity: Sensitivity, *, file_bytes=None, fidelity_of=None, refine=None):
        """(plan, mode) by :func:`~weightzip.core.post_training.choose_plan` with this spec's global k, granularity,
        goal and candidates (`file_bytes` / `fidelity_of` / `refine`: the front end's measures, as there)."""
        return choose_plan(tensors, clusters=self.clusters.default, granularity=self.granularity,
                           group_size=self.group_size, weighted=sensitivity is not Sensitivity.NONE,
                           bits_per_weight=self.bits_per_weight, target_bytes=self.target_bytes,
                           min_fidelity=self.min_fidelity, candidates=self.candidates, file_bytes=file_bytes,
                           fidelity_of=fidelity_of, refine=refine)

    def sensitivity_for(self, calibration_given: bool) -> Sensitivity:
        """The sensitivity to use (default "fisher" with calibration inputs, else "none"); refuses one, or
        min_fidelity, that needs calibration inputs not given (:func:`~weightzip.core.post_training.check_goals`)."""
        return check_goals(calibration_given=calibration_given, bits_per_weight=self.bits_per_weight,
                           target_bytes=self.target_bytes, min_fidelity=self.min_fidelity,
                           sensitivity=self.sensitivity)

    KEYWORDS = ("per_channel", "conv_clusters", "conv_sparsity")  # the keywords a front end adds to the fields

    @classmethod
    def from_call(cls, arguments: dict) -> "PostTrainingSpec":
        """The spec of a front end's ``compress_post_training`` call from its `arguments` (its ``locals()`` on entry):
        ``spec`` and the keywords named like the fields or in :attr:`KEYWORDS` (see :meth:`from_keywords`)."""
        names = {f.name for f in dataclasses.fields(cls)} | set(cls.KEYWORDS)
        return cls.from_keywords(arguments.get("spec"), **{k: v for k, v in arguments.items() if k in names})

    @classmethod
    def from_keywords(cls, spec: "PostTrainingSpec | None" = None, *, per_channel: bool = False,
                      conv_clusters: int | None = None, conv_sparsity: float | None = None,
                      granularity: str | None = None, **fields) -> "PostTrainingSpec":
        """The spec a front-end call means: `spec` (or the defaults) with the keywords that differ from their
        defaults replacing its fields (a keyword equal to its default leaves the spec's value);
        `per_channel` / `granularity` / `group_size` resolved by :func:`granularity_of`, `conv_clusters` /
        `conv_sparsity` the CONVOLUTION type rule of `clusters` / `sparsity`."""
        if spec is not None and not isinstance(spec, cls):
            raise ArgumentTypeError(f"spec must be a {cls.__name__}, got {type(spec).__name__}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - set(defaults))
        if unknown:
            raise ArgumentTypeError(f"unknown post-training options {unknown}")
        given = {name: value for name, value in fields.items()
                 if not (value is defaults[name] or (type(value) is type(defaults[name]) and value == defaults[name]))}
        if granularity is not None or per_channel:
            given["granularity"] = granularity_of(granularity, fields.get("group_size"), per_channel)
        base = spec or cls()
        for name, conv in (("clusters", conv_clusters), ("sparsity", conv_sparsity)):
            if conv is not None:
                given[name] = LayerRules.of(given.get(name, getattr(base, name)), conv)
        return dataclasses.replace(base, **given)


def _checked_k(what: str, k) -> int:
    try:
        return check_cluster_count(k)
    except InvalidClusterCountError as error:
        raise InvalidClusterCountError(f"{what}: {error}") from None


def _checked_sparsity(what: str, value) -> float:
    return check_fraction(value, what, InvalidArgumentError)


def _positive(value, kind: type) -> bool:
    numeric = (int, float) if kind is float else (int,)
    return not isinstance(value, bool) and isinstance(value, numeric) and value > 0
