"""What Deep Compression compresses how much (:class:`DeepCompressionConfig`, validated once, with its per-layer
rules) and the data it retrains on (:class:`Dataset`); the stages themselves are in :mod:`.deep_compression`."""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

import keras
import numpy as np

from weightzip.core import CentroidInitialization
from weightzip.core.errors import InvalidArgumentError
from weightzip.core.rules import CONVOLUTION, LayerRules
from weightzip.keras._layers import is_convolution
from weightzip.keras._rewrite import iter_layers
from weightzip.keras.clustering.config import Reassignment
from weightzip.keras.pruning.registry import compressible_weight_names


def _is_count(value, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum


def _check_sparsity(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value < 1.0:
        raise InvalidArgumentError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_real(name: str, value, low: float, high: float, *, open_low: bool = False) -> None:
    """`value` a finite real number in [low, high] ((low, high] with `open_low`); infinite `high` excluded."""
    is_real = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not is_real or math.isnan(value) or value < low or (open_low and value == low) or value > high \
            or math.isinf(value):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if math.isinf(high) else ']'}"
        raise InvalidArgumentError(f"{name} must be a number in {interval}, got {value!r}")


def _check_clusters(name: str, value) -> int:
    if not _is_count(value, 2) or value > 65536:
        raise InvalidArgumentError(f"{name} must be an integer in [2, 65536], got {value!r}")
    return int(value)


def _frozen_mapping(name: str, mapping, check) -> Mapping:
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise InvalidArgumentError(f"{name} must be a mapping of layer name -> value, got {type(mapping).__name__}")
    checked = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"{name} keys must be layer names (non-empty strings), got {key!r}")
        checked[key] = check(f"{name}[{key!r}]", value)
    return types.MappingProxyType(checked)


def _rules(value, conv, layers: Mapping) -> LayerRules:
    """One option's LayerRules: `value` (a number or LayerRules), `conv` its CONVOLUTION type rule, `layers` names."""
    rules = LayerRules.of(value, conv)
    for name, layer_value in layers.items():
        rules = rules.set_name(name, layer_value)
    return rules


def _categories(layer) -> tuple[str, ...]:
    return (CONVOLUTION,) if is_convolution(layer) else ()


@dataclass(frozen=True)
class DeepCompressionConfig:
    """What to compress how much, and how long to retrain after each stage.

    sparsity / conv_sparsity: fraction of kernel weights pruned in non-convolutional / convolutional
        layers (0 disables pruning of that kind; conv_sparsity None: 0.6, the paper's).
    layer_sparsity: layer name -> sparsity, overriding the two above for that layer (the paper prunes
        every layer at its own rate, e.g. 92/91/74 % for LeNet-300-100).
    clusters / conv_clusters: shared weights per kernel (k; one of them is the pruned zero; conv_clusters None: 64).
    layer_clusters: layer name -> k, overriding the two above for that layer.
    (The three sparsity fields build :attr:`sparsity_rules`, the three cluster fields :attr:`cluster_rules`: one
    global / type / name :class:`~weightzip.core.rules.LayerRules` each, the rule object of every per-layer option.
    `sparsity` and `clusters` may themselves be LayerRules, the same object post-training and the CLI take: they are
    then the whole rule, with conv_* (when not None) and layer_* added as its CONVOLUTION type and name rules.)
    prune_epochs / cluster_epochs: retraining epochs after pruning and after clustering (0: post-training).
    ramp_fraction: share of the pruning epochs over which the sparsity rises to its target (the rest
        retrain at the target sparsity).
    ramp_power: exponent of the polynomial ramp (3, as TFMOT: prune fast first, slowly near the end).
    learning_rate: Adam learning rate of the pruning retraining.
    cluster_learning_rate: Adam learning rate of the centroid fine-tuning (None: `learning_rate`).
    reassignment: whether weights may change cluster while the centroids train (EVERY_STEP, TFMOT's
        behaviour) or keep the assignment made at clustering time (FIXED, the paper's).
    weight_decay: decoupled weight decay (AdamW's, scaled by the learning rate) during the pruning
        retraining: the paper retrains pruned networks with L2 regularisation, which keeps the few
        remaining weights from overfitting a small training set. Not applied to the centroids.
    cosine_decay: let the learning rate of each retraining stage fall along a cosine to
        `final_learning_rate_fraction` of its start (settles the weights, like the float training
        should have); False keeps it constant.
    init: centroid initialisation (the paper's best, LINEAR, by default).
    """

    sparsity: float | LayerRules = 0.92
    conv_sparsity: float | None = None
    clusters: int | LayerRules = 32
    conv_clusters: int | None = None
    prune_epochs: int = 6
    cluster_epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 5e-4
    init: CentroidInitialization = CentroidInitialization.LINEAR
    seed: int = 0
    layer_sparsity: Mapping[str, float] = field(default_factory=dict)
    layer_clusters: Mapping[str, int] = field(default_factory=dict)
    ramp_fraction: float = 0.5
    ramp_power: float = 3.0
    cluster_learning_rate: float | None = None
    reassignment: Reassignment = Reassignment.EVERY_STEP
    cosine_decay: bool = True
    final_learning_rate_fraction: float = 0.05
    weight_decay: float = 0.0

    def __post_init__(self):
        def set_(name, value):  # the dataclass is frozen: normalised values are set this way
            object.__setattr__(self, name, value)

        for name, check, paper in (("sparsity", _check_sparsity, 0.6), ("clusters", _check_clusters, 64)):
            value, conv = getattr(self, name), getattr(self, f"conv_{name}")
            if isinstance(value, LayerRules):
                set_(name, value.checked(check, name))
            else:
                set_(name, check(name, value))
                conv = paper if conv is None else conv  # the paper's convolution setting unless told
            set_(f"conv_{name}", None if conv is None else check(f"conv_{name}", conv))
        for name in ("prune_epochs", "cluster_epochs"):
            if not _is_count(getattr(self, name), 0):
                raise InvalidArgumentError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if not _is_count(self.batch_size, 1):
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not _is_count(self.seed, 0):
            raise InvalidArgumentError(f"seed must be a non-negative integer, got {self.seed!r}")
        _check_real("learning_rate", self.learning_rate, 0.0, math.inf, open_low=True)
        if self.cluster_learning_rate is not None:
            _check_real("cluster_learning_rate", self.cluster_learning_rate, 0.0, math.inf, open_low=True)
        _check_real("ramp_fraction", self.ramp_fraction, 0.0, 1.0, open_low=True)
        _check_real("ramp_power", self.ramp_power, 0.0, math.inf, open_low=True)
        _check_real("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_real("final_learning_rate_fraction", self.final_learning_rate_fraction, 0.0, 1.0)
        if not isinstance(self.cosine_decay, bool):
            raise InvalidArgumentError(f"cosine_decay must be True or False, got {self.cosine_decay!r}")
        set_("init", CentroidInitialization.parse(self.init))
        set_("reassignment", Reassignment.parse(self.reassignment))
        set_("layer_sparsity", _frozen_mapping("layer_sparsity", self.layer_sparsity, _check_sparsity))
        set_("layer_clusters", _frozen_mapping("layer_clusters", self.layer_clusters, _check_clusters))

    @property
    def fine_tuning_rate(self) -> float:
        """The learning rate of the centroid fine-tuning."""
        return self.learning_rate if self.cluster_learning_rate is None else self.cluster_learning_rate

    @property
    def sparsity_rules(self) -> LayerRules:
        """`sparsity`, `conv_sparsity` and `layer_sparsity` as one :class:`~weightzip.core.rules.LayerRules` (the
        global value, the CONVOLUTION type rule, the name rules): how every per-layer option of weightzip resolves."""
        return _rules(self.sparsity, self.conv_sparsity, self.layer_sparsity)

    @property
    def cluster_rules(self) -> LayerRules:
        """`clusters`, `conv_clusters` and `layer_clusters` as one :class:`~weightzip.core.rules.LayerRules`."""
        return _rules(self.clusters, self.conv_clusters, self.layer_clusters)

    def sparsity_of(self, layer: keras.layers.Layer) -> float:
        """Target sparsity of `layer`'s kernels (0 for a layer without any)."""
        if not compressible_weight_names(layer):
            return 0.0
        return self.sparsity_rules.value_for(layer.name, layer, _categories(layer))

    def clusters_of(self, layer: keras.layers.Layer) -> int:
        """Shared weights per kernel of `layer`."""
        return self.cluster_rules.value_for(layer.name, layer, _categories(layer))

    def check_layer_names(self, model: keras.Model) -> None:
        """Raise a WeightzipError when a per-layer setting names no compressible layer of `model`."""
        compressible = [layer.name for layer in iter_layers(model, descend=_is_model)
                        if compressible_weight_names(layer)]
        for option, rules in (("layer_sparsity", self.sparsity_rules), ("layer_clusters", self.cluster_rules)):
            rules.check_names(compressible, option, f" of model {model.name!r}")

    def to_json(self) -> dict:
        """Plain JSON values (stored in the `.wz` metadata)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["init"] = self.init.value
        values["reassignment"] = self.reassignment.value
        values["layer_sparsity"] = dict(self.layer_sparsity)
        values["layer_clusters"] = dict(self.layer_clusters)
        for name in ("sparsity", "clusters"):
            if isinstance(values[name], LayerRules):
                values[name] = values[name].to_json()
        return values


@dataclass(frozen=True)
class Dataset:
    """Training data for retraining and held-out data for the accuracy of every stage (integer labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self):
        for x, y, part in ((self.x_train, self.y_train, "train"), (self.x_test, self.y_test, "test")):
            if len(x) != len(y):
                raise InvalidArgumentError(f"x_{part} has {len(x)} samples but y_{part} has {len(y)} labels")
            if len(x) == 0:
                raise InvalidArgumentError(f"the {part} set is empty")


def _is_model(layer) -> bool:
    return isinstance(layer, keras.Model)
