"""Run a wrapped layer's ``call`` from its wrapper's, without a second ``Layer.__call__``, where that changes nothing.

A wrapper (:class:`._substitution.SubstitutingWrapper`) runs inside its own ``Layer.__call__`` and then calls the
wrapped layer, which by default goes through ``Layer.__call__`` again: input conversion, call-signature binding,
the training flag, masks, autocasting, name scopes, torch's module dispatch. PyTorch runs every training step
eagerly, so that second pass is paid at every step; on LeNet-300-100 it cost about as much as the layers' own
matmuls. TensorFlow and JAX trace the step once, so there the second pass costs nothing: on them this module serves
only a caller that computes the layer's output its own way (`call`, :mod:`.clustering._tf_dense`,
:mod:`.clustering._jax_dense`).

:func:`direct_call` does the part of ``Layer.__call__`` that has an effect in the common case and runs
``layer.call`` itself; it declines (returns :data:`DECLINED`, and the caller takes ``Layer.__call__``) whenever the
second pass could do more:

- a symbolic input or one not of the backend's tensor type, further positional arguments, keyword arguments
  other than the layer's call-context arguments (``training``) given as None or a bool, an input whose dtype the
  layer would convert, an input with a Keras mask;
- no enclosing ``Layer.__call__`` (no call context), an unbuilt layer, a layer class that overrides ``__call__``
  or (torch) ``forward``, a quantized or rematerialised layer, an activity regulariser, an active distribution,
  torch module hooks (the layer's or global ones) or a torch.jit trace;
- a dtype policy under which the layer would enter its own autocast scope.

What it does do, as ``Layer.__call__`` would: it checks the input against the layer's input spec, resolves each
call-context argument (given, else the enclosing call's value, else the signature's default) and stashes it in
the call context, passes ``mask=None`` to a ``call`` that takes a mask, opens the layer's name scope, and
attaches the layer's computed output mask where it supports masking.
"""

from __future__ import annotations

import functools
import inspect

import keras

from weightzip.keras._compat import current_call_context, get_autocast_scope

# What direct_call returns when the layer must be called through Layer.__call__.
DECLINED = object()


def direct_call(layer, inputs, args: tuple, kwargs: dict, call=None):
    """``layer(inputs, *args, **kwargs)`` from inside an enclosing ``Layer.__call__``, by ``layer.call`` where
    that gives the same result and effects, else :data:`DECLINED`.

    call: runs in place of ``layer.call`` (same arguments), for a caller that computes the layer's output its
    own way."""
    backend = keras.backend.backend()
    served = backend == "torch" or (backend in ("tensorflow", "jax") and call is not None)  # (see the module's docstring)
    if args or not served or not _eligible_class(type(layer), backend):
        return DECLINED
    if not _is_backend_tensor(inputs, backend) or getattr(inputs, "_keras_mask", None) is not None:
        return DECLINED
    context = current_call_context()
    if context is None or not _eligible_layer(layer, inputs, backend):
        return DECLINED
    call_kwargs = _call_kwargs(layer, kwargs, context)
    if call_kwargs is DECLINED:
        return DECLINED
    if not layer._called:  # (Layer.__setattr__ tracks attributes: skip it where the value would not change)
        layer._called = True
    layer._assert_input_compatibility(inputs)
    with layer._open_name_scope():
        outputs = (layer.call if call is None else call)(inputs, **call_kwargs)
    if layer.supports_masking:
        layer._set_mask_metadata(inputs, outputs, None)
    return outputs


def _is_backend_tensor(inputs, backend: str) -> bool:
    if backend == "torch":
        import torch

        return isinstance(inputs, torch.Tensor)
    if backend == "jax":
        import jax

        return isinstance(inputs, jax.Array)
    import tensorflow as tf

    return tf.is_tensor(inputs) and not isinstance(inputs, keras.KerasTensor)


@functools.cache
def _eligible_class(cls, backend: str) -> bool:
    """Whether ``Layer.__call__`` of this class is Keras's own (no override of the call machinery), on a Keras
    whose private layer attributes this module reads are there."""
    layer_class = keras.layers.Layer
    if backend == "torch":
        import torch

        if cls.forward is not layer_class.forward or cls._call_impl is not torch.nn.Module._call_impl:
            return False
    return (
        cls.__call__ is layer_class.__call__
        and get_autocast_scope is not None
        and all(hasattr(layer_class, name) for name in ("_assert_input_compatibility", "_open_name_scope",
                                                          "_set_mask_metadata"))
    )


def _eligible_layer(layer, inputs, backend: str) -> bool:
    """The per-call conditions of :func:`direct_call` on the layer and its input."""
    if not layer.built or getattr(layer, "_remat_mode", True) or getattr(layer, "quantization_mode", None) is not None:
        return False
    if layer.activity_regularizer is not None or keras.distribution.distribution() is not None:
        return False
    if not all(hasattr(layer, name) for name in ("_call_signature", "_call_context_args", "_call_has_context_arg",
                                                 "_call_has_mask_arg", "_convert_input_args")):
        return False
    if backend == "torch" and _torch_hooks(layer):
        return False
    if layer._convert_input_args and keras.backend.standardize_dtype(inputs.dtype) != layer.input_dtype:
        return False
    return not _enters_autocast_scope(layer)


def _torch_hooks(layer) -> bool:
    """Whether torch would run module hooks (the layer's or global ones) around this call, or traces it."""
    import torch
    from torch.nn.modules import module

    return bool(layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks or layer._backward_pre_hooks
                or module._global_forward_hooks or module._global_forward_pre_hooks or module._global_backward_hooks
                or module._global_backward_pre_hooks or torch._C._get_tracing_state())


def _enters_autocast_scope(layer) -> bool:
    """Whether ``Layer.__call__`` would enter a new autocast scope around this layer's call."""
    current = get_autocast_scope()
    if current is None:
        return layer.compute_dtype != layer.variable_dtype
    return (not layer.autocast or not keras.backend.is_float_dtype(layer.compute_dtype)
            or current.dtype != layer.compute_dtype)


def _call_kwargs(layer, kwargs: dict, context):
    """The keyword arguments ``Layer.__call__`` would pass to ``layer.call`` (call-context arguments resolved
    and stashed in `context`, ``mask=None``), or :data:`DECLINED`."""
    parameters = layer._call_signature.parameters
    context_args = layer._call_context_args
    if any(name not in context_args or not (value is None or isinstance(value, bool))
           for name, value in kwargs.items()):
        return DECLINED
    call_kwargs = {}
    resolved = {}
    for name in context_args:
        parameter = parameters.get(name)
        if name in kwargs:
            value = kwargs[name]
            if parameter is not None:
                call_kwargs[name] = value  # passed explicitly, even as None
        elif context.get_value(name) is not None:
            value = context.get_value(name)
        elif parameter is not None and parameter.default is inspect.Parameter.empty:
            return DECLINED  # a required argument: Layer.__call__ raises
        else:
            value = None if parameter is None else parameter.default
        resolved[name] = value
        if layer._call_has_context_arg.get(name, False) and value is not None:
            call_kwargs[name] = value
    for name, value in resolved.items():
        context.set_value(name, value)
    if layer._call_has_mask_arg:
        call_kwargs["mask"] = None
    return call_kwargs
