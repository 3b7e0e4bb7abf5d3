"""Quantisation-aware training (QAT, PQAT, CQAT, PCQAT), int8 TFLite conversion, and what survives it."""

import warnings

import keras
import numpy as np
import pytest

from weightzip.core import ClusterConfig, cluster_array
from weightzip.core.errors import InvalidClusterCountError, WeightzipError
from weightzip.keras.export import (
    convert_to_tflite,
    distinct_values_per_channel,
    tflite_int8_kernels,
    tflite_predict,
    zipped_size,
)
from weightzip.keras.pruning.api import prune_low_magnitude
from weightzip.keras.quantization.api import quantize_model, strip_quantization
from weightzip.keras.quantization.ops import fake_quantize_activations, fake_quantize_weights
from weightzip.keras.quantization.wrapper import QuantizeWrapper

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TFLite needs TensorFlow")
K = 4


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = (x[:, 0] + x[:, 1] - x[:, 2] > 0).astype("int32")
    return x, y


def compile_fit(model, data, epochs=2, lr=1e-3):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(*data, batch_size=32, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained(data):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(24, activation="relu", name="hidden"),
                              keras.layers.Dense(2, name="logits")])
    return compile_fit(model, data, epochs=4, lr=1e-2)


def clustered_copy(model, *, prune: bool):
    """A copy of `model` whose kernels are clustered to K values (half pruned first when `prune`)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        weights = layer.get_weights()
        kernel = weights[0]
        if prune:
            kernel = np.where(np.abs(kernel) < np.median(np.abs(kernel)), 0, kernel).astype(kernel.dtype)
        weights[0] = cluster_array(kernel, ClusterConfig(K, preserve_sparsity=prune)).decode()
        layer.set_weights(weights)
    return copy


# ---------------------------------------------------------------- fake-quant ops

def test_weight_fake_quant_is_on_the_per_channel_grid_with_identity_gradient():
    import tensorflow as tf

    weights = tf.Variable(np.random.default_rng(1).normal(size=(5, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        quantized = fake_quantize_weights(weights, (0,))
        loss = tf.reduce_sum(quantized * tf.constant([[1.0, 2.0, 3.0]]))
    gradient = tape.gradient(loss, weights).numpy()
    np.testing.assert_allclose(gradient, np.tile([1.0, 2.0, 3.0], (5, 1)))
    scale = np.abs(weights.numpy()).max(axis=0) / 127
    integers = quantized.numpy() / scale
    np.testing.assert_allclose(integers, np.round(integers), atol=1e-4)
    np.testing.assert_allclose(np.abs(integers).max(axis=0), 127, atol=1e-4)
    assert np.all(np.abs(quantized.numpy() - weights.numpy()) <= scale / 2 + 1e-7)


def test_activation_fake_quant_keeps_zero_and_clips():
    values = np.array([-3.0, -1.0, 0.0, 0.4, 2.0, 9.0], dtype="float32")
    out = keras.ops.convert_to_numpy(fake_quantize_activations(values, 0.5, 4.0))  # range widened to [0, 4]
    assert out[2] == 0.0 and out[0] == 0.0 and out[1] == 0.0
    assert out[-1] == pytest.approx(4.0, abs=4.0 / 255)
    assert abs(out[3] - 0.4) <= 4.0 / 255 / 2 + 1e-6


# ---------------------------------------------------------------- QAT end to end

@tensorflow_only
def test_qat_int8_kernels_are_exactly_the_trained_ones(trained, data):
    qat = compile_fit(quantize_model(trained), data)
    assert isinstance(qat.get_layer("quant_hidden"), QuantizeWrapper)
    stripped = strip_quantization(qat)
    flatbuffer = convert_to_tflite(stripped, data[0])
    kernels = tflite_int8_kernels(flatbuffer)
    assert [k.op for k in kernels] == ["FULLY_CONNECTED", "FULLY_CONNECTED"]
    for kernel, name in zip(kernels, ("hidden", "logits")):
        float_kernel = stripped.get_layer(name).get_weights()[0]
        expected = np.round(float_kernel / (np.abs(float_kernel).max(axis=0) / 127)).T
        np.testing.assert_array_equal(kernel.values, expected.astype(np.int8))
    agreement = np.mean(tflite_predict(flatbuffer, data[0]).argmax(1) == stripped.predict(data[0], verbose=0).argmax(1))
    assert agreement >= 0.95
    assert zipped_size(flatbuffer) < len(flatbuffer)


@tensorflow_only
def test_cqat_keeps_at_most_k_values_per_channel_where_plain_qat_does_not(trained, data):
    clustered = clustered_copy(trained, prune=False)
    plain = tflite_int8_kernels(convert_to_tflite(strip_quantization(compile_fit(quantize_model(clustered), data)),
                                                  data[0]))
    assert max(distinct_values_per_channel(k).max() for k in plain) > K  # QAT moves weights apart
    cqat = compile_fit(quantize_model(clustered, preserve="clusters"), data, lr=1e-2)
    stripped = strip_quantization(cqat)
    untrained = strip_quantization(quantize_model(clustered, preserve="clusters"))
    assert not np.allclose(stripped.get_layer("hidden").get_weights()[0],
                           untrained.get_layer("hidden").get_weights()[0], atol=1e-4)  # the centroids trained
    kernels = tflite_int8_kernels(convert_to_tflite(stripped, data[0]))
    assert all(distinct_values_per_channel(k).max() <= K for k in kernels)


@tensorflow_only
def test_pcqat_keeps_zeros_and_clusters(trained, data):
    sparse_clustered = clustered_copy(trained, prune=True)
    pcqat = compile_fit(quantize_model(sparse_clustered, preserve="sparse_clusters"), data, lr=1e-2)
    kernels = tflite_int8_kernels(convert_to_tflite(strip_quantization(pcqat), data[0]))
    for kernel, name in zip(kernels, ("hidden", "logits")):
        zeros_before = sparse_clustered.get_layer(name).get_weights()[0] == 0
        np.testing.assert_array_equal(kernel.values.T == 0, zeros_before)
        assert distinct_values_per_channel(kernel).max() <= K


@tensorflow_only
def test_pqat_keeps_zeros(trained, data):
    pruned = clustered_copy(trained, prune=True)
    for layer in pruned.layers:  # unclustered but pruned: undo clustering by adding noise to the nonzeros
        weights = layer.get_weights()
        noise = np.random.default_rng(5).normal(scale=1e-3, size=weights[0].shape).astype("float32")
        weights[0] = np.where(weights[0] == 0, 0, weights[0] + noise)
        layer.set_weights(weights)
    stripped = strip_quantization(compile_fit(quantize_model(pruned, preserve="sparsity"), data))
    for name in ("hidden", "logits"):
        np.testing.assert_array_equal(stripped.get_layer(name).get_weights()[0] == 0,
                                      pruned.get_layer(name).get_weights()[0] == 0)


@tensorflow_only
def test_post_training_int8_of_a_clustered_conv_model_keeps_clusters(tmp_path):
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
                              keras.layers.DepthwiseConv2D(3, name="depthwise"), keras.layers.Flatten(),
                              keras.layers.Dense(3, name="logits")])
    for layer in model.layers:
        if layer.weights:
            weights = layer.get_weights()
            weights[0] = cluster_array(weights[0], ClusterConfig(K, axis=-1)).decode()  # per-channel codebooks
            layer.set_weights(weights)
    images = np.random.default_rng(3).normal(size=(32, 8, 8, 2)).astype("float32")
    target = tmp_path / "clustered.tflite"
    flatbuffer = convert_to_tflite(model, images, path=target)
    assert target.read_bytes() == flatbuffer
    with pytest.raises(WeightzipError, match="already exists"):
        convert_to_tflite(model, images, path=target)
    kernels = tflite_int8_kernels(flatbuffer)
    assert sorted(k.op for k in kernels) == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]
    for kernel in kernels:
        counts = distinct_values_per_channel(kernel)
        assert counts.max() <= K and counts.size == kernel.scales.size


def test_quantized_model_saves_and_loads(tmp_path, trained, data):
    pcqat = compile_fit(quantize_model(clustered_copy(trained, prune=True), preserve="sparse_clusters"), data,
                        epochs=1)
    path = tmp_path / "pcqat.keras"
    pcqat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(data[0], verbose=0), pcqat.predict(data[0], verbose=0), atol=1e-6)
    np.testing.assert_array_equal(strip_quantization(loaded).get_weights()[0],
                                  strip_quantization(pcqat).get_weights()[0])


def test_misuse_is_reported(trained):
    with pytest.raises(ValueError, match="strip_pruning"):
        quantize_model(prune_low_magnitude(trained))
    wide = keras.Sequential([keras.Input((300,)), keras.layers.Dense(2, name="hidden")])  # 300 values a channel
    with pytest.raises(InvalidClusterCountError, match="not clustered"):
        QuantizeWrapper(wide.get_layer("hidden"), preserve="clusters")
    with pytest.raises(ValueError, match="preserve"):
        quantize_model(trained, preserve="everything")
    with pytest.raises(ValueError, match="not supported"):
        QuantizeWrapper(keras.layers.Flatten())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = quantize_model(wide, preserve="clusters")
    assert any("not clustered" in str(w.message) for w in caught)
    assert wrapped.get_layer("quant_hidden").preserve.value == "none"
