"""The ``PruneLowMagnitude`` layer wrapper: a Keras layer whose kernels are multiplied by a 0/1 mask.

How it works (same observable behaviour as TFMOT's wrapper, backend-neutral implementation):

- ``call`` feeds the wrapped layer ``kernel * mask`` in place of its kernel (no assignment), so pruned
  weights contribute nothing and receive zero gradient, on TensorFlow, JAX and PyTorch alike.
- Masks are recomputed outside the compiled train step by :class:`~weightzip.keras.pruning.callbacks.UpdatePruningStep`,
  which calls :meth:`PruneLowMagnitude.update_masks` at each step the schedule names; the mask itself comes
  from the NumPy core (:func:`weightzip.core.pruning.magnitude_mask` / :func:`n_m_mask`), the one
  implementation every front end uses. After each update the kernel variable is overwritten with the
  masked kernel, so a saved model already holds zeros.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from weightzip.core.errors import InvalidArgumentError
from weightzip.core.pruning import (
    ConstantSparsity,
    InvalidSparsityError,
    PruningSchedule,
    apply_mask,
    magnitude_mask,
    n_m_mask,
)
from weightzip.core.specs import PruningSpec
from weightzip.keras._rewrite import copy_layer
from weightzip.keras._substitution import SubstitutingWrapper
from weightzip.keras.pruning.registry import prunable_weights, pruning_refusal

_POOLING = {"AVG": "avg", "MAX": "max"}


@keras.saving.register_keras_serializable(package="weightzip")
class PruneLowMagnitude(SubstitutingWrapper):
    """Magnitude-prune the kernels of `layer` following `pruning_schedule`.

    pruning_schedule: a :class:`~weightzip.core.pruning.PruningSchedule` (default: 50 % from step 0).
    block_size: ``(rows, cols)`` blocks over the kernel's last two axes pruned together (TFMOT's
      ``block_size``); ``(1, 1)`` prunes single weights.
    block_pooling_type: ``"AVG"`` or ``"MAX"`` (any case): how a block's magnitudes are scored.
    The arguments are validated as a :class:`~weightzip.core.specs.PruningSpec`, the spec PyTorch's pruning takes.
    sparsity_m_by_n: ``(n, m)``: structured sparsity keeping the n largest of every m consecutive weights
      along the kernel's input axis (``(2, 4)`` is the 2:4 pattern); the schedule then only says *when*.
    """

    def __init__(self, layer, pruning_schedule: PruningSchedule | None = None, block_size=(1, 1),
                 block_pooling_type: str = "AVG", sparsity_m_by_n=None, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise InvalidArgumentError(f"PruneLowMagnitude wraps a Keras layer, got {type(layer).__name__}")
        if isinstance(layer, PruneLowMagnitude):
            raise InvalidArgumentError(f"layer {layer.name!r} is already wrapped for pruning")
        spec = PruningSpec(ConstantSparsity(0.5, begin_step=0) if pruning_schedule is None else pruning_schedule,
                           tuple(block_size), block_pooling_type, sparsity_m_by_n)  # validated once, as on torch
        pruning_schedule = spec.pruning_schedule
        block_size = spec.block_size or (1, 1)
        block_pooling_type = spec.block_pooling_type.name
        sparsity_m_by_n = spec.sparsity_m_by_n
        _check_prunable(layer)
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule
        self.block_size = block_size
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = sparsity_m_by_n

    # ------------------------------------------------------------------ state

    def build(self, input_shape=None):
        super().build(input_shape)
        targets = prunable_weights(self.layer)
        self._pruned_variables = [target.variable for target in targets]
        self._input_axes = [target.input_axis for target in targets]  # N:M groups run along them (the layer table)
        self.masks = [
            self.add_weight(name=f"{target.key}_mask", shape=tuple(target.variable.shape),
                            dtype=target.variable.dtype, initializer="ones", trainable=False)
            for target in targets
        ]
        self.pruning_step = self.add_weight(name="pruning_step", shape=(), dtype="int32",
                                            initializer=keras.initializers.Constant(-1), trainable=False)
        if self.sparsity_m_by_n is not None:
            for variable, axis in zip(self._pruned_variables, self._input_axes):
                self._check_m_by_n_applies(variable, axis)
        self.built = True

    def _check_m_by_n_applies(self, variable, axis: int):
        n, m = self.sparsity_m_by_n
        if len(variable.shape) < 2 or variable.shape[axis] % m:
            raise InvalidSparsityError(
                f"{n}:{m} sparsity cannot be applied to {self.layer.name}: its weight {variable.path} has shape "
                f"{tuple(variable.shape)}, whose input axis ({axis}) is not a multiple of {m}"
            )

    @property
    def pruned_variables(self) -> list:
        """The wrapped layer's variables that this wrapper prunes."""
        return list(self._pruned_variables)

    # ------------------------------------------------------------------ forward

    def substitutes(self) -> list:
        return [(variable, ops.multiply(variable, mask)) for variable, mask in zip(self._pruned_variables, self.masks)]

    # ------------------------------------------------------------------ mask updates (eager, outside the graph)

    def update_masks(self, step: int) -> bool:
        """Record `step`; when the schedule prunes at it, recompute the masks from the current weights.

        The masks rank the *effective* weights (kernel * mask), so weights pruned earlier have magnitude 0
        and stay pruned while the sparsity rises. Returns whether the masks were recomputed.
        """
        if not self.built:
            return False
        self.pruning_step.assign(int(step))
        if not self.pruning_schedule.should_prune(step):
            return False
        sparsity = self.pruning_schedule.sparsity_at(step)
        for variable, mask, axis in zip(self._pruned_variables, self.masks, self._input_axes):
            effective = ops.convert_to_numpy(variable) * ops.convert_to_numpy(mask)
            keep = self._keep_mask(effective, sparsity, axis)
            mask.assign(keep.astype(effective.dtype))
            variable.assign(np.where(keep, effective, 0).astype(effective.dtype))
        return True

    def _keep_mask(self, weights: np.ndarray, sparsity: float, input_axis: int) -> np.ndarray:
        if self.sparsity_m_by_n is not None:
            n, m = self.sparsity_m_by_n
            return n_m_mask(weights, n, m, axis=input_axis)
        if self.block_size == (1, 1):
            return magnitude_mask(weights, sparsity)
        if weights.ndim < 2:
            raise InvalidSparsityError(f"block pruning needs a weight of rank >= 2, got shape {weights.shape}")
        block_shape = (1,) * (weights.ndim - 2) + self.block_size
        return magnitude_mask(weights, sparsity, block_shape=block_shape,
                              pooling=_POOLING[self.block_pooling_type])

    def apply_masks(self) -> None:
        """Overwrite each pruned variable with its masked value (TFMOT's ``weight_mask_op``).

        Pruned weights become +0.0, not the −0.0 that ``kernel * mask`` leaves for negative weights.
        """
        for variable, mask in zip(self._pruned_variables, self.masks):
            value = ops.convert_to_tensor(variable)
            variable.assign(ops.where(mask > 0, value, ops.zeros_like(value)))

    def masked_layer_weights(self) -> list[np.ndarray]:
        """The wrapped layer's weights (in its own order) with the masks applied: what strip_pruning keeps."""
        masked = {id(v): apply_mask(ops.convert_to_numpy(v), ops.convert_to_numpy(m) > 0)
                  for v, m in zip(self._pruned_variables, self.masks)}
        return [masked.get(id(v), ops.convert_to_numpy(v)) for v in self.layer.weights]

    def stripped_layer(self) -> keras.layers.Layer:
        """A copy of the wrapped layer whose kernels hold their masked values (what strip_pruning returns)."""
        stripped = copy_layer(self.layer)
        if self.built:
            stripped.set_weights(self.masked_layer_weights())
        return stripped

    # ------------------------------------------------------------------ serialisation

    def get_config(self):
        config = super().get_config()
        config.update({
            "pruning_schedule": self.pruning_schedule.get_config(),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
        })
        return config


def _check_prunable(layer):
    refusal = pruning_refusal(layer, alone=True)
    if refusal is not None:
        raise refusal
