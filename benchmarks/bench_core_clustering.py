"""Speed, memory and quality of the NumPy clustering core on one large weight matrix, on one core.

For n N(0, 1) float32 weights (default 4096 × 4096 = 16.8 M, one large Dense kernel) and each k, every
method is timed (wall and CPU seconds, best of --repeat runs, after a JIT warm-up on a small array; CPU
time is the steadier figure on a shared machine), its peak extra memory is measured twice
(tracemalloc: NumPy's allocations; peak RSS over the run minus RSS before it, where Linux allows resetting
the peak), and its SSE on the raw data is divided by the SSE of the "optimal" method (which, on more than
2^16 float32 weights, is optimal over a 2^16-bin histogram). A second table says how far that is from exact:
it is compared with finer histograms, a Lloyd polish of the finest one on the full sorted data, and the exact
optimum over the distinct values (`optimal_partition(..., max_atoms=None)`) where its k × distinct-values
split points fit in 1 GiB (use --n 1048576 to get it at every k).

    python benchmarks/bench_core_clustering.py                    # the issue's figures (~2-3 min)
    python benchmarks/bench_core_clustering.py --n 1000000 --ks 16 --methods optimal linear+lloyd
"""

import os

# One core: set before NumPy / numba are imported, or their thread pools are already sized.
for _variable in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402

from weightzip.core import fit_centroids, lloyd_refine, optimal_centroids, optimal_partition, sse  # noqa: E402
from weightzip.core.sample import SortedSample  # noqa: E402

# (init, refine with Lloyd?) for each method name.
METHODS = {
    "linear": ("linear", False),
    "linear+lloyd": ("linear", True),
    "density+lloyd": ("density", True),
    "random+lloyd": ("random", True),
    "kmeans+++lloyd": ("kmeans++", True),
    "optimal": ("optimal", False),
}

# TFMOT cluster_weights on one 4096 × 4096 Dense layer, from the issue (not measured here).
TFMOT_REFERENCE = {16: "3.35 s (LINEAR)", 64: "16 s / 13.8 GB", 256: "out of memory in 24 GiB"}

MIB = 1 << 20


@dataclass
class Measurement:
    seconds: float
    cpu_seconds: float
    traced_peak_mib: float
    rss_peak_mib: float | None
    centroids: np.ndarray


def rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def run_method(values: np.ndarray, k: int, method: str, lloyd_iterations: int, seed: int) -> np.ndarray:
    init, refine = METHODS[method]
    return fit_centroids(values, k, init, lloyd_iterations=lloyd_iterations if refine else 0, seed=seed)


def measure(call, repeat: int) -> Measurement:
    """Time `call` untraced (best of `repeat`, with peak RSS), then once under tracemalloc for NumPy's peak."""
    seconds = cpu_seconds = np.inf
    rss_peak = None
    for _ in range(repeat):
        gc.collect()
        can_reset = reset_peak_rss()
        before = rss_kib("VmRSS")
        start, start_cpu = time.perf_counter(), time.process_time()
        centroids = call()
        seconds = min(seconds, time.perf_counter() - start)
        cpu_seconds = min(cpu_seconds, time.process_time() - start_cpu)
        peak = rss_kib("VmHWM")
        if can_reset and peak is not None and before is not None:
            rss_peak = max(rss_peak or 0.0, (peak - before) / 1024)
    gc.collect()
    tracemalloc.start()
    call()
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Measurement(seconds, cpu_seconds, traced / MIB, rss_peak, centroids)


def warm_up(ks, methods, lloyd_iterations):
    """Compile (or load from numba's cache) every kernel, on a small array, before anything is timed."""
    small = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)
    for k in ks:
        for method in methods:
            run_method(small, k, method, lloyd_iterations, seed=0)
        optimal_centroids(small, k, max_atoms=1 << 12)  # the histogram path too
        sse(small, np.linspace(-1, 1, k))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096 * 4096, help="number of N(0,1) float32 weights")
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 64, 256], help="numbers of clusters")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--lloyd-iterations", type=int, default=30,
                        help="Lloyd iterations after init (an upper bound: it stops at convergence)")
    parser.add_argument("--accuracy-atoms", type=int, nargs="*", default=[1 << 16, 1 << 18, 1 << 20],
                        help="histogram sizes (max_atoms) for the exactness table; none to skip it")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per method (the best is shown)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    values = np.random.default_rng(args.seed).standard_normal(args.n, dtype=np.float32)
    print(f"weightzip core clustering: n = {args.n:,} N(0,1) float32 weights ({args.n * 4 / MIB:.0f} MiB), "
          f"one core (NUMBA/OMP/BLAS threads = 1), numpy {np.__version__}")
    start = time.perf_counter()
    warm_up(args.ks, args.methods, args.lloyd_iterations)
    print(f"numba JIT warmed up on 200,000 weights first ({time.perf_counter() - start:.1f} s, not counted). "
          f"Lloyd: at most {args.lloyd_iterations} iterations. Memory: tracemalloc peak (NumPy allocations) "
          f"and peak RSS minus RSS before the call.")
    print()
    header = (f"{'k':>4} {'method':<15} {'wall s':>7} {'CPU s':>7} {'traced MiB':>11} {'RSS MiB':>8} "
              f"{'SSE / optimal':>14}")
    print(header + "   TFMOT (one 4096x4096 Dense, from the issue)")
    print("-" * (len(header) + 46))
    for k in args.ks:
        results = {method: measure(lambda m=method: run_method(values, k, m, args.lloyd_iterations, args.seed),
                                   args.repeat)
                   for method in args.methods}
        optimum = sse(values, results["optimal"].centroids if "optimal" in results
                      else optimal_centroids(values, k))
        for row, (method, result) in enumerate(results.items()):
            rss = f"{result.rss_peak_mib:8.0f}" if result.rss_peak_mib is not None else f"{'n/a':>8}"
            ratio = sse(values, result.centroids) / optimum
            reference = TFMOT_REFERENCE.get(k, "") if row == 0 and args.n == 4096 * 4096 else ""
            print(f"{k:>4} {method:<15} {result.seconds:7.3f} {result.cpu_seconds:7.3f} "
                  f"{result.traced_peak_mib:11.1f} {rss} "
                  f"{ratio:14.6f}   {reference}")
        print()
    print("Targets (issue): exact k = 256 in <= 1 s on one core and <= 1 GB extra memory.")
    if args.accuracy_atoms:
        exactness_table(values, args.ks, sorted(args.accuracy_atoms))


def exactness_table(values: np.ndarray, ks, atoms) -> None:
    """SSE of the histogram optimum for each max_atoms, relative to the exact optimum (or the best found)."""
    print()
    print("How exact is 'optimal'? It is the exact optimum over partitions cutting between histogram bins;")
    print("below, its SSE on the raw data for several bin counts, relative to the exact optimum over the")
    print("distinct values when it fits in memory, else to the best solution found (the finest histogram")
    print("polished by Lloyd on the full sorted data, a local optimum next to it).")
    sample = SortedSample.from_values(values)
    print()
    print(f"{'k':>4} " + " ".join(f"{'2^%d bins' % int(np.log2(a)):>18}" for a in atoms)
          + f" {'Lloyd polish':>14} {'exact':>18}")
    for k in ks:
        solutions, seconds = [], []
        for max_atoms in atoms:
            start = time.perf_counter()
            solutions.append(optimal_centroids(values, k, max_atoms=max_atoms))
            seconds.append(time.perf_counter() - start)
        polished, iterations = lloyd_refine(sample, solutions[-1], 10_000)
        errors = [sse(values, centroids) for centroids in solutions]
        start = time.process_time()
        try:
            exact = optimal_partition(values, k, max_atoms=None).sse
            exact_cell = f"{time.process_time() - start:7.1f}s cpu"
        except ValueError:  # k × distinct values split points over the exact solver's 1 GiB
            exact, exact_cell = None, "over 1 GiB"
        best = exact if exact is not None else min(errors + [sse(values, polished)])
        cells = [f"{error / best - 1:+9.2e} ({time:5.1f}s)" for error, time in zip(errors, seconds)]
        print(f"{k:>4} " + " ".join(f"{cell:>18}" for cell in cells)
              + f" {sse(values, polished) / best - 1:+9.2e} ({iterations} it) {exact_cell:>18}")
    print("(cells: SSE / exact (else best) − 1, and the time of that optimum; the default max_atoms is 2^16)")


if __name__ == "__main__":
    main()
