"""Keras models to and from `.wz` files: architecture in the metadata, every variable a tensor record.

A kernel that holds few distinct values (after `strip_clustering`) is stored as codebook + indices,
recovered losslessly by :func:`weightzip.core.palettize_exact`, per tensor or, when that needs too
many entries, per output channel; zeros left by pruning make the `.wz` writer choose its sparse layout
(relative indices). Everything else (biases, BatchNorm statistics, unclustered kernels) is stored as is.
Loading rebuilds the model from its serialized config and assigns every variable by path, so the
decoded model computes exactly what the stripped model did.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from weightzip.core.errors import WeightzipError
from weightzip.core.palette import smallest_exact_palette
from weightzip.format import WriteOptions, WzFormatError, read_wz_dense, write_wz

FRAMEWORK = "keras"
DEFAULT_MAX_CLUSTERS = 256


def model_tensors(model: keras.Model, *, max_clusters: int = DEFAULT_MAX_CLUSTERS, planned: dict | None = None) -> dict:
    """Name (variable path) -> ClusteredTensor for palettizable kernels, ndarray for the rest.

    planned: variable path -> what to store for it as given (post-training's chosen ClusteredTensor with its
    own codebook granularity, or a float array), instead of searching for an exact palette.
    """
    planned = planned or {}
    tensors = {}
    for variable in model.weights:
        if variable.path in tensors:
            raise WeightzipError(f"two variables share the path {variable.path!r}; cannot store them by name")
        if variable.path in planned:
            tensors[variable.path] = planned[variable.path]
            continue
        tensors[variable.path] = palettized_or_raw(_positive_zeros(keras.ops.convert_to_numpy(variable)), max_clusters)
    unknown = sorted(set(planned) - set(tensors))
    if unknown:
        raise WeightzipError(f"planned tensors {unknown[:3]} are not variables of the model")
    return tensors


def _positive_zeros(array: np.ndarray) -> np.ndarray:
    """−0.0 as +0.0 (x + 0 does exactly that): masks applied by multiplication leave −0.0 behind, which
    would otherwise count as stored entries of a pruned kernel. Numerically the same weights."""
    return array + array.dtype.type(0) if np.issubdtype(array.dtype, np.floating) else array


def palettized_or_raw(array: np.ndarray, max_clusters: int = DEFAULT_MAX_CLUSTERS):
    """A ClusteredTensor (per tensor, else per last-axis channel) when it stores smaller, else `array`."""
    palette = smallest_exact_palette(array, max_clusters, channel_axis=-1)
    return array if palette is None else palette


def save_wz(model: keras.Model, path, *, max_clusters: int = DEFAULT_MAX_CLUSTERS,
            options: WriteOptions = WriteOptions(), overwrite: bool = False, extra_metadata: dict | None = None,
            planned: dict | None = None, inputs=()) -> int:
    """Write `model` (stripped of clustering/pruning wrappers) to a `.wz` file; returns its size in bytes.

    planned: see :func:`model_tensors`. inputs: files the model was read from (never overwritten).
    """
    write_wz(path, model_tensors(model, max_clusters=max_clusters, planned=planned),
             model_metadata(model, extra_metadata), options=options, overwrite=overwrite, inputs=inputs)
    return os.path.getsize(path)


def model_metadata(model: keras.Model, extra_metadata: dict | None = None) -> dict:
    """The `.wz` metadata of a Keras model: its serialized architecture and variable paths, plus `extra_metadata`."""
    metadata = {
        "framework": FRAMEWORK,
        "keras_version": keras.__version__,
        "model": json.loads(json.dumps(keras.saving.serialize_keras_object(model))),
        "variables": [variable.path for variable in model.weights],
    }
    metadata.update(extra_metadata or {})
    return metadata


def load_wz(path, *, custom_objects: dict | None = None) -> keras.Model:
    """Rebuild the Keras model stored in a `.wz` file, with its decoded weights."""
    tensors, metadata = read_wz_dense(path)
    if metadata.get("framework") != FRAMEWORK or "model" not in metadata:
        raise WeightzipError(f"{path} does not hold a Keras model (framework={metadata.get('framework')!r})")
    config, stored = _checked_model_metadata(metadata, path)
    try:
        model = keras.saving.deserialize_keras_object(config, custom_objects=custom_objects)
    except Exception as error:  # Keras raises anything from KeyError to TypeError for a malformed config
        from weightzip.keras.loading import first_line  # Keras's reason, not its dump of the whole config

        hint = "" if custom_objects else "; a custom layer? pass its module with --custom-objects / custom_objects="
        raise WzFormatError(f"{path}: the stored Keras model config cannot be rebuilt "
                            f"({type(error).__name__}: {first_line(error, 200)}){hint}") from None
    if not isinstance(model, keras.Model):
        raise WzFormatError(f"{path}: the stored config rebuilds a {type(model).__name__}, not a Keras model")
    variables = model.weights
    if len(stored) != len(variables) or set(stored) != set(tensors):
        raise WeightzipError(
            f"{path}: {len(stored)} stored variables, the rebuilt model has {len(variables)}"
        )
    # Variable paths depend on name scopes at build time, so variables are matched by position.
    for name, variable in zip(stored, variables):
        value = tensors[name]
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightzipError(
                f"{path}: tensor {name!r} has shape {value.shape}, the rebuilt model's {variable.path!r} "
                f"expects {tuple(variable.shape)}"
            )
        variable.assign(value.astype(variable.dtype))
    return model


def _checked_model_metadata(metadata: dict, path) -> tuple[dict, list[str]]:
    """The metadata's model config and variable paths, after checking their types (a one-line error, not a
    traceback from deep inside Keras, for a damaged or hand-edited file)."""
    config = metadata["model"]
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str) \
            or not isinstance(config.get("config"), (dict, type(None))):
        raise WzFormatError(f"{path}: metadata 'model' must be a serialized Keras model "
                            f"(an object with 'class_name' and 'config'), got {type(config).__name__}")
    stored = metadata.get("variables", [])
    if not isinstance(stored, list) or not all(isinstance(name, str) for name in stored):
        raise WzFormatError(f"{path}: metadata 'variables' must be a list of variable paths")
    if len(set(stored)) != len(stored):
        raise WzFormatError(f"{path}: metadata 'variables' names a variable twice")
    return config, stored


__all__ = ["load_wz", "model_metadata", "model_tensors", "palettized_or_raw", "save_wz"]
