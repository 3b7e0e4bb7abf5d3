"""Codebook tuning after assignment on Keras: the chosen plan's centroids trained for the float model's outputs.

The Keras side of :mod:`weightzip.core.codebook_tuning` (the loop, the reasons and the early stopping are
there; the PyTorch side is :func:`weightzip.torch.post_training._tuned_codebooks`). This module supplies the
two callables the loop needs, on any Keras backend:

- the gradient of the distillation loss with respect to every decoded kernel. The loss is a function of the outputs only, so its gradient is ``Jᵀ (∂L/∂y)``: ``∂L/∂y`` is computed from the
  outputs in NumPy and pulled back through the model by the same backend-specific vector-Jacobian product
  the Fisher information uses (:func:`weightzip.keras.pipeline._gradients.per_sample_gradient` in
  "projection" mode, one call per tuning batch);
- the loss on the fit inputs held aside.

The loss is the one PyTorch uses: for class scores (logits or probabilities, last axis = classes) the KL
divergence of the compressed model's class distribution from the float model's, mean per sample; otherwise
the squared output error relative to the float outputs' squared norm.
"""

from __future__ import annotations

import keras
import numpy as np

from weightzip.core.allocation import AllocationPlan, TensorToCompress
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.codebook_tuning import CodebookTuning, tune_codebooks, tuned_plan
from weightzip.core.fidelity import split_calibration
from weightzip.keras.pipeline._gradients import per_sample_gradient
from weightzip.keras.pipeline._inputs import batches as batches_of
from weightzip.keras.pipeline._inputs import flat_outputs, run_model

_FLOOR = 1e-12  # probabilities below this count as this (log of zero)


def _are_probabilities(outputs: np.ndarray) -> bool:
    return bool(np.all(outputs >= 0) and np.all(np.abs(outputs.sum(axis=-1) - 1.0) < 1e-3))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def distillation_loss(outputs: np.ndarray, reference: np.ndarray, classifier: bool) -> tuple[float, np.ndarray]:
    """(loss, ∂loss/∂outputs) of `outputs` against the float model's `reference` (module doc), float64."""
    outputs = np.asarray(outputs, np.float64)
    reference = np.asarray(reference, np.float64)
    if classifier:
        samples = outputs.shape[0]
        if _are_probabilities(reference) and _are_probabilities(outputs):
            target = reference
            clipped = np.maximum(outputs, _FLOOR)
            loss = float(np.sum(target * (np.log(np.maximum(target, _FLOOR)) - np.log(clipped)))) / samples
            return loss, -target / clipped / samples
        target = _softmax(reference)
        predicted = _softmax(outputs)
        loss = float(np.sum(target * (np.log(np.maximum(target, _FLOOR)) - np.log(np.maximum(predicted, _FLOOR)))))
        return loss / samples, (predicted - target) / samples
    norm = max(float(np.sum(reference ** 2)), 1e-30)
    difference = outputs - reference
    return float(np.sum(difference ** 2)) / norm, 2.0 * difference / norm


def tuned_codebooks(model: keras.Model, compressed: keras.Model, variables: dict, plan: AllocationPlan, fit_batches,
                    tuning: CodebookTuning, seed: int, tensors: dict[str, TensorToCompress],
                    classifier: bool | None = None) -> tuple[AllocationPlan, str | None]:
    """(plan, report note): `plan`'s clustered tensors with centroids tuned for the float `model`'s outputs
    (:func:`weightzip.core.codebook_tuning.tune_codebooks`), written into `compressed` (in place; `variables`:
    tensor name -> its kernel variable in `compressed`, which holds the plan's decoded values). The fit inputs
    are split (seeded) into tuning inputs and inputs held aside for early stopping."""
    names = [name for name, choice in plan.choices.items()
             if choice.clusters > 0 and isinstance(choice.stored, ClusteredTensor) and name in variables]
    inputs = np.concatenate([np.asarray(batch) for batch in fit_batches])
    if not names or inputs.shape[0] < 2:
        return plan, None
    tune_index, aside_index = split_calibration(int(inputs.shape[0]), held_out=tuning.held_aside, seed=seed + 1)
    tune_batches = batches_of(inputs[tune_index], tuning.batch_size)
    aside_batches = batches_of(inputs[aside_index], tuning.batch_size)
    tune_reference = [flat_outputs(run_model(model, batch)) for batch in tune_batches]
    aside_reference = [flat_outputs(run_model(model, batch)) for batch in aside_batches]
    if classifier is None:
        classifier = tune_reference[0].ndim == 2 and tune_reference[0].shape[1] >= 2
    tuned_variables = {name: variables[name] for name in names}
    order = list(tuned_variables)
    gradient = per_sample_gradient(compressed, [tuned_variables[name] for name in order])
    original = {name: keras.ops.convert_to_numpy(v) for name, v in tuned_variables.items()}

    def load(values):
        for name, value in values.items():
            variable = tuned_variables[name]
            variable.assign(np.asarray(value, dtype=np.dtype(variable.dtype)))

    def gradients_of(values, step):
        load(values)
        index = step % len(tune_batches)
        batch = tune_batches[index]
        outputs = flat_outputs(run_model(compressed, batch))
        _, direction = distillation_loss(outputs, tune_reference[index], classifier)
        found = gradient(batch, direction.astype(np.float32), "projection")
        return {name: np.asarray(g, np.float64) for name, g in zip(order, found)}

    def aside_loss(values):
        load(values)
        total = sum(distillation_loss(flat_outputs(run_model(compressed, batch)), reference, classifier)[0]
                    * batch.shape[0] for batch, reference in zip(aside_batches, aside_reference))
        return total / sum(batch.shape[0] for batch in aside_batches)

    try:
        result = tune_codebooks({name: plan.choices[name].stored for name in names},
                                {name: tensors[name].weights for name in names}, gradients_of, aside_loss, tuning)
    except Exception as error:  # noqa: BLE001 - e.g. a layer the backend cannot differentiate: said, not hidden
        load(original)
        first = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        return plan, f"codebook tuning: not possible ({first})"
    tuned = tuned_plan(plan, result, tensors)
    load({name: tuned.choices[name].stored.decode() for name in names})
    return tuned, result.note()


__all__ = ["distillation_loss", "tuned_codebooks"]
