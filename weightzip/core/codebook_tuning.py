"""Codebook tuning after assignment: the shared values trained for what the model computes (framework-neutral).

Post-training clustering chooses each tensor's codebook for a weight-space error (sensitivity-weighted k-means,
then the layer's output error under compensation); each layer is fitted on its own, so the errors of all layers
add up in the model's outputs. Deep Compression's *trained quantization* (Han et al. 2016) fixes the assignment
of weights to centroids and trains the centroids themselves: the gradient of a centroid is the sum of the
gradients of the weights that share it (a segment sum over the indices). Here the loss is a distillation loss
measured by the front end: the distance of the compressed model's outputs to the float model's on the fit
calibration inputs (KL of the class distributions for classifiers, squared error otherwise). The few values
tuned (k per codebook row) overfit little; the front end holds part of the fit inputs aside, and the tuning
keeps the centroids that measured best there (early stopping; the step-0 codebooks are a candidate too, so
tuning never makes that figure worse).

Indices never change: every codebook row is kept ascending (a cumulative maximum after each step) so the
stored index streams, and with them the `.wz` size, are exactly those of the plan that was chosen.

:func:`tune_codebooks` is the loop (Adam over the centroids, learning rate relative to each tensor's weight
spread); the front end supplies two callables over ``{name: decoded weights}``: the per-weight gradients of
the loss on a tuning batch, and the loss on the inputs held aside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from weightzip.core.allocation import AllocationPlan, as_written, stored_bytes, weighted_error
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.errors import InvalidArgumentError


@dataclass(frozen=True)
class CodebookTuning:
    """How codebooks are tuned after assignment (module doc).

    steps: optimizer steps at most (one tuning batch each); 0 turns tuning off.
    learning_rate: Adam's step size as a fraction of each tensor's weight standard deviation.
    check_every: steps between two measurements of the loss on the held-aside inputs.
    patience: measurements without improvement after which tuning stops (the best centroids are kept).
    held_aside: fraction of the fit inputs held aside for those measurements (never tuned on).
    batch_size: inputs per tuning step (the front end cycles through the tuning inputs).
    vectors: also tune the model's one-dimensional float parameters (biases, normalisation scales and shifts),
        which are stored as floats anyway: no bytes added, and they absorb the per-channel errors left.
    """

    steps: int = 10
    learning_rate: float = 0.0005
    check_every: int = 5
    patience: int = 2
    held_aside: float = 0.25
    batch_size: int = 12
    vectors: bool = True

    def __post_init__(self):
        if not isinstance(self.vectors, bool):
            raise InvalidArgumentError(f"codebook tuning vectors must be True or False, got {self.vectors!r}")
        for name, low in (("steps", 0), ("check_every", 1), ("patience", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidArgumentError(f"codebook tuning {name} must be an integer >= {low}, got {value!r}")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0 or rate != rate:
            raise InvalidArgumentError(f"codebook tuning learning_rate must be in (0, 1), got {rate!r}")
        aside = self.held_aside
        if isinstance(aside, bool) or not isinstance(aside, (int, float)) or not 0.0 < aside < 1.0:
            raise InvalidArgumentError(f"codebook tuning held_aside must be a fraction in (0, 1), got {aside!r}")

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    @classmethod
    def of(cls, value) -> "CodebookTuning":
        """`value` as a config: a CodebookTuning, True (the defaults), False / None (off: steps=0), or a dict."""
        if isinstance(value, cls):
            return value
        if value is True:
            return cls()
        if value is False or value is None:
            return cls(steps=0)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise InvalidArgumentError(f"unknown codebook tuning options {unknown}")
            return cls(**value)
        raise InvalidArgumentError(f"codebook_tuning must be a CodebookTuning, a bool or a dict, got "
                                   f"{type(value).__name__}")


@dataclass(frozen=True)
class TuningResult:
    """What :func:`tune_codebooks` did: the tuned tensors (same indices), the loss on the held-aside inputs
    before and after, and the steps taken (those of the kept centroids, and in all)."""

    tensors: dict[str, ClusteredTensor]
    floats: dict[str, np.ndarray]
    loss_before: float
    loss_after: float
    best_step: int
    steps_run: int

    @property
    def improved(self) -> bool:
        return self.best_step > 0

    def note(self) -> str:
        if not self.improved:
            return (f"codebook tuning: left off (no step lowered the distillation loss {self.loss_before:.4g} "
                    f"on the held-aside fit inputs in {self.steps_run} steps)")
        floats = f" and {len(self.floats)} float vectors (biases, norms)" if self.floats else ""
        return (f"codebook tuning: {len(self.tensors)} tensors' centroids{floats} trained for the float model's outputs, "
                f"distillation loss on the held-aside fit inputs {self.loss_before:.4g} -> {self.loss_after:.4g} "
                f"(step {self.best_step} of {self.steps_run})")


def flat_codes(clustered: ClusteredTensor) -> np.ndarray:
    """Each weight's position in the flattened codebook (row · k + index), as int64 of the tensor's shape."""
    k = clustered.number_of_clusters
    rows = np.broadcast_to(clustered.group_of_each_weight(), clustered.shape)
    return rows.astype(np.int64) * k + clustered.indices.astype(np.int64)


def centroid_gradients(codes: np.ndarray, weight_gradient: np.ndarray, size: int) -> np.ndarray:
    """The gradient of every flattened centroid: the sum of its members' weight gradients (a segment sum)."""
    return np.bincount(codes.ravel(), weights=np.asarray(weight_gradient, np.float64).ravel(), minlength=size)


class _Adam:
    def __init__(self, size: int, rate: float, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-12):
        self.m, self.v, self.t = np.zeros(size), np.zeros(size), 0
        self.rate, self.beta1, self.beta2, self.epsilon = rate, beta1, beta2, epsilon

    def step(self, values: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * gradient
        self.v = self.beta2 * self.v + (1 - self.beta2) * gradient * gradient
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return values - self.rate * m_hat / (np.sqrt(v_hat) + self.epsilon)


def tune_codebooks(tensors: dict[str, ClusteredTensor], weights: dict[str, np.ndarray],
                   gradients_of: Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]],
                   held_aside_loss: Callable[[dict[str, np.ndarray]], float],
                   config: CodebookTuning = CodebookTuning(),
                   floats: dict[str, np.ndarray] | None = None) -> TuningResult:
    """Tune the centroids of `tensors` (name -> ClusteredTensor) for the front end's loss (module doc).

    weights: name -> the float weights (their standard deviation scales each tensor's learning rate).
    gradients_of(values, step): the loss's gradient with respect to each decoded weight tensor (same shapes) on
        the tuning batch of `step`, with the model's weights set to `values` (name -> decoded weights).
    held_aside_loss(values): the loss on the held-aside inputs with those weights.
    floats: name -> float parameters tuned directly beside the centroids (their gradients come from
        `gradients_of` under the same names, their values go into `values`); learning rate relative to their
        root mean square.
    Returns the tuned tensors and floats (the step with the lowest held-aside loss; step 0 = unchanged).
    """
    float_shapes = {name: np.shape(value) for name, value in (floats or {}).items()}
    floats = {name: np.asarray(value, np.float64).ravel().copy() for name, value in (floats or {}).items()}
    names = list(tensors)
    codes = {name: flat_codes(tensors[name]) for name in names}
    shapes = {name: tensors[name].codebook.shape for name in names}
    flat = {name: np.asarray(tensors[name].codebook, np.float64).ravel().copy() for name in names}
    adams = {name: _Adam(flat[name].size, config.learning_rate * max(float(np.std(weights[name])), 1e-12))
             for name in names}

    float_adams = {name: _Adam(value.size, config.learning_rate * max(float(np.sqrt(np.mean(value ** 2))), 1e-3))
                   for name, value in floats.items()}

    def values() -> dict[str, np.ndarray]:
        decoded = {name: flat[name][codes[name]].astype(np.asarray(weights[name]).dtype, copy=False)
                   for name in names}
        decoded.update({name: value.reshape(float_shapes[name]) for name, value in floats.items()})
        return decoded

    best = {name: flat[name].copy() for name in names}
    best_floats = {name: value.copy() for name, value in floats.items()}
    loss_before = best_loss = float(held_aside_loss(values()))
    best_step, stale, step = 0, 0, 0
    for step in range(1, config.steps + 1):
        gradients = gradients_of(values(), step - 1)
        for name in names:
            gradient = gradients.get(name)
            if gradient is None:
                continue
            updated = adams[name].step(flat[name], centroid_gradients(codes[name], gradient, flat[name].size))
            flat[name] = np.maximum.accumulate(updated.reshape(shapes[name]), axis=1).ravel()  # rows stay ascending
        for name in floats:
            if gradients.get(name) is not None:
                floats[name] = float_adams[name].step(floats[name], np.asarray(gradients[name], np.float64).ravel())
        if step % config.check_every == 0 or step == config.steps:
            loss = float(held_aside_loss(values()))
            if loss < best_loss:
                best_loss, best_step, stale = loss, step, 0
                best = {name: flat[name].copy() for name in names}
                best_floats = {name: value.copy() for name, value in floats.items()}
            else:
                stale += 1
                if stale >= config.patience:
                    break
    tuned = {}
    for name in names:
        clustered = tensors[name]
        codebook = best[name].reshape(shapes[name]).astype(np.asarray(clustered.codebook).dtype)
        tuned[name] = ClusteredTensor(codebook, clustered.indices, clustered.axis, clustered.group_size)
    return TuningResult(tuned, {name: value.reshape(float_shapes[name]) for name, value in best_floats.items()},
                        loss_before, best_loss, best_step, step)


def tuned_plan(plan: AllocationPlan, result: TuningResult, tensors: dict) -> AllocationPlan:
    """`plan` with the tensors of `result` in place of its choices where tuning improved the held-aside loss
    (indices unchanged; each choice's stored bytes and sensitivity-weighted error recomputed for the tuned
    codebook, as written); `plan` itself otherwise. tensors: name -> TensorToCompress (weights, importance)."""
    choices = dict(plan.choices)
    if result.improved:
        for name, clustered in result.tensors.items():
            clustered = as_written(clustered, plan.write_options)
            tensor = tensors[name]
            choices[name] = dataclasses.replace(
                choices[name], stored=clustered, stored_bytes=stored_bytes(name, clustered, plan.write_options),
                weighted_error=weighted_error(tensor.weights, clustered.decode(), tensor.importance))
    return AllocationPlan(choices, plan.write_options)
