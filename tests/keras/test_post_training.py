import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from weightzip.keras import UnsupportedLayerError
from weightzip.keras.post_training import compress_post_training


def _model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5)(x)
    return keras.Model(inputs, outputs)


def test_sparsity_and_cluster_count_per_layer_kind():
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    compressed = compress_post_training(model, sparsity=0.75, conv_sparsity=0.25, clusters=4, conv_clusters=8)
    for original, kept in zip(before, model.get_weights()):
        np.testing.assert_array_equal(original, kept)  # the input model is untouched
    conv, dense = compressed.layers[1], compressed.layers[4]
    assert np.mean(conv.kernel.numpy() == 0) == pytest.approx(0.25, abs=0.01)
    assert np.mean(dense.kernel.numpy() == 0) == pytest.approx(0.75, abs=0.01)
    assert len(np.unique(conv.kernel.numpy())) <= 8
    assert len(np.unique(dense.kernel.numpy())) <= 4
    np.testing.assert_array_equal(dense.bias.numpy(), model.layers[4].bias.numpy())  # biases not clustered


def test_per_channel_codebooks():
    compressed = compress_post_training(_model(), clusters=3, conv_clusters=3, per_channel=True)
    kernel = compressed.layers[4].kernel.numpy()
    assert all(len(np.unique(kernel[:, channel])) <= 3 for channel in range(kernel.shape[1]))
    assert len(np.unique(kernel)) > 3


def test_unsupported_layer_is_named():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    model = keras.Sequential([keras.Input((4,)), Scale(name="my_scale"), keras.layers.Dense(2)])
    with pytest.raises(UnsupportedLayerError, match="my_scale"):
        compress_post_training(model, clusters=2)
