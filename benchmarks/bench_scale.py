"""Big checkpoints end to end (issue 12 item 5): a synthetic sharded checkpoint compressed and decoded.

The script makes, in a temporary directory, a Hugging Face style sharded safetensors checkpoint of
transformer-like float32 tensors (per block: q/k/v/o projections d×d, MLP up 4d×d and down d×4d, a
LayerNorm gain of d values near 1.0; N(0, 0.02²) weights), then runs the `weightzip` command line on it,
each step in its own process, and prints per step: wall and CPU seconds (with its workers), the CPU seconds
of the command's own process (with ``--jobs``/``--scheduler``: the part the workers do not share), weights/s
per wall second and per CPU second (the "per core" figure: every kernel is single-threaded), the peak RSS
of the process and its workers (VmHWM), and how many cores other processes kept busy meanwhile (from
/proc/stat: on a shared machine a parallel speed-up in wall time needs idle cores; with Linux's autogroup
scheduling a session's processes share one session's part of the machine however many they are). Then
the time to read one tensor from the middle of the `.wz` with ``read_tensor``, broken down into envelope,
index, section reads and decoding.

    python benchmarks/bench_scale.py                          # the issue's size: 1e9 weights (4 GB, minutes)
    python benchmarks/bench_scale.py --weights 1e8 --clusters 16 256

Steps that the command line does not offer yet are printed as "not available" with the reason, never
skipped in silence: a sharded checkpoint is compressed through its ``model.safetensors.index.json`` when
`weightzip compress` accepts one, otherwise shard by shard (one `.wz` per shard, said so in the table);
``--jobs 2`` and a 2-worker Dask ``LocalCluster`` (``--scheduler``) run only when `compress --help` lists
those options.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIB = 1 << 20


@dataclass
class Step:
    label: str
    weights: int
    wall: float
    cpu: float
    peak_rss_mib: float
    note: str = ""
    parent_cpu: float = float("nan")  # CPU seconds of the command's own process (not its workers')
    others: float = float("nan")  # cores the machine's other processes kept busy during the step, on average

    def row(self) -> str:
        """The step's figures: CPU seconds of the command with its workers and of its own process alone (the
        part that parallel workers do not share: reading, writing, waiting on them), the cores other
        processes kept busy meanwhile and the 1-minute load average as it ended (a shared machine: wall
        times and parallel speed-ups mean little while others use the cores)."""
        return (f"{self.label:<34} {self.wall:8.1f} {self.cpu:8.1f} {self.parent_cpu:8.1f} "
                f"{self.weights / self.wall / 1e6:10.2f} {self.weights / self.cpu / 1e6:10.2f} "
                f"{self.peak_rss_mib:9.0f} {self.others:6.2f} {os.getloadavg()[0]:5.1f}  {self.note}")


HEADER = (f"{'step':<34} {'wall s':>8} {'CPU s':>8} {'own CPU':>8} {'Mw/s wall':>10} {'Mw/s CPU':>10} "
          f"{'peak MiB':>9} {'others':>6} {'load':>5}  note ({os.cpu_count()} cores; 'others': cores busy with "
          "other processes)")


def busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def block_shapes(hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    """One transformer block's weight tensors."""
    return [("self_attn.q_proj.weight", (hidden, hidden)), ("self_attn.k_proj.weight", (hidden, hidden)),
            ("self_attn.v_proj.weight", (hidden, hidden)), ("self_attn.o_proj.weight", (hidden, hidden)),
            ("mlp.up_proj.weight", (4 * hidden, hidden)), ("mlp.down_proj.weight", (hidden, 4 * hidden)),
            ("input_layernorm.weight", (hidden,))]


def make_checkpoint(directory: Path, weights: float, hidden: int, shard_weights: float, seed: int) -> tuple[Path, int, str]:
    """Write the sharded checkpoint; returns (index path, weights written, name of a tensor in the middle)."""
    from safetensors.numpy import save_file

    per_block = sum(int(np.prod(shape)) for _, shape in block_shapes(hidden))
    blocks = max(1, round(weights / per_block))
    rng = np.random.default_rng(seed)
    names = [(f"model.layers.{b}.{name}", shape) for b in range(blocks) for name, shape in block_shapes(hidden)]
    weight_map, shard, shard_size, shards, total = {}, {}, 0, [], 0

    def flush():
        nonlocal shard, shard_size
        if shard:
            path = directory / f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, str(path))
            shards.append(path)
            for key in shard:
                weight_map[key] = path.name
            shard, shard_size = {}, 0

    for name, shape in names:
        if name.endswith("layernorm.weight"):
            tensor = (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)  # gains near 1.0
        else:
            tensor = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        if shard_size and shard_size + tensor.size > shard_weights:
            flush()
        shard[name] = tensor
        shard_size += tensor.size
        total += tensor.size
    flush()
    for number, path in enumerate(shards, start=1):  # the Hugging Face naming once the count is known
        final = directory / f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        path.rename(final)
        for key, value in weight_map.items():
            if value == path.name:
                weight_map[key] = final.name
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 4 * total}, "weight_map": weight_map}, indent=1))
    middle = names[len(names) // 2][0]
    if middle.endswith("layernorm.weight"):
        middle = names[len(names) // 2 - 1][0]
    return index, total, middle


def high_water_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of process `pid` and of its descendants so far, the largest, in MiB.

    Not ``ru_maxrss``: Linux starts a child's maxrss at the resident size of the process that forked it (this
    script, which holds the checkpoint while making it, and distributed's modules), whatever the child uses."""
    import psutil

    peak = 0.0
    try:
        processes = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return peak
    for process in processes:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
    return peak


def run(command: list[str], label: str, weights: int, note: str = "") -> Step:
    """Run `command` in its own process; wall time, CPU time (with its children's) and the peak RSS of the
    process and its descendants (VmHWM sampled every 20 ms: it only grows, so the last sample is the peak but
    for what a process adds in its last 20 ms)."""
    import threading

    import psutil

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start, busy = time.perf_counter(), busy_seconds()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    peak, own, finished = [0.0], [float("nan")], threading.Event()
    watched = psutil.Process(process.pid)

    def sample():
        while not finished.wait(0.02):
            peak[0] = max(peak[0], high_water_mib(process.pid))
            try:
                times = watched.cpu_times()
                own[0] = times.user + times.system  # the process alone (its reaped workers are children_*)
            except psutil.Error:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read().decode(errors="replace")
    finished.set()
    sampler.join()
    _, status, usage = os.wait4(process.pid, 0)
    wall, busy = time.perf_counter() - start, busy_seconds() - busy
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label}: `{' '.join(command)}` failed:\n{output[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return Step(label, weights, wall, cpu, peak[0], note, parent_cpu=own[0], others=max(0.0, busy - cpu) / wall)


def combined(label: str, weights: int, steps: list[Step], note: str) -> Step:
    """One row for steps run one after the other (e.g. one per shard): times added, the largest peak."""
    wall = sum(step.wall for step in steps)
    return Step(label, weights, wall, sum(step.cpu for step in steps), max(step.peak_rss_mib for step in steps), note,
                parent_cpu=sum(step.parent_cpu for step in steps),
                others=sum(step.others * step.wall for step in steps) / wall)


def cli(*arguments) -> list[str]:
    return [sys.executable, "-m", "weightzip.cli", *map(str, arguments)]


def compress_help() -> str:
    return subprocess.run(cli("compress", "--help"), capture_output=True, text=True).stdout


def accepts_index(index: Path, workdir: Path) -> bool:
    """Whether `weightzip compress` takes a sharded checkpoint's index file (tried on a tiny one)."""
    from safetensors.numpy import save_file

    probe = workdir / "probe"
    probe.mkdir(exist_ok=True)
    save_file({"w": np.ones((4, 4), np.float32) + np.arange(16, dtype=np.float32).reshape(4, 4)},
              str(probe / "model-00001-of-00001.safetensors"))
    (probe / index.name).write_text(json.dumps({"metadata": {}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    result = subprocess.run(cli("compress", probe / index.name, "--clusters", "4", "-o", probe / "probe.wz"),
                            capture_output=True, text=True)
    return result.returncode == 0


def parallel_step(index: Path, serial_output: Path, k: int, option: str, label: str, weights: int,
                  serial: Step) -> Step:
    """`compress --jobs 2`, or `--scheduler` on a 2-worker Dask LocalCluster (started here, not timed; its worker
    processes' CPU seconds, read with psutil, are added to the command's), checked byte-identical to serial."""
    output = serial_output.with_name(serial_output.stem + option.strip("-") + ".wz")
    idle_note = ""
    if option == "--jobs":
        step = run(cli("compress", index, "--clusters", k, "--jobs", 2, "-o", output), label, weights)
    else:
        import psutil
        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            workers = [psutil.Process(p.pid) for p in psutil.Process().children(recursive=True)]
            here = psutil.Process()  # the scheduler runs in this process (with the step's sampling thread)
            idle = sum(sum(w.cpu_times()[:4]) for w in workers)
            time.sleep(5)  # distributed's own work with no task (heartbeats, its sampling profiler), per second
            idle_rate = (sum(sum(w.cpu_times()[:4]) for w in workers) - idle) / 5
            before = sum(sum(w.cpu_times()[:4]) for w in workers) + sum(here.cpu_times()[:2])
            step = run(cli("compress", index, "--clusters", k, "--scheduler", cluster.scheduler_address, "-o", output),
                       label, weights)
            cluster_cpu = sum(sum(w.cpu_times()[:4]) for w in workers) + sum(here.cpu_times()[:2]) - before
            step.cpu += cluster_cpu
            step.others = max(0.0, step.others - cluster_cpu / step.wall)
            idle_note = f"; cluster's idle CPU at the rate measured before: {idle_rate * step.wall:.1f} s"
    same = output.read_bytes() == serial_output.read_bytes()
    workers_cpu = step.cpu - step.parent_cpu
    step.note = (f"{serial.wall / step.wall:.2f}x serial wall; {'same bytes as serial' if same else 'BYTES DIFFER'}; "
                 f"workers {workers_cpu:.1f} CPU s (serial {serial.cpu:.1f}){idle_note}")
    output.unlink()
    return step


READ_ONE = """
import json, sys, time
from weightzip.format import read_tensor, read_wz
from weightzip.format.container import FileSource, read_envelope
from weightzip.format.reader import _checked_source, _decode_record
path, name, warm_up = sys.argv[1:4]
read_tensor(path, warm_up)  # imports and compiled kernels loaded
clock = time.perf_counter

def fastest(function, repeats=5):  # the least disturbed of a few runs (a shared machine)
    times = []
    for _ in range(repeats):
        start = clock(); function(); times.append(clock() - start)
    return min(times)

one = fastest(lambda: read_tensor(path, name))
with open(path, "rb") as handle:
    source = FileSource(handle)
    envelope = fastest(lambda: read_envelope(source, verify_file_crc=False))
    opened = fastest(lambda: _checked_source(source, None, path, verify_file_crc=False, only=name))
    _, records, reader, _ = _checked_source(source, None, path, verify_file_crc=False, only=name)
    sections = [value for value in records[0].raw.values() if isinstance(value, dict) and "offset" in value]
    read = fastest(lambda: [reader.section(descriptor, name) for descriptor in sections])
    read_and_decode = fastest(lambda: _decode_record(records[0], reader, path))
start = clock(); read_wz(path, max_elements=1 << 40); whole = clock() - start
print(json.dumps({"one": one, "envelope": envelope, "index": opened - envelope, "read": read,
                  "decode": read_and_decode - read, "whole": whole, "bytes": sum(s["length"] for s in sections)}))
"""


def read_one_tensor(path: Path, name: str, warm_up: str) -> dict:
    """Seconds to read `name` with read_tensor ("one"), in a fresh process (imports and kernel loading
    excluded: `warm_up` is read once first), broken down by timing its parts apart: the envelope (preamble,
    header read, inflated and parsed), the index (records checked, `name` looked up), reading its sections
    (with their CRC-32s; "bytes" of them) and decoding them (each the fastest of 5 runs: a shared machine's
    preemptions inflate single runs); and the seconds to read the whole file once."""
    result = subprocess.run([sys.executable, "-c", READ_ONE, str(path), name, warm_up], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"reading {name} from {path} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, default=1e9, help="weights in the checkpoint (default 1e9)")
    parser.add_argument("--hidden", type=int, default=2048, help="model width d (default 2048)")
    parser.add_argument("--shard-weights", type=float, default=2.5e8, help="weights per shard (default 2.5e8, 1 GB)")
    parser.add_argument("--clusters", type=int, nargs="+", default=[16], help="k values to compress with")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="make the checkpoint in this directory and keep it (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="wz-scale-") as temporary:
        workdir = Path(args.keep or temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        index, total, middle = make_checkpoint(workdir, args.weights, args.hidden, args.shard_weights, args.seed)
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        largest = max(int(np.prod(shape)) for _, shape in block_shapes(args.hidden))
        print(f"checkpoint: {total:,} weights ({4 * total / 2**30:.2f} GiB float32) in {len(shards)} shards, "
              f"largest tensor {largest:,} weights ({4 * largest / MIB:.0f} MiB); made in "
              f"{time.perf_counter() - start:.0f} s in {workdir}")
        help_text = compress_help()
        by_index = accepts_index(index, workdir)
        print()
        print(HEADER)
        print("-" * 120)
        startup = run([sys.executable, "-c", "import weightzip.cli, weightzip.safetensors_wz"], "startup (imports only)", 1)
        print(f"{startup.label:<34} {startup.wall:8.1f} {startup.cpu:8.1f} {'':>8} {'':>10} {'':>10} "
              f"{startup.peak_rss_mib:9.0f}  included in every step below (one process per step)")
        for k in args.clusters:
            outputs = []
            if by_index:
                output = workdir / f"model-k{k}.wz"
                steps = [run(cli("compress", index, "--clusters", k, "-o", output), f"compress k={k} serial", total)]
                outputs.append((output, None))
            else:
                steps = []
                for shard in shards:
                    output = workdir / f"{Path(shard).stem}-k{k}.wz"
                    steps.append(run(cli("compress", workdir / shard, "--clusters", k, "-o", output),
                                     f"compress k={k} serial", 0))
                    outputs.append((output, shard))
                steps = [combined(f"compress k={k} serial", total, steps,
                                  "shard by shard: index input not accepted by this build")]
            for step in steps:
                print(step.row())
            for option, text in (("--jobs", "compress k={k} --jobs 2"), ("--scheduler", "compress k={k} LocalCluster(2)")):
                if option not in help_text:
                    print(f"{text.format(k=k):<34} {'not available: `weightzip compress` has no ' + option + ' option yet':>60}")
                elif not by_index:
                    print(f"{text.format(k=k):<34} not available: needs the index input")
                else:
                    print(parallel_step(index, outputs[0][0], k, option, text.format(k=k), total, steps[0]).row())
            wz_bytes = sum(path.stat().st_size for path, _ in outputs)
            decode_steps = [run(cli("decompress", path, "-o", path.with_suffix(".safetensors")),
                                f"decompress k={k}", 0) for path, _ in outputs]
            print(combined(f"decompress k={k}", total, decode_steps, "per .wz" if len(outputs) > 1 else "").row())
            holder = outputs[0][0] if by_index else next(
                path for path, shard in outputs if shard == json.loads(index.read_text())["weight_map"][middle])
            read = read_one_tensor(holder, middle, middle)
            print(f"{'read one tensor k=' + str(k):<34} {read['one'] * 1e3:8.1f} ms  ({middle}; whole file "
                  f"{holder.name}: {read['whole'] * 1e3:.0f} ms)")
            print(f"{'  of which (timed apart)':<34} envelope {read['envelope'] * 1e3:.1f} ms, index "
                  f"{read['index'] * 1e3:.1f} ms, read {read['bytes'] / MIB:.1f} MiB {read['read'] * 1e3:.1f} ms, "
                  f"decode {read['decode'] * 1e3:.1f} ms; all but decoding: "
                  f"{(read['envelope'] + read['index'] + read['read']) * 1e3:.1f} ms")
            print(f"{'size k=' + str(k):<34} {wz_bytes:,} bytes ({4 * total / wz_bytes:.1f}x smaller)")
            for path, _ in outputs:
                path.unlink()
                path.with_suffix(".safetensors").unlink(missing_ok=True)
            print()
        print("Targets (issue 12): >= 10 M weights/s per core (CPU column) at k=16 and k=256; decode >= 50 M/s per "
              "core; peak RSS <= 2x the largest tensor + 300 MB; --jobs 2 >= 1.7x serial; read one tensor <= 50 ms "
              "+ its decode.")
        print(f"(2x the largest tensor + 300 MB = {2 * 4 * largest / MIB + 300:.0f} MiB)")


if __name__ == "__main__":
    main()
