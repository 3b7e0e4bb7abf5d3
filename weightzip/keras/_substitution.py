"""Run a layer with some of its variables read as other tensors, on any Keras backend.

The clustering wrapper must call the wrapped layer with its kernel replaced by the clustered kernel
(a differentiable tensor), without changing the layer's code and without touching the kernel
variable. Keras's :class:`keras.StatelessScope` does exactly that: inside it, reading a mapped
variable returns the mapped tensor. Two details make it safe to nest:

- Under an enclosing scope (JAX training, or symbolic tracing), only the innermost scope is
  consulted, so the substitutes are added to that enclosing scope for the duration of the call and
  removed after it; the layer's other variables keep the values the enclosing scope gives them, and
  its state updates and losses go to that scope as they would without the wrapper.
- Without one (TensorFlow and PyTorch training, eager calls), a new scope collects the layer's state
  updates (e.g. a dropout seed) and losses (activity regularisers); the updates are then applied to
  the variables and the losses returned to the caller.
"""

from __future__ import annotations

import keras

from weightzip.keras._compat import get_stateless_scope
from weightzip.keras._direct_call import DECLINED, direct_call

_MISSING = object()


def call_with_substitutes(layer, substitutes, function):
    """Return ``(function(), losses)`` with each ``(variable, tensor)`` of `substitutes` read as tensor.

    `layer` owns the variables whose in-call updates must be kept. `losses` are the losses added
    during the call that the caller must re-add (empty under an enclosing scope, which keeps them).
    """
    enclosing = get_stateless_scope()
    if enclosing is not None:
        saved = {id(variable): enclosing.state_mapping.get(id(variable), _MISSING)
                 for variable, _ in substitutes}
        for variable, value in substitutes:
            enclosing.state_mapping[id(variable)] = value
        try:
            return function(), []
        finally:
            for variable, _ in substitutes:
                previous = saved[id(variable)]
                if previous is _MISSING:
                    enclosing.state_mapping.pop(id(variable), None)
                else:
                    enclosing.state_mapping[id(variable)] = previous
    scope = keras.StatelessScope(state_mapping=list(substitutes), collect_losses=True)
    with scope:
        outputs = function()
    replaced = {id(variable) for variable, _ in substitutes}
    for variable in layer.variables:
        if id(variable) in replaced:
            continue
        updated = scope.get_current_value(variable)
        if updated is not None:
            variable.assign(updated)
    return outputs, list(scope.losses)


class SubstitutingWrapper(keras.layers.Wrapper):
    """A wrapper whose layer runs with some of its variables read as computed tensors.

    Subclasses say which in :meth:`substitutes` (clustered kernels, masked kernels, ...); calling,
    output shapes and masks are the wrapped layer's own.
    """

    def substitutes(self) -> list:
        """``(variable, tensor)`` pairs: each variable is read as its tensor during the call."""
        raise NotImplementedError

    def call(self, inputs, *args, **kwargs):
        outputs, losses = call_with_substitutes(self.layer, self.substitutes(),
                                                lambda: self._call_layer(inputs, args, kwargs))
        for loss in losses:
            self.add_loss(loss)
        return outputs

    def _call_layer(self, inputs, args, kwargs):
        """The wrapped layer on the inputs: by its ``call`` where a second ``Layer.__call__`` would change
        nothing (:mod:`weightzip.keras._direct_call`; eager PyTorch), else through ``Layer.__call__``."""
        outputs = direct_call(self.layer, inputs, args, kwargs)
        return self.layer(inputs, *args, **kwargs) if outputs is DECLINED else outputs

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)
