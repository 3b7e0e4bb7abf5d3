import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from weightzip.keras.pipeline.calibration import fisher_diagonal, importance_of, input_second_moments, model_weights


def _conv_dense_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4, name="dense")(x)
    return keras.Model(inputs, outputs)


def _batches(x, size):
    return [x[start:start + size] for start in range(0, len(x), size)]


@pytest.mark.backend_matrix
def test_input_second_moments_per_input_channel():
    model = _conv_dense_model()
    x = np.random.default_rng(0).normal(size=(10, 6, 6, 2)).astype(np.float32)
    x[..., 1] *= 3.0
    moments = input_second_moments(model, _batches(x, 4))
    conv, depthwise, dense = (model.get_layer(name) for name in ("conv", "depthwise", "dense"))
    np.testing.assert_allclose(moments[conv.kernel.path], np.mean(x.astype(np.float64) ** 2, axis=(0, 1, 2)),
                               rtol=1e-5)
    conv_out = keras.ops.convert_to_numpy(keras.Model(model.inputs, conv.output)(x)).astype(np.float64)
    np.testing.assert_allclose(moments[depthwise.kernel.path], np.mean(conv_out ** 2, axis=(0, 1, 2)), rtol=1e-4)
    flat = keras.ops.convert_to_numpy(keras.Model(model.inputs, dense.input)(x)).astype(np.float64)
    np.testing.assert_allclose(moments[dense.kernel.path], np.mean(flat ** 2, axis=0), rtol=1e-4)
    assert conv.call.__func__ is type(conv).call  # the recording wrappers are gone
    importance = importance_of(next(w for w in model_weights(model) if w.layer is conv), moments=moments, floor=0)
    assert importance.shape == conv.kernel.shape
    np.testing.assert_allclose(importance[1, 2, :, 0], moments[conv.kernel.path])


@pytest.mark.backend_matrix
def test_fisher_of_a_linear_map_is_the_squared_input_times_projection():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, use_bias=False, name="linear")])
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    fisher = fisher_diagonal(model, _batches(x, 3), classifier=False, seed=5)
    # rᵀ(W x): d/dW[i, o] = x_i r_o; the same seeded r per sample, in order.
    rng = np.random.default_rng(5)
    directions = np.stack([rng.standard_normal(3) for _ in range(7)])
    expected = np.einsum("ni,no->io", x.astype(np.float64) ** 2, directions ** 2) / 7
    np.testing.assert_allclose(fisher[model.layers[0].kernel.path], expected, rtol=1e-4)
    # the default objective is the outputs' (as on PyTorch), a classifier's scores too
    as_classifier = fisher_diagonal(model, _batches(x, 3), classifier=True, seed=5)
    np.testing.assert_allclose(as_classifier[model.layers[0].kernel.path], expected, rtol=1e-4)


@pytest.mark.backend_matrix
def test_classifier_fisher_is_the_sampled_log_likelihood_gradient():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=False)])
    x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel).astype(np.float64)
    fisher = fisher_diagonal(model, [x], seed=9, objective="kl")[model.layers[0].kernel.path]
    rng = np.random.default_rng(9)
    expected = np.zeros_like(kernel)
    for sample in x.astype(np.float64):
        logits = sample @ kernel
        p = np.exp(logits - logits.max())
        p /= p.sum()
        label = rng.choice(3, p=p)
        expected += np.outer(sample, np.eye(3)[label] - p) ** 2  # d log softmax_y / dW = x (e_y - p)ᵀ
    np.testing.assert_allclose(fisher, expected / 6, rtol=1e-4, atol=1e-9)


def test_fisher_vanishes_for_an_input_that_is_always_zero_and_covers_every_kernel():
    model = _conv_dense_model()
    x = np.random.default_rng(3).normal(size=(6, 6, 6, 2)).astype(np.float32)
    x[..., 0] = 0.0
    fisher = fisher_diagonal(model, _batches(x, 4))
    assert set(fisher) == {w.path for w in model_weights(model)}
    conv = fisher[model.get_layer("conv").kernel.path]
    assert np.all(conv[:, :, 0, :] == 0) and np.all(conv[:, :, 1, :] > 0)


def test_attention_projections_and_rnn_inputs_have_moments_recurrent_kernels_do_not():
    inputs = keras.Input((5, 8))
    x = keras.layers.MultiHeadAttention(2, 4, name="attention")(inputs, inputs)
    x = keras.layers.LSTM(3, name="lstm")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    x = np.random.default_rng(4).normal(size=(3, 5, 8)).astype(np.float32)
    moments = input_second_moments(model, [x])
    names = {w.weight.name: w.path for w in model_weights(model)}
    np.testing.assert_allclose(moments[names["query_dense.kernel"]], np.mean(x.astype(np.float64) ** 2, axis=(0, 1)),
                               rtol=1e-5)
    assert names["cell.kernel"] in moments and names["cell.recurrent_kernel"] not in moments
