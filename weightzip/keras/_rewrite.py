"""The one model rewriter of the Keras front end: clone, rewrite in place, strip; layer walks; layer copies.

Clustering, pruning, quantisation-aware training, the Deep Compression stages and the post-training path
all turn a model into another one layer by layer. Each says only *what* a layer becomes, as a `replace`
policy ``replace(layer, rewriter) -> replacement or None``; :class:`Rewriter` does the walking:

- :meth:`Rewriter.clone`: a Sequential or Functional model rebuilt by ``keras.models.clone_model``, every
  layer replaced by the policy's answer or, for None, by an independent copy (:func:`copy_layer`);
- :meth:`Rewriter.in_place`: the sublayers a subclassed model or a custom container holds in attributes,
  lists and dicts replaced in place (None keeps the sublayer);
- :meth:`Rewriter.rewrite`: one layer or model as given by the user (None keeps it).

Copies share no state with their input, so that fine-tuning a clustered model never changes the pretrained
one (TFMOT shares layer objects, and its fine-tuning moves the original model's weights). A copy is rebuilt
from the layer's config and build config, then given the layer's weights. Wrappers are stripped through
their own ``stripped_layer()`` (see :func:`strip_policy`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator

import keras
from keras import ops

from weightzip.core import WeightzipError
from weightzip.core.errors import InvalidArgumentError
from weightzip.keras._compat import initialize_all_variables, is_graph_model


class LayerCopyError(WeightzipError):
    """A layer that cannot be rebuilt from its config (e.g. a custom layer without get_config)."""


def copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new layer of the same class and config holding copies of `layer`'s weights."""
    try:
        clone = layer.__class__.from_config(layer.get_config())
    except Exception as error:  # custom layers fail in many ways; say which layer and why
        raise LayerCopyError(
            f"cannot copy layer {layer.name!r} ({type(layer).__name__}) from its config: {error}. "
            "Give the layer a get_config() that returns its constructor arguments"
        ) from error
    if not layer.weights:
        return clone
    build_config = layer.get_build_config()
    if not clone.built:
        if not build_config:
            raise LayerCopyError(
                f"cannot copy layer {layer.name!r} ({type(layer).__name__}): it has weights but no "
                "build config (build it by calling it, or on a model with keras.Input)"
            )
        _build_with_values(clone, build_config, layer.weights)
    else:
        _check_same_count(layer.weights, clone.weights)
        for source, target in zip(layer.weights, clone.weights):
            target.assign(ops.copy(source.value))
    for source, target in zip(layer.weights, clone.weights):
        target.trainable = source.trainable
    return clone


def _build_with_values(clone, build_config, source_weights):
    """Build `clone` so that its weights start as copies of `source_weights`.

    Variables created inside a :class:`keras.StatelessScope` defer their initialisation; giving each
    the source value as its initialiser skips drawing random initial values (for a 4096 × 4096
    kernel, most of the cost of a copy). If Keras did not defer them, the values are assigned.
    """
    with keras.StatelessScope(initialize_variables=False):
        clone.build_from_config(build_config)
    _check_same_count(source_weights, clone.weights)
    deferred = all(getattr(variable, "_value", 0) is None for variable in clone.weights)
    if deferred:
        for source, target in zip(source_weights, clone.weights):
            target._initializer = _CopyOf(source)
    initialize_all_variables()
    if not deferred:
        for source, target in zip(source_weights, clone.weights):
            target.assign(ops.copy(source.value))


class _CopyOf:
    """An initialiser returning a fresh copy of a variable's current value."""

    def __init__(self, source):
        self.source = source

    def __call__(self, shape, dtype=None):
        return ops.copy(self.source.value)


def _check_same_count(source_weights, target_weights):
    if len(source_weights) != len(target_weights):
        raise LayerCopyError(
            f"a copy of a layer has {len(target_weights)} weights where the layer has {len(source_weights)}"
        )


# ------------------------------------------------------------------------------------ walking


def iter_layers(root, *, include_root: bool = False, descend: Callable | None = None,
                tracked: bool = False) -> Iterator[keras.layers.Layer]:
    """The layers below `root`, depth first, each before its own sublayers, each once.

    descend(layer): whether to walk below `layer` (default: always). tracked: walk every sublayer Keras
    tracks (``_layers``: attributes of custom layers, the layer inside a wrapper) instead of a model's
    ``.layers``.
    """
    seen: set[int] = set()

    def children(layer):
        if tracked:
            return list(getattr(layer, "_layers", ()) or ())
        return list(getattr(layer, "layers", ()) or ())

    def walk(layer, is_root):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if not is_root or include_root:
            yield layer
        if is_root or descend is None or descend(layer):
            for child in children(layer):
                yield from walk(child, False)

    yield from walk(root, True)


# ------------------------------------------------------------------------------------ rewriting


class _Mode(enum.Enum):
    TOP = "top"            # the layer or model the user passed
    CLONE = "clone"        # a layer inside a model being cloned
    IN_PLACE = "in_place"  # a sublayer of a container rewritten in place


class Rewriter:
    """Replaces layers according to one `replace` policy, memoising each layer's replacement.

    replace(layer, rewriter): the layer's replacement, or None for the default (a copy inside a clone, the
    layer itself otherwise). The policy may call :meth:`own`, :meth:`clone` and :meth:`in_place`.
    """

    def __init__(self, replace: Callable):
        self._replace = replace
        self._mode = _Mode.TOP
        self._copies: dict[int, keras.layers.Layer] = {}
        self._in_place: dict[int, keras.layers.Layer] = {}

    @property
    def cloning(self) -> bool:
        """Whether the layer being replaced belongs to a model being cloned (so it must not be shared)."""
        return self._mode is _Mode.CLONE

    def own(self, layer):
        """`layer` as the replacement may keep it: a copy inside a clone or of a built layer passed by the
        user, the layer itself in place (and an unbuilt layer passed by the user: it has no weights yet)."""
        if self._mode is _Mode.IN_PLACE or (self._mode is _Mode.TOP and not layer.built):
            return layer
        return copy_layer(layer)

    def rewrite(self, layer):
        """The replacement of a layer or model passed by the user (itself where the policy says None)."""
        replacement = self._ask(layer, _Mode.TOP)
        return layer if replacement is None else replacement

    def clone(self, model):
        """A clone of a Sequential or Functional `model` with every layer replaced."""
        return keras.models.clone_model(model, clone_function=self._cloned)

    def in_place(self, parent):
        """`parent` with the sublayers it holds in attributes, lists and dicts replaced; returns `parent`."""
        def replaced(item):
            replacement = self._in_place_replacement(item)
            if replacement is not item:
                _retrack(parent, item, replacement)
            return replacement

        for name, value in _attribute_items(parent):
            if isinstance(value, keras.layers.Layer):
                replacement = replaced(value)
                if replacement is not value:
                    setattr(parent, name, replacement)
            elif isinstance(value, (list, dict)):
                keys = range(len(value)) if isinstance(value, list) else list(value)
                for key in keys:
                    item = value[key]
                    if isinstance(item, keras.layers.Layer):
                        replacement = replaced(item)
                        if replacement is not item:
                            value[key] = replacement
        _forget_compiled_functions(parent)
        return parent

    def _cloned(self, layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless operation of a Functional graph (e.g. keras.ops.not_equal)
        key = id(layer)
        if key not in self._copies:
            replacement = self._ask(layer, _Mode.CLONE)
            self._copies[key] = copy_layer(layer) if replacement is None else replacement
        return self._copies[key]

    def _in_place_replacement(self, layer):
        key = id(layer)
        if key not in self._in_place:
            replacement = self._ask(layer, _Mode.IN_PLACE)
            self._in_place[key] = layer if replacement is None else replacement
        return self._in_place[key]

    def _ask(self, layer, mode: _Mode):
        previous, self._mode = self._mode, mode
        try:
            return self._replace(layer, self)
        finally:
            self._mode = previous


def strip_policy(wrapper_type: type) -> Callable:
    """The `replace` policy that strips `wrapper_type` wrappers (each through its ``stripped_layer()``) inside
    a model, nested Sequential/Functional models included; other layers are copied."""

    def replace(layer, rewriter):
        if isinstance(layer, wrapper_type):
            return layer.stripped_layer()
        if is_graph_model(layer):
            return rewriter.clone(layer)
        return None

    return replace


def check_cloneable(model, what: str, hint: str = "") -> None:
    """Refuse (InvalidArgumentError) a `model` that `what` cannot clone: subclassed, or not built."""
    if not is_graph_model(model):
        raise InvalidArgumentError(f"{what} needs a Sequential or Functional model; {model.name!r} is subclassed{hint}")
    if not model.built:
        raise InvalidArgumentError(f"model {model.name!r} is not built: give it an Input or call build() first")


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy of `model` with its weights: layer by layer for Sequential and Functional
    models, through its config for a subclassed model (``keras.models.clone_model``)."""
    if is_graph_model(model):
        return Rewriter(lambda layer, rewriter: None).clone(model)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


_INTERNAL_ATTRIBUTES = frozenset({
    "_layers", "_tracker", "_modules", "_torch_params", "_inbound_nodes", "_outbound_nodes",
    "_parameters", "_buffers", "_functional", "_operations",
})


def _attribute_items(parent):
    """(name, value) of the attributes of `parent` that may hold its sublayers."""
    tracker = getattr(parent, "_tracker", None)
    internal_stores = set()
    if tracker is not None:
        internal_stores = {id(store) for _, store in tracker.config.values()}
    names = list(vars(parent))
    names += [name for name in (getattr(parent, "_modules", None) or {}) if name not in names]
    for name in names:
        if name in _INTERNAL_ATTRIBUTES or name.startswith("_self_"):
            continue
        try:
            value = getattr(parent, name)
        except Exception:  # properties that fail on an unbuilt layer, etc.
            continue
        if id(value) in internal_stores:
            continue
        yield name, value


def _retrack(parent, old, new):
    """Make `parent`'s layer tracker hold `new` where it held `old` (allowed after build)."""
    tracker = getattr(parent, "_tracker", None)
    if tracker is None or not tracker.is_in_store("layers", old):
        return
    if tracker.is_in_store("layers", new):
        tracker.untrack(old)
    else:
        tracker.replace_tracked_value("layers", old, new)


def _forget_compiled_functions(layer):
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(layer, name, None) is not None:
            setattr(layer, name, None)
