"""Per-layer values by one rule: a global value, overrides by layer type, overrides by layer name.

The same object answers "how much to prune / how many clusters / which spec for this layer?" for the Keras
Deep Compression pipeline (``DeepCompressionConfig``'s sparsity / conv_sparsity / layer_sparsity and clusters /
conv_clusters / layer_clusters build two of them, or take them directly), the post-training paths
(``compress_state_dict``'s ``number_of_clusters`` / ``sparsity``, both front ends' ``compress_post_training`` through
:class:`~weightzip.core.specs.PostTrainingSpec`), PyTorch's ``layers=`` argument, and the CLI's
``--conv-*`` flags. It follows coremltools' ``OptimizationConfig`` (``set_global`` / ``set_module_type`` /
``set_module_name``, resolved by ``get_module_config(name, module)``)::

    rules = LayerRules(16).set_type(CONVOLUTION, 64).set_name("fc2", 8)
    rules.value_for("fc2", layer)                          # 8: a name beats a type, a type beats the global value

A type is a class (matched with ``isinstance``; the class nearest the layer's own in its MRO wins) or a category
string such as :data:`CONVOLUTION`, which the front end decides for each layer (what counts as a convolution is the
front end's layer table's business, not the rule's). A name matches the layer of that name and, for nested models,
every layer inside it (``"features"`` covers ``"features.3"``); the longest matching name wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["CONVOLUTION", "LayerRules"]

CONVOLUTION = "convolution"
"""The category of convolution layers (their kernels have spatial axes)."""


@dataclass(frozen=True)
class LayerRules:
    """A value for every layer: `default` unless a type or name rule says otherwise (see the module docstring).

    Immutable: ``set_global`` / ``set_type`` / ``set_name`` return a new object (setting a type or name again
    replaces its earlier value). `types` and `names` are ``(key, value)`` pairs in the order they were set.
    """

    default: Any = None
    types: tuple[tuple[type | str, Any], ...] = ()
    names: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "types", tuple(_pairs(self.types, "types")))
        object.__setattr__(self, "names", tuple(_pairs(self.names, "names")))
        for kind, _ in self.types:
            if not (isinstance(kind, type) or (isinstance(kind, str) and kind)):
                raise ArgumentTypeError(f"a type rule's key must be a class or a category string, got {kind!r}")
        for name, _ in self.names:
            if not isinstance(name, str) or not name:
                raise ArgumentTypeError(f"a name rule's key must be a layer name (a non-empty string), got {name!r}")

    @classmethod
    def tiers(cls, default=None, *, conv=None, layers: Mapping[str, Any] | None = None) -> "LayerRules":
        """The two-tier spelling weightzip's options used before rules: a value for every layer, one for
        convolutions (None: the same), and layer name -> value overrides."""
        if layers is not None and not isinstance(layers, Mapping):
            raise ArgumentTypeError(f"layer overrides must be a mapping of layer name -> value, got "
                                    f"{type(layers).__name__}")
        rules = cls(default, (), tuple((layers or {}).items()))
        return rules if conv is None else rules.set_type(CONVOLUTION, conv)

    @classmethod
    def of(cls, value, conv=None) -> "LayerRules":
        """`value` itself when it is a LayerRules, else the rules giving `value` to every layer; with `conv`
        (not None), its :data:`CONVOLUTION` type rule set to `conv` (the ``conv_*`` options' meaning)."""
        rules = value if isinstance(value, LayerRules) else cls(value)
        return rules if conv is None else rules.set_type(CONVOLUTION, conv)

    def set_global(self, value) -> "LayerRules":
        return LayerRules(value, self.types, self.names)

    def set_type(self, kind: type | str, value) -> "LayerRules":
        return LayerRules(self.default, _replaced(self.types, kind, value), self.names)

    def set_name(self, name: str, value) -> "LayerRules":
        return LayerRules(self.default, self.types, _replaced(self.names, name, value))

    def value_for(self, name: str, layer=None, categories: Iterable[str] = ()):
        """The value of the layer called `name` (`layer` the object, for class rules; `categories` the category
        strings the front end gives it, e.g. ``{CONVOLUTION}``): by name, else by type, else the default."""
        named = self.name_rule_for(name)
        if named is not None:
            return named[1]
        if layer is not None:
            classes = dict((kind, value) for kind, value in self.types if isinstance(kind, type))
            for kind in type(layer).__mro__:
                if kind in classes:
                    return classes[kind]
        categories = set(categories)
        for kind, value in self.types:
            if isinstance(kind, str) and kind in categories:
                return value
        return self.default

    def name_rule_for(self, name: str) -> tuple[str, Any] | None:
        """The ``(name, value)`` rule that covers the layer `name` (the longest matching one), or None."""
        matches = [(key, value) for key, value in self.names if name == key or name.startswith(key + ".")]
        return max(matches, key=lambda match: len(match[0])) if matches else None

    @property
    def has_class_rules(self) -> bool:
        """Whether a type rule names a class (which needs the layer object to resolve)."""
        return any(isinstance(kind, type) for kind, _ in self.types)

    @property
    def values(self) -> list:
        """Every value the rules can give: the default, then the type rules', then the name rules'."""
        return [self.default, *(value for _, value in self.types), *(value for _, value in self.names)]

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The names the rules mention (to check them against a model's layers)."""
        return tuple(name for name, _ in self.names)

    def to_json(self) -> dict:
        """The rules in plain JSON values (for a file's metadata): classes by their names."""
        return {"default": self.default, "types": [[_label(kind).strip("'"), value] for kind, value in self.types],
                "names": dict(self.names)}

    def checked(self, check: Callable[[str, Any], Any], what: str) -> "LayerRules":
        """The rules with every value passed through ``check(label, value)`` (which validates and may normalise
        it, raising a WeightzipError naming `label`)."""
        return LayerRules(
            check(what, self.default),
            tuple((kind, check(f"{what}[{_label(kind)}]", value)) for kind, value in self.types),
            tuple((name, check(f"{what}[{name!r}]", value)) for name, value in self.names),
        )

    def check_names(self, known: Iterable[str], what: str, where: str = "") -> None:
        """Refuse a name rule that matches none of the layers `known` (a typo must not pass in silence); `where`
        (e.g. " of model 'm'") follows "not compressible layers" in the message."""
        known = list(known)
        unknown = sorted(name for name in self.layer_names
                         if not any(layer == name or layer.startswith(name + ".") for layer in known))
        if unknown:
            raise InvalidArgumentError(f"{what} names layers {unknown} that are not compressible layers{where}; "
                                       f"the compressible layers are {known}")


def _label(kind) -> str:
    return kind.__name__ if isinstance(kind, type) else repr(kind)


def _pairs(pairs, what: str) -> list[tuple]:
    if isinstance(pairs, Mapping):
        pairs = pairs.items()
    try:
        found = [tuple(pair) for pair in pairs]
    except TypeError:
        raise ArgumentTypeError(f"{what} must be (key, value) pairs or a mapping, got {pairs!r}") from None
    if any(len(pair) != 2 for pair in found):
        raise ArgumentTypeError(f"{what} must be (key, value) pairs or a mapping, got {pairs!r}")
    keys = [key for key, _ in found]
    if len(set(keys)) != len(keys):
        raise InvalidArgumentError(f"{what} sets a key twice: {keys}")
    return found


def _replaced(pairs: tuple, key, value) -> tuple:
    return tuple((k, v) for k, v in pairs if k != key) + ((key, value),)
