import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from weightzip import demo
from weightzip.data import load_mnist_5k
from weightzip.keras.pipeline.deep_compression import accuracy
from weightzip.keras.storage import load_wz

K = 8


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One seed of the demo with a short float training (2 epochs) and k = 8."""
    path = tmp_path_factory.mktemp("demo") / "lenet_300_100.wz"
    return path, demo.demo_report(0, epochs=2, clusters=K, output=path)


def test_the_demo_file_is_a_faithful_compressed_model(short_run):
    path, report = short_run
    model = load_wz(path)
    _, _, x_test, y_test = load_mnist_5k()
    decoded_accuracy = accuracy(model, x_test, y_test)
    float_accuracy = report.stages[0].accuracy
    assert decoded_accuracy == report.stages[-1].accuracy
    # Fidelity against the float model it came from (92 % of fc1's weights pruned, 8 shared values).
    assert decoded_accuracy >= float_accuracy - 0.03, (float_accuracy, decoded_accuracy)
    kernel = model.get_layer("fc1").kernel.numpy()
    assert np.mean(kernel == 0) > 0.9
    assert 2 <= len(np.unique(kernel[kernel != 0])) <= K - 1  # one of the k shared values is the pruned zero
    assert report.compression(report.stages[-1]) > 20


def test_run_demo_prints_the_table_and_the_mean_and_std_over_seeds(short_run, tmp_path, capsys, monkeypatch):
    _, report = short_run
    seeds_run = []

    def recorded(seed, *, epochs, clusters, output):
        seeds_run.append(seed)
        output.write_bytes(b"")
        return report

    monkeypatch.setattr(demo, "demo_report", recorded)
    assert demo.run_demo(epochs=2, clusters=K, seed=5, output=str(tmp_path), seeds=3) == 0
    out = capsys.readouterr().out
    assert seeds_run == [5, 6, 7]
    assert "Huffman" in out and "pruned" in out and "over 3 seeds" in out and "±" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet_300_100.wz"]  # only the first seed's file kept
