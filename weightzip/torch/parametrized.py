"""Registering and removing weightzip parametrizations, with two fix-ups of torch's behaviour.

``copy.deepcopy`` of a parametrized module gives the copy the *same* dynamically created class
(``ParametrizedLinear``), and ``parametrize`` adds and deletes the weight properties on that class: so
stripping or extending the parametrizations of a copy would silently break the original. Before changing
a parametrized module's parametrizations, it gets a class of its own (a clone of the shared one).

``nn.RNNBase`` caches its weights in ``_flat_weights``; with a parametrized weight that cache holds the
computed (non-leaf) tensors of the last forward pass, which ``copy.deepcopy`` refuses to copy. RNNs
re-read their weights at every forward pass anyway (the computed tensor is new each time), so after each
forward pass the cache is replaced by detached copies: behaviour unchanged, deepcopy works.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

_HOOKED = "_weightzip_rnn_cache_hook"


def register(module: nn.Module, tensor_name: str, parametrization: nn.Module) -> None:
    """``register_parametrization`` plus the two fix-ups."""
    _own_class(module)
    parametrize.register_parametrization(module, tensor_name, parametrization)
    if isinstance(module, nn.RNNBase):
        _detach_flat_weights(module)
        if not getattr(module, _HOOKED, False):
            module.register_forward_hook(_after_forward)
            setattr(module, _HOOKED, True)


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a private copy of its class (see the module docstring)."""
    if not parametrize.is_parametrized(module):
        return
    shared = type(module)
    namespace = {key: value for key, value in vars(shared).items() if key not in ("__dict__", "__weakref__")}
    module.__class__ = type(shared.__name__, shared.__bases__, namespace)


def _after_forward(module: nn.Module, inputs, outputs) -> None:
    _detach_flat_weights(module)


def _detach_flat_weights(module: nn.Module) -> None:
    cache = getattr(module, "_flat_weights", None)
    if cache is None:
        return
    module._flat_weights = [
        w.detach() if isinstance(w, torch.Tensor) and w.grad_fn is not None else w for w in cache
    ]


def parametrizations_of(module: nn.Module, kind: type) -> dict[str, nn.Module]:
    """Every parametrization of type `kind` in `module`, keyed by the tensor's qualified name."""
    found = {}
    for module_name, submodule in module.named_modules():
        if not parametrize.is_parametrized(submodule):
            continue
        for tensor_name, stack in submodule.parametrizations.items():
            for parametrization in stack:
                if isinstance(parametrization, kind):
                    found[f"{module_name}.{tensor_name}" if module_name else tensor_name] = parametrization
    return found


def remove(module: nn.Module, kind: type) -> nn.Module:
    """Remove every parametrization stack containing a `kind`, leaving a plain ``nn.Parameter``
    holding the current computed value (with the requires_grad of the stack's parameters)."""
    for submodule in list(module.modules()):
        if not parametrize.is_parametrized(submodule):
            continue
        for tensor_name in list(submodule.parametrizations.keys()):
            stack = submodule.parametrizations[tensor_name]
            if not any(isinstance(p, kind) for p in stack):
                continue
            requires_grad = any(p.requires_grad for p in stack.parameters())
            _own_class(submodule)
            parametrize.remove_parametrizations(submodule, tensor_name, leave_parametrized=True)
            _ensure_parameter(submodule, tensor_name, requires_grad)
        if isinstance(submodule, nn.RNNBase):
            _detach_flat_weights(submodule)
    return module


def _ensure_parameter(module: nn.Module, name: str, requires_grad: bool) -> None:
    """remove_parametrizations leaves a buffer when nothing required grad; weights must stay parameters."""
    value = getattr(module, name)
    if isinstance(value, nn.Parameter) and value.requires_grad == requires_grad:
        return
    if name in module._buffers:
        del module._buffers[name]
    elif name in module._parameters:
        del module._parameters[name]
    module.register_parameter(name, nn.Parameter(value.detach(), requires_grad=requires_grad))
