"""Quantisation-aware training for Keras 3, alone or preserving pruning and clustering (QAT, PQAT, CQAT, PCQAT).

Deep Compression's collaborative pipeline ends in an int8 model: prune, cluster, then train with the int8
rounding in the loop so accuracy adapts to it, keeping what earlier stages produced::

    from weightzip.keras import quantize_model, strip_quantization, convert_to_tflite

    qat = quantize_model(stripped_clustered_model, preserve="sparse_clusters")   # PCQAT
    qat.compile(...); qat.fit(...)
    tflite_bytes = convert_to_tflite(strip_quantization(qat), representative_data=x_train[:200])

``preserve``: ``"none"`` (QAT), ``"sparsity"`` (PQAT: zeros stay zero), ``"clusters"`` (CQAT: at most k
int8 values per channel), ``"sparse_clusters"`` (PCQAT: both). Layers that cannot be quantised here
(pooling, flatten, normalisation, ...) are copied unchanged and quantised after training by the converter.
"""

from __future__ import annotations

import warnings

import keras

from weightzip.core.errors import InvalidArgumentError, InvalidClusterCountError
from weightzip.keras._rewrite import Rewriter, check_cloneable, copy_layer, strip_policy
from weightzip.keras.quantization.wrapper import Preserve, QuantizeWrapper, quantizable_kernel


def quantize_model(to_quantize, preserve=Preserve.NONE, *, quantize_output: bool = True):
    """Wrap every supported layer of a Sequential/Functional model (or one layer) for quantisation-aware training.

    The input model is not modified (its layers are copied). With ``preserve="clusters"`` or
    ``"sparse_clusters"``, a layer whose kernel is not clustered (more than 256 distinct values in a
    channel) falls back to ``"none"`` / ``"sparsity"`` with a warning, as TFMOT's CQAT does for layers
    left unclustered.
    """
    preserve = Preserve.parse(preserve, "preserve")
    if isinstance(to_quantize, keras.Model):
        check_cloneable(to_quantize, "quantize_model")
        fallbacks = []
        quantized = Rewriter(_quantize_policy(preserve, quantize_output, fallbacks)).clone(to_quantize)
        if fallbacks:
            warnings.warn(
                f"layers {fallbacks} are not clustered; they get quantisation-aware training without cluster "
                "preservation",
                stacklevel=2,
            )
        return quantized
    if isinstance(to_quantize, keras.layers.Layer):
        return QuantizeWrapper(to_quantize, preserve=preserve, quantize_output=quantize_output)
    raise InvalidArgumentError(f"quantize_model takes a Keras model or layer, got {type(to_quantize).__name__}")


def strip_quantization(model):
    """A plain float model whose kernels hold the fake-quantised (int8-grid) values; `model` is not modified.

    Converting it with :func:`weightzip.keras.convert_to_tflite` reproduces the trained int8 kernels
    exactly (the converter's per-channel scale is again ``max|w| / 127``). Activation ranges are
    re-calibrated by the converter from the representative data.
    """
    if isinstance(model, QuantizeWrapper):
        return model.stripped_layer()
    if not isinstance(model, keras.Model):
        raise InvalidArgumentError(f"strip_quantization takes a Keras model or a QuantizeWrapper, got {type(model).__name__}")
    check_cloneable(model, "strip_quantization")
    return Rewriter(_strip_quantization_policy).clone(model)


def quantize_scope():
    """Custom-object scope for loading models saved with quantisation wrappers (TFMOT's ``quantize_scope``)."""
    return keras.saving.custom_object_scope({"QuantizeWrapper": QuantizeWrapper})


def _quantize_policy(preserve: Preserve, quantize_output: bool, fallbacks: list):
    """Inside a model: each quantizable layer wrapped in :class:`QuantizeWrapper` (a copy of it); the names of
    layers that fell back to a weaker `preserve` are appended to `fallbacks`."""

    def replace(layer, rewriter):
        if isinstance(layer, keras.Model):
            check_cloneable(layer, "quantize_model")
            return rewriter.clone(layer)
        if isinstance(layer, QuantizeWrapper):
            return copy_layer(layer)
        if isinstance(layer, keras.layers.Wrapper) and quantizable_kernel(layer.layer) is not None:
            raise InvalidArgumentError(
                f"layer {layer.name!r} is a {type(layer).__name__}: call strip_pruning / strip_clustering "
                "before quantize_model"
            )
        if quantizable_kernel(layer) is None:
            return None
        wrapped, used = _wrap_with_fallback(copy_layer(layer), preserve, quantize_output)
        if used is not preserve:
            fallbacks.append(layer.name)
        return wrapped

    return replace


def _strip_quantization_policy(layer, rewriter):
    if isinstance(layer, keras.Model):
        check_cloneable(layer, "strip_quantization")
    return _strip_wrappers(layer, rewriter)


_strip_wrappers = strip_policy(QuantizeWrapper)


def _wrap_with_fallback(layer, preserve: Preserve, quantize_output: bool):
    try:
        return QuantizeWrapper(layer, preserve=preserve, quantize_output=quantize_output), preserve
    except InvalidClusterCountError:
        fallback = Preserve.SPARSITY if preserve is Preserve.SPARSE_CLUSTERS else Preserve.NONE
        return QuantizeWrapper(layer, preserve=fallback, quantize_output=quantize_output), fallback
