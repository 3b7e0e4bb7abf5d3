"""Input Hessians E[x xᵀ] of Keras kernels: wᵀ H w equals the measured mean squared output of each output row."""

import keras
import numpy as np
import pytest

from weightzip.keras.pipeline.hessians import input_hessians


@pytest.mark.parametrize("layer, shape", [
    (lambda: keras.layers.Dense(5, use_bias=False), (4, 8, 12)),
    (lambda: keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False), (3, 13, 12, 5)),
    (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", dilation_rate=2, use_bias=False),
     (3, 7, 7, 4)),
    (lambda: keras.layers.Conv1D(5, 4, padding="causal", use_bias=False), (3, 11, 3)),
    (lambda: keras.layers.Conv2D(3, (3, 2), strides=(1, 2), padding="valid", use_bias=False), (3, 8, 9, 2)),
])
def test_hessian_gives_each_output_rows_mean_squared_output(layer, shape):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=shape).astype("float32")
    model = keras.Sequential([keras.Input(shape[1:]), layer()])
    hessians = input_hessians(model, [inputs[:2], inputs[2:]])
    (path, hessian), = hessians.items()
    kernel = keras.ops.convert_to_numpy(model.layers[0].weights[0]).astype(np.float64)
    assert hessian.fits(kernel.shape)
    rows = hessian.as_matrix(kernel).reshape(hessian.groups, -1, hessian.columns)
    predicted = np.einsum("gri,gij,grj->gr", rows, hessian.matrix, rows).ravel()
    output = keras.ops.convert_to_numpy(model(inputs)).astype(np.float64)
    measured = (output.reshape(-1, output.shape[-1]) ** 2).mean(axis=0)
    np.testing.assert_allclose(predicted, measured, rtol=1e-4)
