import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from weightzip.data import load_mnist_5k
from weightzip.demo import run_demo
from weightzip.keras.deep_compression import accuracy
from weightzip.keras.storage import load_wz


def test_demo_writes_a_working_compressed_model(tmp_path, capsys):
    assert run_demo(epochs=2, clusters=8, output=str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "Huffman" in out and "pruned" in out
    model = load_wz(tmp_path / "lenet_300_100.wz")
    _, _, x_test, y_test = load_mnist_5k()
    assert accuracy(model, x_test, y_test) > 0.8
    kernel = model.get_layer("fc1").kernel.numpy()
    assert np.mean(kernel == 0) > 0.9 and len(np.unique(kernel)) <= 8
