"""Run-time weight memory and latency of palettized PyTorch layers against dense float32 ones.

For a Linear layer and a Conv2d layer (and a small MLP), each clustered to k = 2^bits shared weights per
output channel, the script converts the model with ``weightzip.torch.palettize`` and prints:

- weight memory: bytes of the buffers that hold the weights at run time (packed indices + codebook for
  palettized layers, the float32 tensor for dense ones) and the ratio dense / palettized;
- latency: median wall time of a forward pass (``torch.no_grad``, after warm-up) at two batch sizes,
  dense and palettized; the palettized forward unpacks the indices and gathers the weight every call.

    python benchmarks/bench_torch_palettized.py                 # default sizes (~1 min on 2 cores)
    python benchmarks/bench_torch_palettized.py --bits 4 --repeats 50 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from weightzip.torch import cluster_weights, palettize, strip_clustering, weight_memory_bytes


def cases() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """name -> (model, input shape without the batch dimension)."""
    torch.manual_seed(0)
    return {
        "Linear 4096x4096": (nn.Linear(4096, 4096), (4096,)),
        "Conv2d 256->256 3x3 @28x28": (nn.Conv2d(256, 256, 3, padding=1), (256, 28, 28)),
        "MLP 784-1024-1024-10": (
            nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)),
            (784,),
        ),
    }


def median_forward_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8], help="index widths (k = 2^bits)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes per measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} forward passes\n")
    header = (f"{'model':<28} {'bits':>4} {'dense MiB':>10} {'palett. MiB':>11} {'ratio':>6} "
              + " ".join(f"{'dense ms b' + str(b):>12} {'palett ms b' + str(b):>13}" for b in args.batches))
    print(header)
    print("-" * len(header))
    for name, (dense, shape) in cases().items():
        dense.eval()
        dense_bytes = weight_memory_bytes(dense)
        dense_ms = {b: median_forward_ms(dense, torch.randn(b, *shape), args.repeats) for b in args.batches}
        for bits in args.bits:
            model = cluster_weights(copy.deepcopy(dense), 1 << bits, per_channel=True)
            reference = strip_clustering(copy.deepcopy(model)).eval()
            model = palettize(model).eval()
            x = torch.randn(2, *shape)
            with torch.no_grad():
                error = float((model(x) - reference(x)).abs().max())
            if error > 1e-3:
                raise SystemExit(f"{name}, {bits} bits: palettized output differs from the clustered one by {error}")
            palettized_bytes = weight_memory_bytes(model)
            timings = " ".join(
                f"{dense_ms[b]:>12.3f} {median_forward_ms(model, torch.randn(b, *shape), args.repeats):>13.3f}"
                for b in args.batches)
            print(f"{name:<28} {bits:>4} {dense_bytes / 2**20:>10.2f} {palettized_bytes / 2**20:>11.3f} "
                  f"{dense_bytes / palettized_bytes:>6.1f} {timings}")


if __name__ == "__main__":
    main()
