"""TFMOT-compatible magnitude pruning for Keras 3: ``prune_low_magnitude``, ``strip_pruning``.

Typical use (the same code as with ``tfmot.sparsity.keras``)::

    from weightzip.core.pruning import PolynomialDecay
    from weightzip.keras import prune_low_magnitude, strip_pruning, UpdatePruningStep

    pruned = prune_low_magnitude(model, pruning_schedule=PolynomialDecay(0.0, 0.8, 0, 1000))
    pruned.compile(...)
    pruned.fit(x, y, callbacks=[UpdatePruningStep()])
    final = strip_pruning(pruned)          # plain layers again, kernels holding exact zeros

Applied to a whole Sequential or Functional model, every layer with a known kernel is wrapped and every
other layer copied; the input model is never modified. For selective pruning, pass a ``clone_function`` to
``keras.models.clone_model`` that calls ``prune_low_magnitude`` on the layers to prune (TFMOT's recipe).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError
from weightzip.core.pruning import PruningSchedule
from weightzip.core.specs import PruningSpec, build_spec
from weightzip.keras._rewrite import Rewriter, check_cloneable, copy_layer, strip_policy
from weightzip.keras.pruning.callbacks import prunable_wrappers
from weightzip.keras.pruning.registry import LayerKind, classify_for_pruning, pruning_refusal
from weightzip.keras.pruning.wrapper import PruneLowMagnitude

_SUBCLASSED_HINT = ". Wrap its layers with prune_low_magnitude inside the model definition instead"


def prune_low_magnitude(to_prune, pruning_schedule: PruningSchedule | None = None, block_size=None,
                        block_pooling_type: str | None = None, sparsity_m_by_n=None, *,
                        spec: PruningSpec | None = None, inplace: bool | None = None, **kwargs):
    """Wrap a layer, a list of layers, or every prunable layer of a Sequential/Functional model for pruning.

    pruning_schedule: when and how much (:class:`~weightzip.core.pruning.ConstantSparsity`,
      :class:`~weightzip.core.pruning.PolynomialDecay`); default 50 % from step 0.
    block_size / block_pooling_type: block pruning over the kernel's last two axes (``"AVG"``/``"MAX"``).
    sparsity_m_by_n: ``(2, 4)`` for structured 2:4 sparsity along each kernel's input axis.

    spec: the same request as a :class:`~weightzip.core.specs.PruningSpec` (the spec PyTorch's
      ``prune_low_magnitude`` takes); the arguments given next to it override its fields. Its ``per_channel`` is
      PyTorch-only and refused here.

    A layer (or each layer of a list) is wrapped as it is, sharing its weights (TFMOT's behaviour; ``inplace=False``
    wraps a copy instead); a model is cloned, so the returned model owns copies of the weights (``inplace=True`` is
    refused for a model). Layers that are already wrapped are kept as they are.
    """
    if inplace is not None and not isinstance(inplace, bool):
        raise ArgumentTypeError(f"inplace must be True, False or None, got {inplace!r}")
    spec = build_spec(PruningSpec, spec, "prune_low_magnitude", pruning_schedule=pruning_schedule,
                      block_size=block_size, block_pooling_type=block_pooling_type, sparsity_m_by_n=sparsity_m_by_n)
    if spec.per_channel:
        raise InvalidArgumentError("per_channel pruning is not available on the Keras front end (PyTorch only)")
    params = dict(pruning_schedule=spec.pruning_schedule, block_size=spec.block_size or (1, 1),
                  block_pooling_type=spec.block_pooling_type.name, sparsity_m_by_n=spec.sparsity_m_by_n, **kwargs)
    if isinstance(to_prune, (list, tuple)):
        return [_wrap(layer, params, inplace) for layer in to_prune]
    if isinstance(to_prune, keras.Model):
        if inplace:
            raise InvalidArgumentError(f"model {to_prune.name!r} is pruned as a clone, never in place: inplace=True "
                                       "applies to single layers")
        check_cloneable(to_prune, "prune_low_magnitude", _SUBCLASSED_HINT)
        if kwargs:
            raise InvalidArgumentError(f"extra layer arguments {sorted(kwargs)} apply to single layers, not to a model")
        return Rewriter(_prune_policy(params)).clone(to_prune)
    if isinstance(to_prune, keras.layers.Layer):
        return _wrap(to_prune, params, inplace)
    raise InvalidArgumentError(
        f"prune_low_magnitude takes a Keras layer, a list of layers, or a Sequential/Functional model; "
        f"got {type(to_prune).__name__}"
    )


def strip_pruning(model):
    """The model (or layer) without pruning wrappers: plain layers whose kernels hold the masked weights.

    Returns a new model; `model` is not modified. Warns when no wrapper ever saw a pruning step (training
    without :class:`UpdatePruningStep` silently leaves the weights dense).
    """
    if isinstance(model, PruneLowMagnitude):
        _warn_if_never_pruned([model])
        return model.stripped_layer()
    if not isinstance(model, keras.Model):
        raise InvalidArgumentError(f"strip_pruning takes a Keras model or a PruneLowMagnitude layer, got {type(model).__name__}")
    check_cloneable(model, "strip_pruning", _SUBCLASSED_HINT)
    _warn_if_never_pruned(prunable_wrappers(model))
    return Rewriter(strip_policy(PruneLowMagnitude)).clone(model)


def prune_scope():
    """Custom-object scope for loading pruned models saved elsewhere (TFMOT's ``prune_scope``).

    Not needed for models saved by weightzip: the wrapper is registered as ``weightzip>PruneLowMagnitude``.
    """
    return keras.saving.custom_object_scope({"PruneLowMagnitude": PruneLowMagnitude})


def _prune_policy(params: dict):
    """Inside a model: each prunable layer wrapped in :class:`PruneLowMagnitude` (a copy of it)."""

    def replace(layer, rewriter):
        if isinstance(layer, PruneLowMagnitude):
            return copy_layer(layer)
        refusal = pruning_refusal(layer, alone=False)
        if refusal is not None:
            raise refusal
        kind = classify_for_pruning(layer)
        if kind is LayerKind.CLUSTERED:
            return PruneLowMagnitude(copy_layer(layer), **params)
        if kind is LayerKind.MODEL:
            return rewriter.clone(layer)
        return None  # nothing to prune (or already clustered): copied

    return replace


def _wrap(layer, params, inplace=None):
    if isinstance(layer, PruneLowMagnitude):
        return layer
    if isinstance(layer, keras.Model):
        raise InvalidArgumentError(f"cannot wrap model {layer.name!r} as a layer: pass it to prune_low_magnitude on its own")
    return PruneLowMagnitude(layer if inplace is not False or not layer.built else copy_layer(layer), **params)


def _warn_if_never_pruned(wrappers):
    untouched = [w.layer.name for w in wrappers
                 if w.built and int(ops.convert_to_numpy(w.pruning_step)) < 0
                 and all(np.all(ops.convert_to_numpy(m) == 1) for m in w.masks)]
    if untouched:
        warnings.warn(
            f"layers {untouched} were never pruned: train with the UpdatePruningStep callback "
            "(or call update_masks) before strip_pruning",
            stacklevel=3,
        )
