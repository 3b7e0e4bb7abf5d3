"""`weightzip compress --clusters 16` on a synthetic ~50M-weight transformer-like safetensors file, with
the `.wz` writer of two source trees in the same run: "before" (a git revision, by default the one before
the writer chose codings from symbol statistics) and "after" (this checkout).

The writer used to encode every candidate of every stream (dense and sparse layouts, several gap widths,
packed / Huffman / ANS) and keep the smallest; it now sizes each candidate from symbol counts (exact for
packed and Huffman, a lower bound for ANS) and encodes only those that can win. Both runs compress the
same file on the same machine, one after the other, in fresh processes; the script prints wall and CPU
time (user + sys of the child: the fairer figure on a shared machine), weights/s, and the output sizes.
Then the writer alone: both trees' `encode_wz` on the same clustered matrices (CPU time, weights/s, bytes).

    python benchmarks/bench_writer_choice.py                 # before = the default revision below
    python benchmarks/bench_writer_choice.py --before main   # any revision
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "fe2d2f7"  # main before the statistics-based choice (exhaustive encoding of candidates)


def make_checkpoint(path: Path, blocks: int, seed: int = 0) -> int:
    """A transformer-like state_dict: per block a 4096x1024 and a 1024x4096 matrix, LayerNorm and biases."""
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(seed)
    state = {}
    for block in range(blocks):
        prefix = f"blocks.{block}."
        state[prefix + "mlp.up.weight"] = torch.from_numpy((rng.standard_normal((4096, 1024), np.float32) * 0.02))
        state[prefix + "mlp.up.bias"] = torch.from_numpy(rng.standard_normal(4096, np.float32) * 0.01)
        state[prefix + "mlp.down.weight"] = torch.from_numpy((rng.standard_normal((1024, 4096), np.float32) * 0.02))
        state[prefix + "mlp.down.bias"] = torch.zeros(1024)
        state[prefix + "ln.weight"] = torch.ones(1024)
        state[prefix + "ln.bias"] = torch.zeros(1024)
    save_file(state, str(path))
    return sum(t.numel() for t in state.values())


def export_tree(revision: str, target: Path) -> None:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "weightzip"], check=True,
                             capture_output=True).stdout
    target.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def compress(tree: Path, source: Path, output: Path, clusters: int) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one `weightzip compress` run with `tree`'s package."""
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # cwd: the scratch directory, so that `python -m` cannot import the checkout's package from the cwd.
    subprocess.run([sys.executable, "-m", "weightzip.cli", "compress", str(source), "-o", str(output),
                    "--clusters", str(clusters)], env=env, check=True, capture_output=True, cwd=source.parent)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


WRITER_ONLY = """
import sys, time
import numpy as np
from weightzip.core import ClusteredTensor
from weightzip.format import encode_wz
with np.load(sys.argv[1]) as stored:
    names = sorted({key.rsplit("/", 1)[0] for key in stored.files})
    tensors = {name: ClusteredTensor(stored[name + "/codebook"], stored[name + "/indices"]) for name in names}
encode_wz({names[0]: tensors[names[0]]})  # numba compilation / cache load outside the timing
start = time.process_time()
data = encode_wz(tensors)
print(time.process_time() - start, len(data))
"""


def clustered_tensors(source: Path, target: Path, clusters: int) -> int:
    """The checkpoint's matrices clustered once (this checkout's core), saved for the writer-only runs."""
    from safetensors.numpy import load_file

    from weightzip.core import ClusterConfig, cluster_array

    arrays = {}
    for name, array in load_file(str(source)).items():
        if array.ndim == 2:
            clustered = cluster_array(array, ClusterConfig(clusters, "optimal"))
            arrays[name + "/codebook"], arrays[name + "/indices"] = clustered.codebook, clustered.indices
    np.savez(target, **arrays)
    return sum(value.size for key, value in arrays.items() if key.endswith("/indices"))


def writer_only(tree: Path, tensors: Path) -> tuple[float, int]:
    """(CPU seconds of encode_wz on the clustered matrices, file bytes) with `tree`'s writer."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    check = subprocess.run([sys.executable, "-c", "import weightzip; print(weightzip.__file__)"], env=env,
                           check=True, capture_output=True, text=True, cwd=tensors.parent).stdout
    assert check.startswith(str(tree)), f"imported {check} instead of {tree}'s package"
    result = subprocess.run([sys.executable, "-c", WRITER_ONLY, str(tensors)], env=env, check=True,
                            capture_output=True, text=True, cwd=tensors.parent)
    seconds, size = result.stdout.split()
    return float(seconds), int(size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=DEFAULT_BEFORE, help=f"git revision of 'before' (default {DEFAULT_BEFORE})")
    parser.add_argument("--blocks", type=int, default=6, help="blocks of 2 x 4M weights (default 6: ~50M weights)")
    parser.add_argument("--clusters", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        source = scratch / "model.safetensors"
        weights = make_checkpoint(source, args.blocks)
        export_tree(args.before, scratch / "before")
        print(f"{source.name}: {weights:,} weights, {source.stat().st_size:,} bytes; "
              f"weightzip compress --clusters {args.clusters}")
        print(f"{'writer':<28} {'wall s':>7} {'CPU s':>7} {'weights/s (CPU)':>16} {'.wz bytes':>12}")
        sizes = {}
        for label, tree in ((f"before ({args.before})", scratch / "before"), ("after (this checkout)", REPO)):
            output = scratch / f"{label.split()[0]}.wz"
            wall, cpu = compress(tree, source, output, args.clusters)
            sizes[label.split()[0]] = output.stat().st_size
            print(f"{label:<28} {wall:7.1f} {cpu:7.1f} {weights / cpu / 1e6:14.2f}M {output.stat().st_size:12,}")
        change = sizes["after"] - sizes["before"]
        print(f"size change: {change:+,} bytes ({'same or fewer' if change <= 0 else 'MORE'})")
        tensors = scratch / "clustered.npz"
        weights = clustered_tensors(source, tensors, args.clusters)
        print(f"\nwriter only: encode_wz of the {weights:,} clustered weights (k={args.clusters}, same tensors)")
        print(f"{'writer':<28} {'CPU s':>7} {'weights/s (CPU)':>16} {'.wz bytes':>12}")
        for label, tree in ((f"before ({args.before})", scratch / "before"), ("after (this checkout)", REPO)):
            cpu, size = writer_only(tree, tensors)
            print(f"{label:<28} {cpu:7.2f} {weights / cpu / 1e6:14.2f}M {size:12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
