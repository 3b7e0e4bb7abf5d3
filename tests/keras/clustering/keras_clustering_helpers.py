"""Helpers of the Keras clustering tests that work on every Keras backend."""

from __future__ import annotations

import keras
import numpy as np
import pytest

L = keras.layers


# JAX compiles every op for each new shape when run eagerly, so each distinct case costs ~3 s of CPU
# there: the JAX run of the backend matrix covers every layer type per tensor and these per channel;
# TensorFlow and PyTorch run every case. test_clustering_backends.py asserts how many run per backend.
JAX_CASES = frozenset({"Dense"})


def skip_on_jax_unless(representative: bool) -> None:
    if keras.backend.backend() == "jax" and not representative:
        pytest.skip("covered on tensorflow and torch (JAX compiles each new shape eagerly: seconds per case)")


def to_numpy(value) -> np.ndarray:
    if isinstance(value, keras.Variable):
        value = keras.ops.convert_to_tensor(value)
    return np.array(keras.ops.convert_to_numpy(value))


def gradients(loss_fn, variables):
    """Gradients of `loss_fn()` with respect to `variables` (Keras variables), as NumPy arrays."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return [to_numpy(g) for g in tape.gradient(loss, [v.value for v in variables])]
    if backend == "torch":
        import torch

        loss = loss_fn()
        return [to_numpy(g) for g in torch.autograd.grad(loss, [v.value for v in variables])]
    if backend == "jax":
        import jax

        def traced(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss_fn()

        return [to_numpy(g) for g in jax.grad(traced)([v.value for v in variables])]
    raise NotImplementedError(backend)


def per_channel_unique(values: np.ndarray, axis: int) -> list[int]:
    moved = np.moveaxis(values, axis, 0)
    return [len(np.unique(channel)) for channel in moved]


def model_of(layer, shape, dtype="float32"):
    inputs = keras.Input(shape, dtype=dtype)
    return keras.Model(inputs, layer(inputs))


def sample_input(shape, dtype="float32", batch=2, seed=0):
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        return rng.integers(0, 12, size=(batch,) + tuple(shape)).astype(dtype)
    return rng.normal(size=(batch,) + tuple(shape)).astype(dtype)


# name: (factory, input shape, input dtype); one case per supported layer type.
LAYER_CASES = {
    "Dense": (lambda: L.Dense(6), (5,), "float32"),
    "EinsumDense": (lambda: L.EinsumDense("ab,bc->ac", output_shape=6, bias_axes="c"), (5,), "float32"),
    "Conv1D": (lambda: L.Conv1D(4, 3), (8, 3), "float32"),
    "Conv2D": (lambda: L.Conv2D(4, 3), (6, 6, 3), "float32"),
    "Conv3D": (lambda: L.Conv3D(3, 2), (4, 4, 4, 2), "float32"),
    "Conv1DTranspose": (lambda: L.Conv1DTranspose(4, 3), (8, 3), "float32"),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(4, 3), (5, 5, 3), "float32"),
    "Conv3DTranspose": (lambda: L.Conv3DTranspose(3, 2), (3, 3, 3, 2), "float32"),
    "DepthwiseConv1D": (lambda: L.DepthwiseConv1D(3, depth_multiplier=2), (8, 3), "float32"),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3), "float32"),
    "SeparableConv1D": (lambda: L.SeparableConv1D(4, 3), (8, 3), "float32"),
    "SeparableConv2D": (lambda: L.SeparableConv2D(4, 3), (6, 6, 3), "float32"),
    "Embedding": (lambda: L.Embedding(12, 6), (4,), "int32"),
    "LSTM": (lambda: L.LSTM(5), (6, 3), "float32"),
    "GRU": (lambda: L.GRU(5), (6, 3), "float32"),
    "SimpleRNN": (lambda: L.SimpleRNN(5), (6, 3), "float32"),
    "Bidirectional": (lambda: L.Bidirectional(L.LSTM(3)), (6, 3), "float32"),
    "StackedRNNCells": (lambda: L.RNN([L.LSTMCell(4), L.GRUCell(3)]), (6, 3), "float32"),
}
