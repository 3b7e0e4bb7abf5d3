"""Per-sample gradients of a scalar of a Keras model's outputs, on the TensorFlow, JAX and PyTorch backends: what
the diagonal Fisher information of :mod:`.calibration` squares and sums."""

from __future__ import annotations

import keras
import numpy as np

from weightzip.core.errors import WeightzipError
from weightzip.keras.pipeline._inputs import run_model


def scalar_objective(outputs, direction, mode):
    """The per-sample scalar whose gradient is sampled: log p(y) (y one-hot in `direction`) or rᵀ f."""
    ops = keras.ops
    flat = [ops.reshape(part, (1, -1)) for part in keras.tree.flatten(outputs)]
    values = flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=1)
    direction = ops.reshape(ops.convert_to_tensor(direction), (1, -1))
    if mode == "log_softmax":
        values = ops.log_softmax(values, axis=-1)
    elif mode == "log_probability":
        values = ops.log(ops.maximum(values, 1e-12))
    return ops.sum(values * direction)


def per_sample_gradient(model, variables):
    """A function (one-sample batch, direction, mode) -> list of gradient arrays, one per variable."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def tf_gradient(x, direction, log_softmax, log_probability):
            with tf.GradientTape() as tape:
                for variable in variables:
                    tape.watch(variable.value)
                outputs = run_model(model, x)
                flat = [tf.reshape(part, (1, -1)) for part in tf.nest.flatten(outputs)]
                values = flat[0] if len(flat) == 1 else tf.concat(flat, axis=1)
                values = tf.cast(values, tf.float32)
                values = tf.where(log_softmax, tf.nn.log_softmax(values, axis=-1), values)
                values = tf.where(log_probability, tf.math.log(tf.maximum(values, 1e-12)), values)
                objective = tf.reduce_sum(values * tf.reshape(direction, (1, -1)))
            return tape.gradient(objective, [variable.value for variable in variables],
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        def gradient(x, direction, mode):
            grads = tf_gradient(tf.convert_to_tensor(x), tf.convert_to_tensor(direction),
                                tf.constant(mode == "log_softmax"), tf.constant(mode == "log_probability"))
            return [g.numpy() for g in grads]
        return gradient
    if backend == "jax":
        import jax

        trainable = list(model.trainable_variables)
        non_trainable = list(model.non_trainable_variables)
        positions = []
        for variable in variables:
            matches = [i for i, v in enumerate(trainable) if v is variable]
            if not matches:
                raise WeightzipError(f"variable {variable.path} is not trainable: the Fisher information on the "
                                     "JAX backend needs trainable kernels")
            positions.append(matches[0])

        def objective(trainable_values, non_trainable_values, x, direction, mode):
            outputs, _ = model.stateless_call(trainable_values, non_trainable_values, x, training=False)
            return scalar_objective(outputs, direction, mode)

        grad = jax.jit(jax.grad(objective), static_argnums=(4,))

        def gradient(x, direction, mode):
            grads = grad([v.value for v in trainable], [v.value for v in non_trainable], x, direction, mode)
            return [np.asarray(grads[i]) for i in positions]
        return gradient
    if backend == "torch":
        import torch

        def gradient(x, direction, mode):
            values = [variable.value for variable in variables]
            flags = [v.requires_grad for v in values]
            for v in values:
                v.requires_grad_(True)
            try:
                with torch.enable_grad():
                    objective = scalar_objective(run_model(model, x), direction, mode)
                    grads = torch.autograd.grad(objective, values, allow_unused=True)
            finally:
                for v, flag in zip(values, flags):
                    v.requires_grad_(flag)
            return [np.zeros(tuple(v.shape)) if g is None else g.detach().cpu().numpy() for v, g in zip(values, grads)]
        return gradient
    raise WeightzipError(f"the Fisher information is not implemented for the {backend!r} Keras backend; "
                         "use sensitivity='activation' or 'none'")
