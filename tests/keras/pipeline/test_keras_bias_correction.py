"""Keras bias correction: each compressed layer's per-channel (pre-activation) output mean is the float model's
again on the correction inputs, later layers measured on corrected inputs; the float biases come back on restore."""

import keras
import numpy as np

from weightzip.keras.pipeline.bias_correction import BiasCorrection
from weightzip.keras.pipeline.calibration import model_weights


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, name="fc"),
        keras.layers.Dense(2, use_bias=False, name="head"),
    ])


def _conv_means(model, inputs):
    conv = model.get_layer("conv")
    pre = keras.ops.conv(inputs, conv.kernel) + conv.bias
    return keras.ops.convert_to_numpy(pre).reshape(-1, 4).mean(axis=0)


def _fc_means(model, inputs):
    hidden = keras.Sequential(model.layers[:3])(inputs)
    return keras.ops.convert_to_numpy(hidden).mean(axis=0)


def test_bias_correction_restores_each_layers_float_output_mean():
    model = _model()
    inputs = np.random.default_rng(0).normal(size=(40, 6, 6, 2)).astype(np.float32)
    float_conv, float_fc = _conv_means(model, inputs), _fc_means(model, inputs)
    biases = [keras.ops.convert_to_numpy(model.get_layer(n).bias) for n in ("conv", "fc")]
    correction = BiasCorrection(model, model_weights(model), [inputs[:16], inputs[16:]])
    for name in ("conv", "fc"):  # the "compressed" kernels: every weight moved the same way
        layer = model.get_layer(name)
        layer.kernel.assign(keras.ops.convert_to_numpy(layer.kernel) + 0.05)
    assert np.abs(_conv_means(model, inputs) - float_conv).max() > 0.02
    done, left, outputs = correction.apply()
    assert done == ["conv", "fc"] and left == ["head"]
    np.testing.assert_allclose(_conv_means(model, inputs), float_conv, atol=1e-4)
    np.testing.assert_allclose(_fc_means(model, inputs), float_fc, atol=1e-4)  # on the corrected conv's outputs
    np.testing.assert_allclose(outputs, keras.ops.convert_to_numpy(model(inputs)), rtol=1e-4, atol=1e-5)
    correction.restore()
    for name, bias in zip(("conv", "fc"), biases):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer(name).bias), bias)
