"""`weightzip demo`: an offline end-to-end run on real data with a built-in default model."""

from __future__ import annotations

import os

import numpy as np

from weightzip.core import CentroidInitialization, ClusterConfig, cluster_array


def run_demo(*, epochs: int = 8, clusters: int = 16, seed: int = 0, output: str | None = None) -> int:
    """Train LeNet-300-100 on MNIST-5k, cluster every kernel to `clusters` shared weights, report."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from rich.console import Console
    from rich.table import Table

    from weightzip.data import load_mnist_5k

    console = Console()
    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = load_mnist_5k()
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    with console.status("training LeNet-300-100 on MNIST-5k"):
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    _, float_accuracy = model.evaluate(x_test, y_test, verbose=0)

    float_bits = clustered_bits = 0
    for layer in model.layers:
        kernel, bias = layer.get_weights()
        clustered = cluster_array(kernel, ClusterConfig(clusters, init=CentroidInitialization.OPTIMAL))
        layer.set_weights([clustered.decode(), bias])
        index_bits = int(np.ceil(np.log2(clusters)))
        float_bits += 32 * (kernel.size + bias.size)
        clustered_bits += index_bits * kernel.size + 32 * clusters + 32 * bias.size
    _, clustered_accuracy = model.evaluate(x_test, y_test, verbose=0)

    table = Table(title="LeNet-300-100 on MNIST-5k")
    for column in ("stage", "test accuracy", "weight storage", "compression"):
        table.add_column(column)
    table.add_row("float32", f"{float_accuracy:.2%}", f"{float_bits / 8 / 1024:.1f} KiB", "1.0x")
    table.add_row(f"clustered, k={clusters}", f"{clustered_accuracy:.2%}", f"{clustered_bits / 8 / 1024:.1f} KiB",
                  f"{float_bits / clustered_bits:.1f}x")
    console.print(table)
    return 0
