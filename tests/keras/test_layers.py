"""The one table of Keras layer kinds (weightzip.keras._layers) and the places that read it."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from weightzip.keras import _layers
from weightzip.keras.clustering.registry import clusterable_weights
from weightzip.keras.pipeline.deep_compression import DeepCompressionConfig
from weightzip.keras.pipeline.post_training import compress_post_training
from weightzip.keras.quantization.wrapper import quantizable_kernel

L = keras.layers

# Every convolution class of Keras 3, with a small instance and an input shape it accepts.
CONVOLUTIONS = {
    "Conv1D": (lambda: L.Conv1D(6, 3), (12, 4)),
    "Conv2D": (lambda: L.Conv2D(6, 3), (8, 8, 4)),
    "Conv3D": (lambda: L.Conv3D(6, 3), (5, 5, 5, 4)),
    "Conv1DTranspose": (lambda: L.Conv1DTranspose(6, 3), (12, 4)),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(6, 3), (8, 8, 4)),
    "Conv3DTranspose": (lambda: L.Conv3DTranspose(6, 3), (5, 5, 5, 4)),
    "DepthwiseConv1D": (lambda: L.DepthwiseConv1D(3, depth_multiplier=2), (12, 4)),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 4)),
    "SeparableConv1D": (lambda: L.SeparableConv1D(6, 3), (12, 4)),
    "SeparableConv2D": (lambda: L.SeparableConv2D(6, 3), (8, 8, 4)),
    "ConvLSTM1D": (lambda: L.ConvLSTM1D(4, 3), (3, 12, 4)),
}
NOT_CONVOLUTIONS = {
    "Dense": (lambda: L.Dense(6), (20,)),
    "EinsumDense": (lambda: L.EinsumDense("ab,bc->ac", output_shape=6), (20,)),
    "Embedding": (lambda: L.Embedding(30, 6), (5,)),
    "LSTM": (lambda: L.LSTM(4), (3, 20)),
}


def test_every_keras_convolution_class_is_in_the_table():
    convolution_classes = {name for name in dir(L) if "Conv" in name and isinstance(getattr(L, name), type)
                           and issubclass(getattr(L, name), L.Layer)}
    aliases = {name for name in convolution_classes if "Convolution" in name}  # Convolution2D = Conv2D
    assert convolution_classes - aliases == set(CONVOLUTIONS) | {"ConvLSTM2D", "ConvLSTM3D"}
    assert set(_layers.convolution_types()) >= {getattr(L, name) for name in convolution_classes}


def _single_layer_model(factory, shape):
    keras.utils.set_random_seed(1)
    inputs = keras.Input(shape, dtype="int32" if shape == (5,) else "float32")
    return keras.Model(inputs, factory()(inputs))


@pytest.mark.parametrize("name", sorted(CONVOLUTIONS) + sorted(NOT_CONVOLUTIONS))
def test_pipeline_and_post_training_agree_on_what_a_convolution_is(name):
    factory, shape = {**CONVOLUTIONS, **NOT_CONVOLUTIONS}[name]
    model = _single_layer_model(factory, shape)
    layer = model.layers[-1]
    expected = name in CONVOLUTIONS
    assert _layers.is_convolution(layer) is expected
    config = DeepCompressionConfig(sparsity=0.5, conv_sparsity=0.25, clusters=3, conv_clusters=5)
    assert config.sparsity_of(layer) == (0.25 if expected else 0.5)
    assert config.clusters_of(layer) == (5 if expected else 3)
    compressed, _ = compress_post_training(model, sparsity=0.5, conv_sparsity=0.25, clusters=3, conv_clusters=5)
    for weight in clusterable_weights(compressed.layers[-1]):
        kernel = keras.ops.convert_to_numpy(weight.variable)
        assert len(np.unique(kernel)) == (5 if expected else 3), weight.name
        assert np.mean(kernel == 0) == pytest.approx(0.25 if expected else 0.5, abs=0.05), weight.name


def test_table_gives_the_registry_its_kernels_and_axes():
    model = _single_layer_model(*CONVOLUTIONS["SeparableConv2D"])
    weights = clusterable_weights(model.layers[-1])
    assert [(w.name, w.channel_axis) for w in weights] == [("depthwise_kernel", -2), ("pointwise_kernel", -1)]
    transpose = _single_layer_model(*CONVOLUTIONS["Conv2DTranspose"]).layers[-1]
    (kernel,) = clusterable_weights(transpose)
    assert kernel.variable.shape[kernel.channel_axis] == 6  # (h, w, filters, in_channels)


def test_qat_layout_comes_from_the_table():
    assert quantizable_kernel(L.Dense(3)) == "all_but_last"
    assert quantizable_kernel(L.Conv2D(3, 3)) == "all_but_last"
    assert quantizable_kernel(L.DepthwiseConv2D(3)) == "spatial"
    assert quantizable_kernel(L.SeparableConv2D(3, 3)) is None
    assert quantizable_kernel(L.Conv2DTranspose(3, 3)) is None

    class MyDense(L.Dense):
        pass

    assert quantizable_kernel(MyDense(3)) == "all_but_last"  # subclasses of the built-ins match
