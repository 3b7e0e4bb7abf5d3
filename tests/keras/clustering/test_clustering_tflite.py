"""A stripped clustered model converts to .tflite with its k values per kernel intact, and the interpreter
computes what Keras computes (TensorFlow backend: the converter needs it)."""

import keras
import numpy as np
import pytest
from keras_clustering_helpers import sample_input

import weightzip.keras as wk
from weightzip.keras.export import convert_to_tflite, float_weight_tensors, tflite_predict, zipped_size

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="TFLite conversion needs the TensorFlow backend")
L = keras.layers


def conv_net():
    inputs = keras.Input((10, 10, 2))
    x = L.Conv2D(6, 3, activation="relu")(inputs)
    x = L.DepthwiseConv2D(3)(x)
    x = L.Conv2DTranspose(4, 2, strides=2)(x)
    x = L.Flatten()(x)
    x = L.Dense(16, activation="relu")(x)
    return keras.Model(inputs, L.Dense(5)(x))


def value_sets(model):
    return sorted(tuple(np.unique(keras.ops.convert_to_numpy(w))) for layer in model.layers
                  for w in layer.weights if "kernel" in w.path)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_tflite_keeps_k_values_per_kernel_and_matches_keras(per_channel):
    k = 4
    stripped = wk.strip_clustering(wk.cluster_weights(conv_net(), k, cluster_per_channel=per_channel))
    flatbuffer = convert_to_tflite(stripped, int8=False)
    weights = float_weight_tensors(flatbuffer)
    assert sorted(w.op for w in weights) == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED",
                                             "TRANSPOSE_CONV"]
    if per_channel:
        assert all(max(len(np.unique(c)) for c in w.values) <= k for w in weights if w.op != "DEPTHWISE_CONV_2D")
    else:
        assert all(len(np.unique(w.values)) <= k for w in weights)
    assert sorted(tuple(np.unique(w.values)) for w in weights) == value_sets(stripped)

    x = sample_input((10, 10, 2), batch=6)
    np.testing.assert_allclose(tflite_predict(flatbuffer, x), stripped.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_litert_export_and_zip_size(tmp_path):
    model = conv_net()
    stripped = wk.strip_clustering(wk.cluster_weights(model, 4))
    path = tmp_path / "clustered.tflite"
    stripped.export(str(path), format="litert")
    flatbuffer = path.read_bytes()
    assert all(len(np.unique(w.values)) <= 4 for w in float_weight_tensors(flatbuffer))
    x = sample_input((10, 10, 2), batch=3)
    np.testing.assert_allclose(tflite_predict(flatbuffer, x), stripped.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    assert zipped_size(flatbuffer) < zipped_size(convert_to_tflite(model, int8=False))
