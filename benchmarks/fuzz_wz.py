"""Structural fuzzing of the .wz reader with forged checksums: prints the count of each outcome.

Each case takes a valid file (one of several encodings of a small model), applies 1-3 structural
mutations (header fields, shapes, section descriptors, section bytes; see tests/format/wz_mutations.py),
re-seals every CRC-32 and reads it: the envelope and record checks, every decoder, the dense decode,
the size table and the one-tensor reader. The only acceptable outcomes are a well-formed result or a
``WzFormatError``; anything else is counted under its exception type and the first few are printed.
The address space is limited (see --memory-mb) so an oversized allocation shows up as a MemoryError.

    python benchmarks/fuzz_wz.py --cases 100000 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import random
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "format"))

from wz_mutations import mutate  # noqa: E402
from wz_samples import pruned_array, random_clustered  # noqa: E402

from weightzip.core import ClusteredTensor  # noqa: E402
from weightzip.format import WriteOptions, WzFormatError, decode_dense, decode_wz, encode_wz  # noqa: E402
from weightzip.format.reader import decode_tensor, inspect_bytes  # noqa: E402


def sample_files() -> list[bytes]:
    tensors = {
        "fc/kernel": random_clustered((60, 50), 16, density=0.08, seed=1),
        "conv/kernel": random_clustered((3, 3, 4, 8), 8, axis=-1, group_size=3, seed=2),
        "emb": random_clustered((40, 6), 4, axis=0, seed=4, dtype=np.float16),
        "fc/bias": np.linspace(-1, 1, 50, dtype=np.float32),
        "sparse": pruned_array((40,), 0.1, seed=3),
        "count": np.array(7, dtype=np.int64),
        "flags": np.array([True, False, True]),
    }
    files = [encode_wz(tensors, {"framework": "fuzz", "n": [1, 2]})]
    for coding in ("packed", "huffman", "ans"):
        for layout in ("dense", "sparse"):
            files.append(encode_wz(tensors, {"m": 1}, WriteOptions(coding=coding, layout=layout)))
    return files


def read_everything(data: bytes) -> None:
    """Every reading path; raises whatever the reader raises."""
    tensors, metadata = decode_wz(data)
    assert isinstance(metadata, dict)
    dense = decode_dense(tensors)
    for name, tensor in tensors.items():
        assert isinstance(dense[name], np.ndarray) and dense[name].shape == tensor.shape, name
        assert isinstance(tensor, (ClusteredTensor, np.ndarray)), name
    report = inspect_bytes(data)
    assert report.file_bytes == len(data)
    if report.rows:
        decode_tensor(data, report.rows[len(data) % len(report.rows)].name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-mb", type=int, default=1024,
                        help="address space allowed beyond what the process holds at start (default 1024)")
    parser.add_argument("--show", type=int, default=5, help="print the first N unexpected exceptions")
    parser.add_argument("--progress", type=int, default=10_000, help="print the counts so far every N cases")
    args = parser.parse_args()

    files = sample_files()
    for data in files:
        read_everything(data)  # warm up numba and check the seeds themselves
    with open("/proc/self/statm") as statm:
        virtual = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (virtual + (args.memory_mb << 20), resource.RLIM_INFINITY))

    rng = random.Random(args.seed)
    outcomes: collections.Counter = collections.Counter()
    slowest, shown, start = (0.0, -1), 0, time.perf_counter()
    for case in range(args.cases):
        data = mutate(rng, rng.choice(files))
        began = time.perf_counter()
        try:
            read_everything(data)
            outcomes["read back (well-formed)"] += 1
        except WzFormatError:
            outcomes["WzFormatError"] += 1
        except Exception as error:  # noqa: BLE001 - counting what escapes is the point
            outcomes[f"UNEXPECTED {type(error).__name__}"] += 1
            if shown < args.show:
                shown += 1
                print(f"case {case}: {type(error).__name__}: {error}", file=sys.stderr)
                traceback.print_exc(limit=-3)
        slowest = max(slowest, (time.perf_counter() - began, case))
        if args.progress and (case + 1) % args.progress == 0 and case + 1 < args.cases:
            print(f"  after {case + 1} cases ({time.perf_counter() - start:.0f} s): {dict(outcomes)}", flush=True)
    elapsed = time.perf_counter() - start
    print(f"{args.cases} forged-CRC structural cases (seed {args.seed}) in {elapsed:.0f} s, "
          f"slowest case {slowest[1]} took {slowest[0] * 1000:.0f} ms:")
    for outcome, count in outcomes.most_common():
        print(f"  {count:8d}  {outcome}")
    unexpected = sum(count for outcome, count in outcomes.items() if outcome.startswith("UNEXPECTED"))
    print(f"unexpected exceptions: {unexpected}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
