"""Collaborative optimisation in Keras: accuracy and zipped .tflite size of every combination.

For LeNet-300-100 and a small CNN (TFMOT's collaborative-optimisation example: Conv2D(12, 3) → MaxPool →
Dense(10)) trained on MNIST-5k (4,000 train / 1,000 test images, offline), it builds

    baseline        float32 model                       float .tflite
    baseline PTQ    post-training int8                  int8 .tflite
    prune           magnitude pruning (PolynomialDecay)  float .tflite
    cluster         weight clustering, k centroids      float .tflite and int8 PTQ
    prune+cluster   sparsity-preserving clustering      float .tflite and int8 PTQ
    QAT             quantisation-aware training         int8 .tflite
    PQAT            sparsity-preserving QAT             int8 .tflite
    CQAT            cluster-preserving QAT              int8 .tflite
    PCQAT           sparsity- and cluster-preserving    int8 .tflite
    QAT(clustered)  plain QAT of the clustered model    int8 .tflite (the contrast: clusters destroyed)

and prints test accuracy (run in the TFLite interpreter), .tflite size, DEFLATE-zipped size (TFMOT's
measure), kernel sparsity, and the most distinct int8 values in any output channel of any kernel
("levels": <= k means the clusters survived conversion).

    python benchmarks/bench_keras_collaborative.py                       # both models, TFMOT's recipe (~5 min)
    python benchmarks/bench_keras_collaborative.py --models mlp --sparsity 0.8 --clusters 16
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from weightzip.core.pruning import PolynomialDecay  # noqa: E402
from weightzip.data import load_mnist_5k  # noqa: E402
from weightzip.keras import (  # noqa: E402
    UpdatePruningStep,
    cluster_weights,
    convert_to_tflite,
    distinct_values_per_channel,
    prune_low_magnitude,
    quantize_model,
    strip_clustering,
    strip_pruning,
    strip_quantization,
    tflite_int8_kernels,
    tflite_predict,
    zipped_size,
)


@dataclass
class Row:
    model: str
    mode: str
    fmt: str
    accuracy: float
    tflite_bytes: int
    zipped_bytes: int
    sparsity: float
    levels: int | None


def lenet_300_100():
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ], name="lenet_300_100")


def small_cnn():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(12, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ], name="small_cnn")


MODELS = {"mlp": (lenet_300_100, (784,)), "cnn": (small_cnn, (28, 28, 1))}


def compile_fit(model, data, epochs, learning_rate, callbacks=()):
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x_train, y_train = data
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


def kernel_sparsity(model) -> float:
    kernels = [layer.get_weights()[0] for layer in model.layers if layer.get_weights()]
    return sum(int(np.count_nonzero(k == 0)) for k in kernels) / sum(k.size for k in kernels)


def measure(model_name, mode, stripped, args, x_train, x_test, y_test, *, int8) -> Row:
    flatbuffer = convert_to_tflite(stripped, x_train if int8 else None, int8=int8,
                                   calibration_samples=args.calibration)
    accuracy = float(np.mean(tflite_predict(flatbuffer, x_test).argmax(axis=1) == y_test))
    levels = None
    if int8:
        levels = max(int(distinct_values_per_channel(k).max()) for k in tflite_int8_kernels(flatbuffer))
    row = Row(model_name, mode, "int8" if int8 else "float32", accuracy, len(flatbuffer), zipped_size(flatbuffer),
              kernel_sparsity(stripped), levels)
    print(f"  {mode:<18} {row.fmt:<8} acc {accuracy:.4f}  zipped {row.zipped_bytes / 1024:7.1f} KiB", flush=True)
    return row


def run_model(name, args, data) -> list[Row]:
    build, shape = MODELS[name]
    x_train, y_train, x_test, y_test = (array.reshape((-1, *shape)) if array.ndim == 2 else array for array in data)
    train = (x_train, y_train)
    steps_per_epoch = -(-len(x_train) // 64)
    rows = []
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    print(f"{name}: training", flush=True)

    baseline = compile_fit(build(), train, args.epochs, 1e-3)
    rows.append(measure(name, "baseline", baseline, args, x_train, x_test, y_test, int8=False))
    rows.append(measure(name, "baseline PTQ", baseline, args, x_train, x_test, y_test, int8=True))

    schedule = PolynomialDecay(0.0, args.sparsity, begin_step=0,
                               end_step=max(1, steps_per_epoch * max(1, args.fine_tune_epochs - 1)),
                               frequency=max(1, steps_per_epoch // 4))
    pruned = compile_fit(prune_low_magnitude(baseline, pruning_schedule=schedule), train, args.fine_tune_epochs,
                         1e-4, callbacks=[UpdatePruningStep()])
    pruned = strip_pruning(pruned)
    rows.append(measure(name, "prune", pruned, args, x_train, x_test, y_test, int8=False))

    clustered = strip_clustering(compile_fit(
        cluster_weights(baseline, number_of_clusters=args.clusters, cluster_centroids_init="kmeans++",
                        seed=args.seed),
        train, args.fine_tune_epochs, 1e-4))
    rows.append(measure(name, "cluster", clustered, args, x_train, x_test, y_test, int8=False))
    rows.append(measure(name, "cluster PTQ", clustered, args, x_train, x_test, y_test, int8=True))

    sparse_clustered = strip_clustering(compile_fit(
        cluster_weights(pruned, number_of_clusters=args.clusters, cluster_centroids_init="kmeans++",
                        preserve_sparsity=True, seed=args.seed),
        train, args.fine_tune_epochs, 1e-4))
    rows.append(measure(name, "prune+cluster", sparse_clustered, args, x_train, x_test, y_test, int8=False))
    rows.append(measure(name, "prune+cluster PTQ", sparse_clustered, args, x_train, x_test, y_test, int8=True))

    for mode, source, preserve in (("QAT", baseline, "none"), ("PQAT", pruned, "sparsity"),
                                   ("CQAT", clustered, "clusters"), ("PCQAT", sparse_clustered, "sparse_clusters"),
                                   ("QAT(clustered)", clustered, "none")):
        trained = compile_fit(quantize_model(source, preserve=preserve), train, args.qat_epochs, 1e-4)
        rows.append(measure(name, mode, strip_quantization(trained), args, x_train, x_test, y_test, int8=True))
    print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def print_table(rows: list[Row], args):
    print()
    print(f"MNIST-5k, {args.epochs} baseline epochs, {args.fine_tune_epochs} prune/cluster epochs, "
          f"{args.qat_epochs} QAT epochs; sparsity {args.sparsity}, k = {args.clusters}, seed {args.seed}")
    header = f"{'model':<14} {'mode':<18} {'format':<8} {'accuracy':>8} {'tflite KiB':>10} {'zipped KiB':>10} " \
             f"{'x smaller':>9} {'sparsity':>8} {'levels':>6}"
    print(header)
    print("-" * len(header))
    baseline_zip = {}
    for row in rows:
        if row.mode == "baseline":
            baseline_zip[row.model] = row.zipped_bytes
        levels = "" if row.levels is None else str(row.levels)
        print(f"{row.model:<14} {row.mode:<18} {row.fmt:<8} {row.accuracy:>8.4f} {row.tflite_bytes / 1024:>10.1f} "
              f"{row.zipped_bytes / 1024:>10.1f} {baseline_zip[row.model] / row.zipped_bytes:>9.2f} "
              f"{row.sparsity:>8.3f} {levels:>6}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["mlp", "cnn"])
    parser.add_argument("--epochs", type=int, default=10, help="baseline training epochs")
    parser.add_argument("--fine-tune-epochs", type=int, default=4, help="pruning and clustering epochs")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--sparsity", type=float, default=0.5, help="final pruning sparsity (TFMOT example: 0.5)")
    parser.add_argument("--clusters", type=int, default=8, help="clusters per kernel (TFMOT example: 8)")
    parser.add_argument("--calibration", type=int, default=200, help="representative samples for int8")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load_mnist_5k()
    data = (x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test)
    rows = []
    for name in args.models:
        rows.extend(run_model(name, args, data))
    print_table(rows, args)


if __name__ == "__main__":
    main()
