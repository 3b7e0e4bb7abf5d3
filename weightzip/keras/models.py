"""The reference networks of the Deep Compression paper, for the demo, benchmarks and tests."""

from __future__ import annotations

import keras

# Fraction of each layer's kernel weights pruned: the paper's Tables 4 and 5 (Han, Mao & Dally 2016).
PAPER_SPARSITY = {
    "lenet-300-100": {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74},
    "lenet-5": {"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81},
}


def lenet_300_100() -> keras.Model:
    """LeCun's 784-300-100-10 perceptron (ReLU), classifier logits out."""
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(300, activation="relu", name="fc1"),
        keras.layers.Dense(100, activation="relu", name="fc2"),
        keras.layers.Dense(10, name="fc3"),
    ], name="lenet_300_100")


def lenet_5() -> keras.Model:
    """Caffe's LeNet (the paper's LeNet-5): no activation after the convolutions, ReLU after fc1."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(20, 5, name="conv1"),
        keras.layers.MaxPooling2D(2, name="pool1"),
        keras.layers.Conv2D(50, 5, name="conv2"),
        keras.layers.MaxPooling2D(2, name="pool2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(500, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="fc2"),
    ], name="lenet_5")
