"""The Keras Deep Compression pipeline end to end on a slice of MNIST-5k, and its configuration."""

import itertools
import math

import keras
import numpy as np
import pytest

from weightzip.core import CentroidInitialization, ClusterConfig, cluster_array
from weightzip.core.errors import WeightzipError
from weightzip.core.pruning import apply_mask, magnitude_mask, pruned_count
from weightzip.format import read_metadata
from weightzip.keras.pipeline.deep_compression import (
    CompressionReport,
    Dataset,
    DeepCompressionConfig,
    Stage,
    accuracy,
    compress,
    parameter_bytes,
    pruning_schedule,
)

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

# One compress run covers the defaults per layer type and the per-layer overrides.
CONFIG = DeepCompressionConfig(
    conv_sparsity=0.5, conv_clusters=8,               # conv: type defaults
    sparsity=0.8, clusters=16,                        # fc2: type defaults
    layer_sparsity={"fc1": 0.9}, layer_clusters={"fc2": 4},
    prune_epochs=1, cluster_epochs=1, batch_size=64, learning_rate=2e-3, seed=0,
)
EXPECTED = {"conv": (0.5, 8), "fc1": (0.9, 16), "fc2": (0.8, 4)}  # layer -> (sparsity, k)
FIDELITY_PT = 12.0  # largest accuracy loss against the float model (points): 1 epoch of retraining per stage
POST_TRAINING_FIDELITY_PT = 16.0  # without retraining, 70 % pruned, 8 values (measured: 80.4 % -> 66.8 %)


@pytest.fixture(scope="module")
def mnist_slice():
    from weightzip.data import load_mnist_5k

    x_train, y_train, x_test, y_test = load_mnist_5k()
    train = np.random.default_rng(0).permutation(len(x_train))[:1200]
    return Dataset(x_train[train].reshape(-1, 28, 28, 1), y_train[train],
                   x_test[::4].reshape(-1, 28, 28, 1), y_test[::4])


def tiny_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(6, 5, strides=3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="fc2"),
    ])


@pytest.fixture(scope="module")
def trained(mnist_slice):
    model = tiny_model()
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(mnist_slice.x_train, mnist_slice.y_train, epochs=2, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def compressed(trained, mnist_slice, tmp_path_factory):
    output = tmp_path_factory.mktemp("dc") / "tiny.wz"
    before = [keras.ops.convert_to_numpy(w) for w in trained.weights]
    messages = []
    decoded, report = compress(trained, mnist_slice, output, config=CONFIG, progress=messages.append)
    return output, decoded, report, before, messages


def kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel)


def test_the_file_is_the_last_stage(compressed):
    output, _, report, _, _ = compressed
    assert output.is_file()
    assert [stage.name for stage in report.stages][-1].startswith("+ Huffman")
    assert len(report.stages) == 4
    assert report.stages[-1].size_bytes == output.stat().st_size


def test_every_stage_is_smaller_than_the_one_before(compressed):
    _, _, report, _, _ = compressed
    sizes = [stage.size_bytes for stage in report.stages]
    assert all(later < earlier for earlier, later in itertools.pairwise(sizes)), sizes
    assert report.original_bytes == 4 * sum(math.prod(w.shape) for w in tiny_model().weights)
    assert report.compression(report.stages[-1]) > report.compression(report.stages[1]) > 1


def test_accuracies_are_those_of_the_models(compressed, trained, mnist_slice):
    _, decoded, report, _, _ = compressed
    float_stage, _, clustered_stage, final_stage = report.stages
    assert float_stage.accuracy == accuracy(trained, mnist_slice.x_test, mnist_slice.y_test)
    decoded_accuracy = accuracy(decoded, mnist_slice.x_test, mnist_slice.y_test)
    assert final_stage.accuracy == decoded_accuracy
    assert decoded_accuracy == clustered_stage.accuracy  # lossless storage of the clustered model
    # Fidelity against the float model (measured: 80.4 % -> 70.8 %, 90 % of fc1 pruned, 4 values in fc2).
    assert decoded_accuracy >= float_stage.accuracy - FIDELITY_PT / 100, (float_stage.accuracy, decoded_accuracy)


def test_each_kernel_has_at_most_k_values_and_its_target_sparsity(compressed):
    _, decoded, _, _, _ = compressed
    for name, (sparsity, k) in EXPECTED.items():
        values = kernel(decoded, name)
        assert 2 <= len(np.unique(values[values != 0])) <= k - 1, name  # one of the k values is the zero
        assert np.count_nonzero(values == 0) == pruned_count(values.size, sparsity), name


def test_biases_are_not_pruned(compressed):
    _, decoded, _, _, _ = compressed
    for name in EXPECTED:
        assert np.count_nonzero(keras.ops.convert_to_numpy(decoded.get_layer(name).bias)) > 0


def test_the_input_model_is_not_modified(compressed, trained):
    _, _, _, before, _ = compressed
    for original, now in zip(before, trained.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(now), original)


def test_the_config_is_stored_and_progress_reported(compressed):
    output, _, _, _, messages = compressed
    stored = read_metadata(output)["deep_compression"]
    assert stored["layer_sparsity"] == {"fc1": 0.9}
    assert stored["layer_clusters"] == {"fc2": 4}
    assert stored["init"] == "linear"
    assert len(messages) == 4


def test_post_training_kernels_are_the_cores_clustering(trained, mnist_slice, tmp_path):
    """Without retraining, each decoded kernel is the core's clustering of the magnitude-pruned float kernel."""
    config = DeepCompressionConfig(sparsity=0.7, conv_sparsity=0.0, clusters=8, conv_clusters=8,
                                   prune_epochs=0, cluster_epochs=0)
    decoded, report = compress(trained, mnist_slice, tmp_path / "post.wz", config=config)
    assert np.count_nonzero(kernel(decoded, "conv") == 0) == 0  # conv_sparsity 0: not pruned
    fc1 = kernel(decoded, "fc1")
    assert np.count_nonzero(fc1 == 0) == pruned_count(fc1.size, 0.7)
    for name, sparsity in (("conv", 0.0), ("fc1", 0.7), ("fc2", 0.7)):
        weights = kernel(trained, name)
        pruned = apply_mask(weights, magnitude_mask(weights, sparsity)) if sparsity else weights
        expected = cluster_array(pruned, ClusterConfig(8, init=config.init, preserve_sparsity=True, seed=0))
        np.testing.assert_allclose(kernel(decoded, name), expected.decode(), rtol=1e-6, atol=0, err_msg=name)
        assert len(np.unique(kernel(decoded, name))) >= 2, name
    assert report.stages[-1].accuracy == report.stages[2].accuracy
    float_accuracy, final_accuracy = report.stages[0].accuracy, report.stages[-1].accuracy
    assert final_accuracy >= float_accuracy - POST_TRAINING_FIDELITY_PT / 100, (float_accuracy, final_accuracy)


def test_refuses_an_existing_output(trained, mnist_slice, tmp_path):
    output = tmp_path / "taken.wz"
    output.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        compress(trained, mnist_slice, output, config=CONFIG)
    assert output.read_bytes() == b"keep me"


def test_needs_a_loss(mnist_slice, tmp_path):
    with pytest.raises(WeightzipError, match="not compiled"):
        compress(tiny_model(), mnist_slice, tmp_path / "x.wz")


def test_rejects_per_layer_settings_for_unknown_layers(trained, mnist_slice, tmp_path):
    for option in ({"layer_sparsity": {"fc9": 0.5}}, {"layer_clusters": {"flatten": 4}}):
        with pytest.raises(ValueError, match="fc9|flatten"):
            compress(trained, mnist_slice, tmp_path / "x.wz", config=DeepCompressionConfig(**option))
    assert not (tmp_path / "x.wz").exists()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("epochs, steps_per_epoch", [(1, 1), (1, 7), (3, 19), (12, 63)])
def test_the_pruning_ramp_reaches_its_target_within_training(fraction, epochs, steps_per_epoch):
    config = DeepCompressionConfig(prune_epochs=epochs, ramp_fraction=fraction, ramp_power=2)
    schedule = pruning_schedule(config, 0.75, steps_per_epoch)
    steps = range(epochs * steps_per_epoch)
    updates = [step for step in steps if schedule.should_prune(step)]
    assert updates and updates[-1] == schedule.end_step
    assert schedule.sparsity_at(updates[-1]) == pytest.approx(0.75)
    assert schedule.power == 2
    assert len(updates) <= 11  # step 0 and at most 10 updates on the way up


@pytest.mark.parametrize("bad, message", [
    ({"sparsity": 1.0}, "sparsity"),
    ({"conv_sparsity": -0.1}, "conv_sparsity"),
    ({"sparsity": "0.5"}, "sparsity"),
    ({"clusters": 1}, "clusters"),
    ({"conv_clusters": 2.5}, "conv_clusters"),
    ({"clusters": True}, "clusters"),
    ({"prune_epochs": -1}, "prune_epochs"),
    ({"cluster_epochs": 1.5}, "cluster_epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"ramp_power": float("inf")}, "ramp_power"),
    ({"sparsity": float("nan")}, "sparsity"),
    ({"cluster_learning_rate": -1e-3}, "cluster_learning_rate"),
    ({"ramp_fraction": 0.0}, "ramp_fraction"),
    ({"ramp_power": 0}, "ramp_power"),
    ({"final_learning_rate_fraction": 1.5}, "final_learning_rate_fraction"),
    ({"cosine_decay": "yes"}, "cosine_decay"),
    ({"init": "sideways"}, "sideways"),
    ({"reassignment": "sometimes"}, "sometimes"),
    ({"layer_sparsity": {"fc1": 1.2}}, r"layer_sparsity\['fc1'\]"),
    ({"layer_sparsity": [("fc1", 0.5)]}, "mapping"),
    ({"layer_clusters": {"fc1": 1}}, r"layer_clusters\['fc1'\]"),
    ({"layer_clusters": {3: 8}}, "layer names"),
    ({"seed": -1}, "seed"),
    ({"weight_decay": -0.1}, "weight_decay"),
])
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        DeepCompressionConfig(**bad)


def test_config_per_layer_lookup_and_json():
    config = DeepCompressionConfig(sparsity=0.9, conv_sparsity=0.4, clusters=32, conv_clusters=64,
                                   layer_sparsity={"fc3": 0.7}, layer_clusters={"conv2": 256},
                                   init="density_based", reassignment="fixed", cluster_learning_rate=1e-4)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="conv2"),
                              keras.layers.Flatten(), keras.layers.Dense(4, name="fc3"),
                              keras.layers.Dense(3, name="fc4")])
    assert config.sparsity_of(model.get_layer("conv2")) == 0.4
    assert config.sparsity_of(model.get_layer("fc3")) == 0.7
    assert config.sparsity_of(model.get_layer("fc4")) == 0.9
    assert config.sparsity_of(model.layers[1]) == 0.0  # Flatten: nothing to prune
    assert config.clusters_of(model.get_layer("conv2")) == 256
    assert config.clusters_of(model.get_layer("fc3")) == 32
    assert config.fine_tuning_rate == 1e-4
    config.check_layer_names(model)
    stored = config.to_json()
    assert stored["init"] == CentroidInitialization.DENSITY_BASED.value and stored["reassignment"] == "fixed"
    assert DeepCompressionConfig(**stored) == config
    with pytest.raises(TypeError):
        config.layer_sparsity["fc4"] = 0.5  # frozen: a config never changes once validated


def test_dataset_checks_lengths():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="y_train"):
        Dataset(x, np.zeros(3), x, np.zeros(4))
    with pytest.raises(ValueError, match="test set is empty"):
        Dataset(x, np.zeros(4), x[:0], np.zeros(0))


def test_report_rows():
    report = CompressionReport(4000, [Stage("float", 0.9, 4100), Stage("small", 0.885, 100)])
    assert report.rows() == [("float", "90.00%", "+0.00 pt", "4,100 B", "1.0x"),
                             ("small", "88.50%", "-1.50 pt", "100 B", "40.0x")]


def test_parameter_bytes_counts_every_variable():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    assert parameter_bytes(model) == 4 * (5 * 3 + 3 + 4 * 3)


def test_post_training_pruning_reaches_recurrent_kernels():
    """Composite layers name their kernels "cell.kernel": pruning works on the variables themselves."""
    from weightzip.keras.pipeline.deep_compression import prune as prune_stage

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 4)), keras.layers.LSTM(8, name="lstm"), keras.layers.Dense(3)])
    data = Dataset(np.zeros((4, 5, 4), "float32"), np.zeros(4, "int64"), np.zeros((2, 5, 4), "float32"),
                   np.zeros(2, "int64"))
    pruned = prune_stage(model, data, DeepCompressionConfig(sparsity=0.5, prune_epochs=0, cluster_epochs=0), None)
    cell = pruned.get_layer("lstm").cell
    for kernel in (cell.kernel.numpy(), cell.recurrent_kernel.numpy()):
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01)
