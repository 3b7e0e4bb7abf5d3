"""Calibration inputs of post-training compression: checked against the model once, cut into batches, and run
through the model (any failure of the model on them is one clear error)."""

from __future__ import annotations

import keras
import numpy as np

from weightzip.core.errors import WeightzipError


def checked_calibration(calibration, model: keras.Model) -> np.ndarray:
    samples = np.asarray(calibration)
    if samples.dtype.kind not in "fiu":
        raise WeightzipError(f"calibration inputs must be a numeric array, got dtype {samples.dtype}")
    expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if samples.ndim < 1 or samples.shape[0] < 2:
        raise WeightzipError(f"calibration needs at least 2 samples (some to fit, some held out), got shape "
                             f"{samples.shape}")
    if expected is not None and (len(expected) != samples.ndim - 1 or any(
            want is not None and want != got for want, got in zip(expected, samples.shape[1:]))):
        raise WeightzipError(f"calibration inputs have samples of shape {samples.shape[1:]}, the model takes "
                             f"{tuple('any' if s is None else s for s in expected)}")
    if samples.dtype.kind == "f" and not np.all(np.isfinite(samples)):
        raise WeightzipError("calibration inputs contain NaN or infinite values")
    return samples.astype(np.float32) if samples.dtype.kind == "f" else samples


def batches(samples: np.ndarray, size: int) -> list[np.ndarray]:
    return [samples[start:start + size] for start in range(0, samples.shape[0], size)]


def run_model(model: keras.Model, batch):
    """``model(batch, training=False)``, one input array passed in the structure of the model's inputs: a model
    built with a list of one input (as Keras 2 ``.h5`` files are) takes ``[batch]``, and Keras warns, once per
    batch shape, when given the bare array."""
    structure = getattr(model, "_inputs_struct", None)
    if isinstance(structure, list) and len(structure) == 1 and not isinstance(batch, (list, tuple, dict)):
        batch = [batch]
    return model(batch, training=False)


def model_outputs(model: keras.Model, batches) -> np.ndarray:
    try:
        parts = [flat_outputs(run_model(model, batch)) for batch in batches]
    except WeightzipError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the backend raises, one line for the user
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightzipError(f"the model cannot run on the calibration inputs: {first[:300]}") from None
    return np.concatenate(parts, axis=0)


def flat_outputs(outputs) -> np.ndarray:
    """A model's outputs as one array, samples first (several outputs: each flattened per sample, concatenated)."""
    parts = [keras.ops.convert_to_numpy(part) for part in keras.tree.flatten(outputs)]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)
