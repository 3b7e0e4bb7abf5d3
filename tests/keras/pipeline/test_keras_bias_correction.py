"""Keras bias correction: each compressed layer's per-channel (pre-activation) output mean is the float model's
again on the correction inputs, later layers measured on corrected inputs; the float biases come back on restore."""

import keras
import numpy as np
import pytest

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


def _conv_bn_model(use_bias):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(4, 3, use_bias=use_bias, name="conv")(inputs)
    norm = keras.layers.BatchNormalization(name="norm")(conv)
    hidden = keras.layers.Flatten()(keras.layers.ReLU()(norm))
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(hidden))
    layer = model.get_layer("norm")  # non-trivial statistics, as after training
    layer.moving_mean.assign(np.array([0.3, -0.2, 0.1, 0.0], np.float32))
    layer.moving_variance.assign(np.array([0.5, 2.0, 1.0, 0.8], np.float32))
    return model


def _normalised(model, inputs):
    return keras.ops.convert_to_numpy(keras.Model(model.inputs, model.get_layer("norm").output)(inputs))


@pytest.mark.parametrize("use_bias", [True, False])
def test_scale_and_shift_into_the_following_batch_norm_undo_a_per_channel_gain(use_bias):
    """A compressed kernel whose channels came out 1.3x / 0.8x / 1.2x too large: the least-squares scale
    and shift, folded into the BatchNormalization's moving statistics, give back the float normalised outputs
    exactly, where a shift alone (scale=False) cannot; restore() brings the float statistics back."""
    model = _conv_bn_model(use_bias)
    inputs = np.random.default_rng(0).normal(size=(40, 6, 6, 2)).astype(np.float32)
    wanted = _normalised(model, inputs)
    norm = model.get_layer("norm")
    statistics = [keras.ops.convert_to_numpy(v) for v in (norm.moving_mean, norm.moving_variance)]
    kernel = keras.ops.convert_to_numpy(model.get_layer("conv").kernel)
    gain = np.array([1.3, 0.8, 1.0, 1.2], np.float32)

    errors = {}
    for scale in (False, True):
        correction = BiasCorrection(model, model_weights(model), [inputs], scale=scale)
        model.get_layer("conv").kernel.assign(kernel * gain)
        done, left, _ = correction.apply()
        errors[scale] = np.abs(_normalised(model, inputs) - wanted).max()
        if scale:
            assert "conv" in done and left == []
        correction.restore()
        model.get_layer("conv").kernel.assign(kernel)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.moving_mean), statistics[0])
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.moving_variance), statistics[1])
    assert errors[True] < 1e-4 and errors[False] > 0.05

