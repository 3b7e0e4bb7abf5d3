"""Keras clustering: weightzip.keras and TFMOT 0.8.1 side by side, both measured in this run.

TFMOT needs Keras 2, so the benchmark creates (once) a separate venv with TensorFlow, tf-keras and
tensorflow-model-optimization==0.8.1 (default ~/.cache/weightzip/tfmot-venv, or --tfmot-venv) and runs
TFMOT there. Every measurement runs in a fresh process of ``clustering_worker.py``, whose single copy
of the model, data, optimizer and training-loop code serves both tools.

(a) cluster_weights on a model with one Dense 4096 x 4096 layer at k = 16 / 64 / 256: wall time and
    peak RSS increase, one process per tool and k. A process that passes --memory-cap-gib of RSS is
    stopped and printed as such (the machine is shared: it is not allowed to take it all).
(b) training-step time, clustered (k = 16) / plain, with model.fit: Dense 4096 x 4096 (random data,
    MSE) and LeNet-300-100 (MNIST-5k), at batch 32 with SGD and at batch 256 / 128 with Adam. weightzip
    on each Keras backend (every-step reassignment, the default, and fixed assignment), TFMOT on
    tf-keras. Plain and clustered epochs alternate in one process (the order turning each round); the
    printed ratio is the median over rounds of (clustered / plain) within a round. Targets: every step
    <= 1.5x, fixed <= 1.1x.
(c) LeNet-300-100 on MNIST-5k (4,000 train / 1,000 test): a float model trained per seed (TensorFlow
    backend), then both tools cluster the same float weights at k = 16 / 8 / 4, fine-tune it with the
    same fixed recipe (Adam 1e-4, batch 64; nothing tuned), strip, convert to float .tflite: test
    accuracy mean +- std over the seeds and zipped .tflite size against the zipped float .tflite.

Run: ``python benchmarks/bench_keras_clustering.py`` (tens of minutes on 2 shared cores).
Options: ``--parts a,b,c``, ``--backends tensorflow,jax,torch``, ``--cases`` (of (b)), ``--quick`` (fewer
rounds and epochs),
``--seeds N``, ``--tfmot-venv DIR``, ``--memory-cap-gib G``.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"  # this process: part (c)'s float models and .tflite conversion

HERE = Path(__file__).resolve().parent
WORKER = HERE / "clustering_worker.py"
ROOT = HERE.parent
TFMOT_VERSION = "0.8.1"
DEFAULT_VENV = Path.home() / ".cache" / "weightzip" / "tfmot-venv"

STEP_CASES = {
    "dense-b32-sgd": {"title": "Dense 4096x4096, batch 32, SGD", "model": "dense4096", "batch": 32,
                      "optimizer": "sgd", "steps": 17},
    "dense-b256-adam": {"title": "Dense 4096x4096, batch 256, Adam", "model": "dense4096", "batch": 256,
                        "optimizer": "adam", "steps": 6},
    "lenet-b32-sgd": {"title": "LeNet-300-100, batch 32, SGD", "model": "lenet", "batch": 32, "optimizer": "sgd",
                      "steps": 65},
    "lenet-b128-adam": {"title": "LeNet-300-100, batch 128, Adam", "model": "lenet", "batch": 128,
                        "optimizer": "adam", "steps": 33},
}
TARGET = {"every_step": 1.5, "fixed": 1.1}


# ------------------------------------------------------------------------------------ the TFMOT venv

def tfmot_requirements() -> list[str]:
    """TFMOT 0.8.1 with tf-keras on this process's TensorFlow version (like for like)."""
    for distribution in ("tensorflow", "tensorflow-cpu"):
        try:
            version = importlib.metadata.version(distribution)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    else:
        raise SystemExit("TensorFlow is not installed in this environment: pip install -e '.[keras]'")
    major_minor = ".".join(version.split(".")[:2])
    return [f"tensorflow=={version}", f"tf-keras~={major_minor}.0",
            f"tensorflow-model-optimization=={TFMOT_VERSION}"]


def tfmot_python(venv: Path) -> Path:
    """The venv's python, creating the venv first if it is missing or was made for other requirements."""
    python = venv / "bin" / "python"
    marker = venv / ".weightzip-requirements"
    requirements = "\n".join(tfmot_requirements())
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmark runs must not build the same venv at once
        if marker.is_file() and marker.read_text() == requirements and python.is_file():
            return python
        print(f"creating the TFMOT venv {venv} ({requirements.replace(chr(10), ' ')}): once, downloads "
              f"TensorFlow", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements.split()], check=True)
        subprocess.run([str(python), "-c", "import tf_keras, tensorflow_model_optimization"], check=True,
                       env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
        marker.write_text(requirements)
    return python


# ------------------------------------------------------------------------------------------ workers

class Worker:
    """Runs clustering_worker.py jobs for one tool: weightzip on a Keras backend, or TFMOT."""

    def __init__(self, tool: str, backend: str, python: str | Path, cap_mib: float):
        self.tool, self.backend, self.python, self.cap_mib = tool, backend, str(python), cap_mib

    @property
    def label(self) -> str:
        return f"TFMOT {TFMOT_VERSION} (tf-keras)" if self.tool == "tfmot" else f"weightzip ({self.backend})"

    def run(self, job: dict) -> dict:
        """The job's JSON result, or {"error": ...}: {"over_cap_mib": peak} when stopped for memory."""
        env = {**os.environ, "BENCH_TOOL": self.tool, "KERAS_BACKEND": self.backend, "CUDA_VISIBLE_DEVICES": "",
               "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                  os.environ.get("PYTHONPATH")]))}
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            process = subprocess.Popen([self.python, str(WORKER), json.dumps(job)], stdout=out, stderr=err, env=env)
            peak = 0.0
            while process.poll() is None:
                peak = max(peak, _rss_mib(process.pid))
                if peak > self.cap_mib:
                    process.kill()
                    process.wait()
                    return {"error": f"stopped at {peak / 1024:.1f} GiB RSS (over the cap)", "over_cap_mib": peak}
                time.sleep(0.02)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if process.returncode != 0:
            last = (stderr.strip().splitlines() or ["(no output)"])[-1]
            if "MemoryError" in stderr or "OOM" in stderr or "ResourceExhausted" in stderr:
                return {"error": f"out of memory: {last[:160]}"}
            return {"error": f"exit {process.returncode}: {last[:200]}"}
        return json.loads(stdout.strip().splitlines()[-1])


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --------------------------------------------------------------------------------------------- (a)

def part_a(args, ours: Worker, tfmot: Worker):
    print(f"(a) cluster_weights on Dense 4096x4096 (16.8M weights), one fresh process per tool and k "
          f"(memory cap {args.memory_cap_gib:g} GiB RSS)")
    print(f"    {'k':>4}  {'tool':<26} {'first call':>11} {'warm median':>12} {'peak RSS +':>11}")
    for k in (16, 64, 256):
        for worker in (ours, tfmot):
            result = worker.run({"job": "cluster", "k": k, "repeats": args.repeats})
            if "error" in result:
                print(f"    {k:>4}  {worker.label:<26} {result['error']}")
                continue
            warm = "-" if result["warm_s"] is None else f"{result['warm_s']:.3f}s"
            print(f"    {k:>4}  {worker.label:<26} {result['cold_s']:>10.3f}s {warm:>12} "
                  f"{result['peak_rss_increase_mib']:>7.0f} MiB", flush=True)
    print()


# --------------------------------------------------------------------------------------------- (b)

def ratio(times: dict, mode: str) -> tuple[float, float]:
    """(median of the per-round ratios mode / plain, ratio of the fastest rounds)."""
    rounds = [c / p for c, p in zip(times[mode], times["plain"])]
    return statistics.median(rounds), min(times[mode]) / min(times["plain"])


def part_b(args, workers: list[Worker], data_path: str):
    print(f"(b) training step with model.fit, clustered (k = 16) / plain in the same process, {args.rounds} "
          f"interleaved rounds; ms per step (median) and ratio (median of per-round ratios; fastest rounds)")
    cases = [dict(STEP_CASES[name]) for name in args.cases.split(",")]
    results = {}
    for worker in workers:
        modes = ["every_step"] if worker.tool == "tfmot" else ["every_step", "fixed"]
        job = {"job": "steps", "cases": cases, "k": 16, "modes": modes, "rounds": args.rounds, "data": data_path}
        results[worker.label] = worker.run(job)
        if "error" in results[worker.label]:
            print(f"    {worker.label}: {results[worker.label]['error']}", flush=True)
            continue
        # Each tool's ratios as soon as it is measured (the tables below follow once all have run).
        for case, measured in zip(cases, results[worker.label]["cases"]):
            figures = ", ".join(f"{mode} {ratio(measured['step_s'], mode)[0]:.2f}x" for mode in modes)
            print(f"    measured {worker.label}, {case['title']}: {figures} (load {os.getloadavg()[0]:.1f})",
                  flush=True)
    header = (f"    {'tool':<26} {'plain':>8} {'every step':>11} {'ratio':>14} {'fixed':>8} {'ratio':>14}")
    verdicts = []
    for index, case in enumerate(cases):
        print(f"  {case['title']} ({case['steps']} steps per round, steps 2-{case['steps']} timed)")
        print(header)
        for label, result in results.items():
            if "error" in result:
                print(f"    {label:<26} {result['error']}")
                continue
            times = result["cases"][index]["step_s"]
            cells = [f"{statistics.median(times['plain']) * 1e3:8.1f}"]
            for mode in ("every_step", "fixed"):
                if mode not in times:
                    cells.append(f"{'n/a':>8} {'':>14}" if mode == "fixed" else "")
                    continue
                median, fastest = ratio(times, mode)
                cells.append(f"{statistics.median(times[mode]) * 1e3:{11 if mode == 'every_step' else 8}.1f} "
                             f"{median:>6.2f}x {fastest:>5.2f}x")
                if "weightzip" in label and case["title"] in TARGET_CASES:
                    verdicts.append(f"{label:<24} {case['title']:<34} {mode:<10} {median:5.2f}x "
                                    f"(target <= {TARGET[mode]}x: {'MET' if median <= TARGET[mode] else 'MISSED'})")
            print(f"    {label:<26} {' '.join(cells)}")
    print("  issue-14 targets (median ratio):")
    for line in verdicts:
        print(f"    {line}")
    print(flush=True)


TARGET_CASES = ("Dense 4096x4096, batch 32, SGD", "LeNet-300-100, batch 128, Adam")


# --------------------------------------------------------------------------------------------- (c)

def part_c(args, ours: Worker, tfmot: Worker, directory: Path):
    import keras
    import numpy as np

    from weightzip.keras.export import convert_to_tflite, zipped_size
    from weightzip.keras.models import lenet_300_100

    data = dict(np.load(directory / "mnist5k.npz"))
    epochs, tune_epochs, ks = (8, 2, (16, 8, 4)) if args.quick else (20, 4, (16, 8, 4))
    print(f"(c) LeNet-300-100 on MNIST-5k ({len(data['x_train'])} train / {len(data['x_test'])} test), float "
          f"model trained {epochs} epochs per seed; clustering + {tune_epochs} epochs Adam 1e-4 batch 64; "
          f"{args.seeds} seeds")
    rows = {}
    float_accuracies, float_zips = [], []
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        model = lenet_300_100()
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(keras.optimizers.Adam(1e-3), loss)
        model.fit(data["x_train"], data["y_train"], batch_size=64, epochs=epochs, verbose=0)
        logits = model.predict(data["x_test"], verbose=0, batch_size=500)
        float_accuracies.append(float(np.mean(np.argmax(logits, axis=1) == data["y_test"])))
        float_zips.append(zipped_size(convert_to_tflite(model, int8=False)))
        weights_path = directory / f"float_seed{seed}.npz"
        np.savez(weights_path, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
        job = {"job": "finetune", "data": str(directory / "mnist5k.npz"), "weights": str(weights_path),
               "ks": list(ks), "epochs": tune_epochs, "batch": 64, "seed": seed}
        for worker in (ours, tfmot):
            result = worker.run(job)
            if "error" in result:
                print(f"    seed {seed}, {worker.label}: {result['error']}")
                continue
            for entry in result["results"]:
                rows.setdefault((entry["k"], worker.label), []).append(entry)
    float_zip = statistics.median(float_zips)
    print(f"    float: accuracy {mean_std(float_accuracies)}, zipped float .tflite {float_zip:.0f} B (median)")
    print(f"    {'k':>3}  {'tool':<26} {'Keras acc':>15} {'.tflite acc':>15} {'values':>6} {'zipped':>8} "
          f"{'smaller':>7}")
    for k in ks:
        for worker in (ours, tfmot):
            entries = rows.get((k, worker.label))
            if not entries:
                continue
            size = statistics.median(entry["zipped_bytes"] for entry in entries)
            print(f"    {k:>3}  {worker.label:<26} {mean_std([e['accuracy'] for e in entries]):>15} "
                  f"{mean_std([e['tflite_accuracy'] for e in entries]):>15} "
                  f"{max(e['values_per_kernel'] for e in entries):>6} {size:>8.0f} {float_zip / size:>6.2f}x")
    print()


def mean_std(values) -> str:
    values = list(values)
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f}±{spread:.4f} (n={len(values)})"


# --------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--quick", action="store_true", help="5 rounds, shorter training, 3 seeds")
    parser.add_argument("--repeats", type=int, default=2, help="(a) warm repetitions per k")
    parser.add_argument("--rounds", type=int, default=None, help="(b) timed rounds (default 7; 5 with --quick)")
    parser.add_argument("--cases", default=",".join(STEP_CASES), help=f"(b) among {', '.join(STEP_CASES)}")
    parser.add_argument("--seeds", type=int, default=3, help="(c) seeds (>= 3 for a mean +- std)")
    parser.add_argument("--tfmot-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--memory-cap-gib", type=float, default=6.0)
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 5 if args.quick else 7
    parts = set(args.parts.split(","))
    unknown = parts - {"a", "b", "c"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}: choose from a, b, c")
    unknown_cases = set(args.cases.split(",")) - set(STEP_CASES)
    if unknown_cases:
        parser.error(f"unknown cases {sorted(unknown_cases)}: choose from {', '.join(STEP_CASES)}")
    backends = args.backends.split(",")
    bad = set(backends) - {"tensorflow", "jax", "torch"}
    if bad:
        parser.error(f"unknown backends {sorted(bad)}: choose from tensorflow, jax, torch")

    python = tfmot_python(args.tfmot_venv.expanduser())
    cap = args.memory_cap_gib * 1024
    ours = {backend: Worker("weightzip", backend, sys.executable, cap) for backend in backends}
    tfmot = Worker("tfmot", "tensorflow", python, cap)
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f}; TFMOT venv {args.tfmot_venv}\n", flush=True)

    from weightzip.data import load_mnist_5k

    with tempfile.TemporaryDirectory(prefix="bench-clustering-") as scratch:
        directory = Path(scratch)
        import numpy as np

        x_train, y_train, x_test, y_test = load_mnist_5k()
        np.savez(directory / "mnist5k.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        first = ours.get("tensorflow") or next(iter(ours.values()))
        if "a" in parts:
            part_a(args, first, tfmot)
        if "b" in parts:
            part_b(args, [*ours.values(), tfmot], str(directory / "mnist5k.npz"))
        if "c" in parts:
            if "tensorflow" not in ours:
                ours["tensorflow"] = Worker("weightzip", "tensorflow", sys.executable, cap)
            part_c(args, ours["tensorflow"], tfmot, directory)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
