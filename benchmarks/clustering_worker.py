"""One measurement of ``bench_keras_clustering.py``, run in a fresh process for one tool.

    BENCH_TOOL=weightzip  weightzip.keras on the Keras 3 backend of KERAS_BACKEND
    BENCH_TOOL=tfmot      TensorFlow Model Optimization 0.8.1 on tf-keras (Keras 2), in the venv that
                          bench_keras_clustering.py creates for it (TFMOT does not run on Keras 3)

The same code below builds the models, data, optimizers and training loops for both tools, so the two
columns of the benchmark differ only in the clustering implementation. This file must not import
weightzip at module level: the TFMOT venv does not have it.

Usage: ``python clustering_worker.py '<job as JSON>'``; the result is printed as JSON on the last line.
Jobs: ``cluster`` (time and peak memory of clustering a Dense 4096x4096 model), ``steps`` (training-step
time of plain and clustered copies of a model, interleaved), ``finetune`` (cluster a trained float model,
fine-tune, strip, convert to .tflite: accuracy and zipped size).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import statistics
import sys
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TOOL = os.environ.get("BENCH_TOOL", "weightzip")
if TOOL == "tfmot":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras as keras
else:
    import keras

import numpy as np  # noqa: E402

# ------------------------------------------------------------------------------------- the tool

def cluster(model, k: int, reassignment: str = "every_step"):
    """`model` with its kernels clustered to k centroids (linear initialisation, as TFMOT's default)."""
    if TOOL == "tfmot":
        import tensorflow_model_optimization as tfmot

        if reassignment != "every_step":
            raise ValueError("TFMOT 0.8.1 has no fixed-assignment mode")
        clustering = tfmot.clustering.keras
        return clustering.cluster_weights(model, number_of_clusters=k,
                                          cluster_centroids_init=clustering.CentroidInitialization.LINEAR)
    import weightzip.keras as wk

    return wk.cluster_weights(model, k, cluster_centroids_init=wk.CentroidInitialization.LINEAR,
                              reassignment=reassignment)


def strip(model):
    if TOOL == "tfmot":
        import tensorflow_model_optimization as tfmot

        return tfmot.clustering.keras.strip_clustering(model)
    import weightzip.keras as wk

    return wk.strip_clustering(model)


def tool_version() -> str:
    if TOOL == "tfmot":
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot

        return f"TFMOT {tfmot.__version__}, tf-keras {keras.__version__}, TensorFlow {tf.__version__}"
    import weightzip

    return f"weightzip {getattr(weightzip, '__version__', '')}, Keras {keras.__version__} ({keras.backend.backend()})"


# ---------------------------------------------------------------------------- models and data

def first_layer(shape):
    """The input of a Sequential model (TFMOT 0.8.1 fails on functional models under TF 2.21: a tensor
    from the clone's scratch graph leaks into the training graph; Sequential models train)."""
    return keras.layers.InputLayer(input_shape=shape) if TOOL == "tfmot" else keras.Input(shape)


def dense_4096():
    return keras.Sequential([first_layer((4096,)), keras.layers.Dense(4096)])


def lenet_300_100():
    """LeCun's 784-300-100-10 perceptron (ReLU), logits out (as weightzip.keras.models.lenet_300_100)."""
    return keras.Sequential([
        first_layer((784,)),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ])


MODELS = {"dense4096": dense_4096, "lenet": lenet_300_100}


def copy_of(model, name: str):
    """A new model of the same architecture holding `model`'s weights, sharing no layer with it.

    TFMOT's cluster_weights wraps the input model's own layer objects and replaces their kernel
    attributes by tensors, so the model it was given cannot be trained beside the clustered one.
    """
    copy = MODELS[name]()
    copy.set_weights(model.get_weights())
    return copy


def training_data(model_name: str, samples: int, data_path: str | None):
    """(x, y, loss): MNIST-5k training images for LeNet (from `data_path`), seeded noise for the Dense layer."""
    if model_name == "lenet":
        with np.load(data_path) as data:
            x, y = data["x_train"], data["y_train"]
        repeats = -(-samples // len(x))
        return (np.concatenate([x] * repeats)[:samples], np.concatenate([y] * repeats)[:samples],
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    return (rng.normal(size=(samples, 4096)).astype("float32"), rng.normal(size=(samples, 4096)).astype("float32"),
            keras.losses.MeanSquaredError())


def optimizer(name: str):
    return keras.optimizers.SGD(1e-3) if name == "sgd" else keras.optimizers.Adam(1e-4)


# ------------------------------------------------------------------------------------------ jobs

def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def job_cluster(job: dict) -> dict:
    """Cluster a Dense 4096 x 4096 model once cold, then `repeats` times warm; peak RSS over the start."""
    model = dense_4096()
    baseline = rss_mib()
    start = time.perf_counter()
    clustered = cluster(model, job["k"])
    cold = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    del clustered
    warm = []
    for _ in range(job["repeats"]):
        model = copy_of(model, "dense4096")  # TFMOT wraps the model's own layers: it clusters a model once
        start = time.perf_counter()
        clustered = cluster(model, job["k"])
        warm.append(time.perf_counter() - start)
        del clustered
    return {"cold_s": cold, "warm_s": statistics.median(warm) if warm else None, "peak_rss_increase_mib": peak}


def job_steps(job: dict) -> dict:
    """Seconds per training step of each case's plain model and its clustered copies, interleaved.

    A case: model, batch, optimizer, steps (per timed epoch). Every round fits each model for `steps`
    steps in turn (after one warm-up epoch each; the first model of the order moves by one each round), so
    load from other jobs on the machine hits all of them alike; the benchmark takes the ratio clustered /
    plain within each round.
    """
    return {"cases": [steps_of_case(case, job) for case in job["cases"]]}


def step_clock():
    """A callback timing the steps of an epoch from the end of its first step to the end of its last (each
    step's logged results read back before its end is recorded).

    fit's per-epoch set-up (iterators, callbacks) would otherwise be counted, and being the same for
    plain and clustered models it would pull every ratio towards 1.
    """

    class StepClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            # The step's results read back first: JAX (and TensorFlow) dispatch a step before the previous one
            # has run, so the time at dispatch would not be the time the step finished.
            for value in (logs or {}).values():
                np.asarray(value)
            self.ends.append(time.perf_counter())

        def seconds_per_step(self) -> float:
            return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)

    return StepClock()


def steps_of_case(case: dict, job: dict) -> dict:
    keras.utils.set_random_seed(0)
    batch, steps = case["batch"], case["steps"]
    x, y, loss = training_data(case["model"], batch * steps, job.get("data"))
    plain = MODELS[case["model"]]()
    models = {"plain": plain}
    for mode in job["modes"]:
        models[mode] = cluster(copy_of(plain, case["model"]), job["k"], mode)
    for model in models.values():
        model.compile(optimizer(case["optimizer"]), loss=loss)
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    times = {name: [] for name in models}
    clock = step_clock()
    names = list(models)
    for round_number in range(job["rounds"]):
        # The order turns each round: a model always run right after the same other one measured differently
        # (JAX LeNet-300-100, fixed after every-step 1.06-1.08x, the same code after plain 0.99-1.03x).
        turn = round_number % len(names)
        for name in names[turn:] + names[:turn]:
            model = models[name]
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
            times[name].append(clock.seconds_per_step())
    del models, plain
    keras.backend.clear_session()
    return {"step_s": times}


def job_finetune(job: dict) -> dict:
    """Cluster the float model of `weights` at each k, fine-tune, strip, convert to float .tflite."""
    import tensorflow as tf

    with np.load(job["data"]) as data:
        x_train, y_train, x_test, y_test = (data[key] for key in ("x_train", "y_train", "x_test", "y_test"))
    with np.load(job["weights"]) as stored:
        weights = [stored[f"w{i}"] for i in range(len(stored.files))]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = []
    for k in job["ks"]:
        keras.utils.set_random_seed(job["seed"])
        model = lenet_300_100()
        model.set_weights(weights)
        clustered = cluster(model, k)
        clustered.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
        clustered.fit(x_train, y_train, batch_size=job["batch"], epochs=job["epochs"], verbose=0)
        final = strip(clustered)
        logits = final.predict(x_test, verbose=0, batch_size=500)
        converter = tf.lite.TFLiteConverter.from_keras_model(final)
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints signatures
            flatbuffer = converter.convert()
        tflite_logits = tflite_predict(flatbuffer, x_test)
        kernels = [w for w in final.get_weights() if w.ndim == 2]
        results.append({
            "k": k,
            "accuracy": float(np.mean(np.argmax(logits, axis=1) == y_test)),
            "tflite_accuracy": float(np.mean(np.argmax(tflite_logits, axis=1) == y_test)),
            "values_per_kernel": max(len(np.unique(kernel)) for kernel in kernels),
            "zipped_bytes": zipped_size(flatbuffer),
        })
    return {"results": results}


def tflite_predict(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def zipped_size(flatbuffer: bytes) -> int:
    """Bytes of `flatbuffer` in a DEFLATE zip archive (TFMOT's ``get_gzipped_model_size`` measure)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.tflite", flatbuffer)
    return len(buffer.getvalue())


JOBS = {"cluster": job_cluster, "steps": job_steps, "finetune": job_finetune}


def main() -> None:
    job = json.loads(sys.argv[1])
    result = JOBS[job["job"]](job)
    result["tool"] = tool_version()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
