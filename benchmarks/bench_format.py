"""Bits per weight and speed of the .wz storage stages on a pruned, clustered fully connected layer.

A 300 × 784 kernel (LeNet-300-100's ip1) of N(0, 1) weights is magnitude-pruned to 8 % kept and
clustered with k shared weights (zeros preserved, exact 1-D k-means); it is then written as a one-tensor
`.wz` file with each storage stage of Deep Compression. Bits per weight are the tensor's section bytes
(codebook included) × 8 / 235,200 weights, and the whole file's bytes (header, checksums) alongside.

    stage               layout   coding    what the paper calls it
    raw float32         -        -         the original
    packed indices      dense    packed    weight sharing: ceil(log2 k) bits per weight
    packed + CSR        sparse   packed    + pruning: relative indices (gap bits chosen, and the paper's 5)
    + Huffman           sparse   huffman   + Huffman coding of indices and gaps
    + ANS               sparse   ans       ANS instead of Huffman
    auto                best     best      what `write_wz` picks by default

Encode/decode throughput is measured for `encode_wz` / `decode_wz` of the layer (best of --repeats)
and for the raw coding kernels on a larger stream (--kernel-n symbols), after a JIT warm-up.

    python benchmarks/bench_format.py
    python benchmarks/bench_format.py --ks 16 32 --kept 0.08 --repeats 5
"""

import os

for _variable in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from weightzip.core import ClusterConfig, cluster_array  # noqa: E402
from weightzip.core.ans import ans_decode, ans_encode  # noqa: E402
from weightzip.core.bitpack import pack_bits, unpack_bits  # noqa: E402
from weightzip.core.huffman import huffman_code_lengths, huffman_decode, huffman_encode  # noqa: E402
from weightzip.format import WriteOptions, decode_wz, encode_wz  # noqa: E402
from weightzip.format.container import disassemble  # noqa: E402

STAGES = [
    ("packed indices", WriteOptions(coding="packed", layout="dense")),
    ("packed + CSR (5-bit gaps)", WriteOptions(coding="packed", layout="sparse", gap_bits=5)),
    ("packed + CSR (best gaps)", WriteOptions(coding="packed", layout="sparse")),
    ("+ Huffman (sparse)", WriteOptions(coding="huffman", layout="sparse")),
    ("+ ANS (sparse)", WriteOptions(coding="ans", layout="sparse")),
    ("Huffman (dense)", WriteOptions(coding="huffman", layout="dense")),
    ("ANS (dense)", WriteOptions(coding="ans", layout="dense")),
    ("auto", WriteOptions()),
]


def pruned_fc_kernel(shape, kept, seed):
    weights = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    threshold = np.quantile(np.abs(weights), 1 - kept)
    weights[np.abs(weights) < threshold] = 0
    return weights


def best_time(function, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def describe(data):
    header, payload = disassemble(data)
    (record,) = header["tensors"]
    streams = [record[key] for key in ("indices", "gaps", "values") if key in record]
    coding = "/".join(s["coding"] for s in streams)
    gap_bits = record.get("gap_bits")
    return len(payload), f"{record['layout']}{f' g={gap_bits}' if gap_bits else ''} {coding}"


def layer_table(shape, kept, k, repeats, seed):
    weights = pruned_fc_kernel(shape, kept, seed)
    n = weights.size
    clustered = cluster_array(weights, ClusterConfig(k, init="optimal", preserve_sparsity=True))
    print(f"\n{shape[0]}x{shape[1]} kernel, {100 * np.count_nonzero(weights) / n:.1f}% kept, k={k} "
          f"(paper formula index bits: {int(k - 1).bit_length()})")
    print(f"{'stage':28} {'chosen':30} {'bits/weight':>11} {'file bytes':>10} {'rate':>6} "
          f"{'encode MW/s':>11} {'decode MW/s':>11}")
    print(f"{'raw float32':28} {'':30} {32.0:11.3f} {4 * n:10d} {1.0:5.1f}x")
    for name, options in STAGES:
        data = encode_wz({"w": clustered}, options=options)
        tensors, _ = decode_wz(data)
        assert np.array_equal(tensors["w"].indices, clustered.indices)
        section_bytes, chosen = describe(data)
        encode_s = best_time(lambda: encode_wz({"w": clustered}, options=options), repeats)
        decode_s = best_time(lambda: decode_wz(data), repeats)
        print(f"{name:28} {chosen:30} {8 * section_bytes / n:11.3f} {len(data):10d} "
              f"{4 * n / len(data):5.1f}x {n / encode_s / 1e6:11.1f} {n / decode_s / 1e6:11.1f}")


def kernel_table(count, repeats, seed):
    rng = np.random.default_rng(seed)
    # A skewed 16-symbol stream like cluster indices of a pruned layer (one dominant zero cluster).
    probabilities = np.r_[0.6, np.full(15, 0.4 / 15)]
    symbols = rng.choice(16, size=count, p=probabilities).astype(np.uint8)
    counts = np.bincount(symbols, minlength=16)
    lengths = huffman_code_lengths(counts)
    packed = pack_bits(symbols, 4)
    huffman = huffman_encode(symbols, lengths)
    words = ans_encode(symbols, counts)
    p = counts / counts.sum()
    print(f"\ncoding kernels on {count:,} symbols, alphabet 16, entropy {-(p * np.log2(p)).sum():.3f} bits/symbol")
    print(f"{'kernel':10} {'bits/symbol':>11} {'encode MS/s':>11} {'decode MS/s':>11}")
    rows = [
        ("packed", 8 * len(packed) / count, lambda: pack_bits(symbols, 4), lambda: unpack_bits(packed, count, 4)),
        ("huffman", 8 * len(huffman) / count, lambda: huffman_encode(symbols, lengths),
         lambda: huffman_decode(huffman, count, lengths)),
        ("ans", 32 * words.size / count, lambda: ans_encode(symbols, counts), lambda: ans_decode(words, count, counts)),
    ]
    for name, bits, encode, decode in rows:
        encode_s, decode_s = best_time(encode, repeats), best_time(decode, repeats)
        print(f"{name:10} {bits:11.3f} {count / encode_s / 1e6:11.1f} {count / decode_s / 1e6:11.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(300, 784))
    parser.add_argument("--kept", type=float, default=0.08)
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernel-n", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # JIT warm-up (numba kernels compile or load from cache on first use).
    encode_wz({"w": cluster_array(pruned_fc_kernel((20, 30), 0.5, 0), ClusterConfig(4, preserve_sparsity=True))})
    huffman_decode(huffman_encode([0, 1, 1], np.array([1, 1])), 3, np.array([1, 1]))
    for k in args.ks:
        layer_table(tuple(args.shape), args.kept, k, args.repeats, args.seed)
    kernel_table(args.kernel_n, args.repeats, args.seed)


if __name__ == "__main__":
    main()
