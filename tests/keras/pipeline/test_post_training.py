import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from weightzip.core.allocation import TargetUnreachableError, stored_bytes
from weightzip.core.errors import WeightzipError
from weightzip.core.fidelity import measure_fidelity, split_calibration
from weightzip.format import read_metadata
from weightzip.keras.pipeline.post_training import compress_post_training
from weightzip.keras.storage import load_wz


def _model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5)(x)
    return keras.Model(inputs, outputs)


def test_sparsity_and_cluster_count_per_layer_kind():
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    compressed, report = compress_post_training(model, sparsity=0.75, conv_sparsity=0.25, clusters=4,
                                                conv_clusters=8)
    for original, kept in zip(before, model.get_weights()):
        np.testing.assert_array_equal(original, kept)  # the input model is untouched
    conv, dense = compressed.layers[1], compressed.layers[4]
    assert np.mean(conv.kernel.numpy() == 0) == pytest.approx(0.25, abs=0.01)
    assert np.mean(dense.kernel.numpy() == 0) == pytest.approx(0.75, abs=0.01)
    assert len(np.unique(conv.kernel.numpy())) <= 8
    assert len(np.unique(dense.kernel.numpy())) <= 4
    np.testing.assert_array_equal(dense.bias.numpy(), model.layers[4].bias.numpy())  # biases not clustered
    assert report.fidelity is None and "fidelity not measured" in "\n".join(report.summary_lines())


def test_a_record_is_never_larger_than_its_float_storage():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="tiny"), keras.layers.Dense(64),
                              keras.layers.Dense(3)])
    _, report = compress_post_training(model, clusters=16)
    for choice in report.plan.choices.values():
        assert choice.stored_bytes <= stored_bytes(choice.name, np.asarray(choice.stored if choice.clusters == 0
                                                                           else choice.stored.decode()))
    tiny = model.get_layer("tiny").kernel.path  # 6 weights: 16 float32 centroids alone would take 64 bytes
    assert report.plan.choices[tiny].granularity == "float"
    assert {"tensor": tiny, "shape": [3, 2], "reason": "kept as float: no clustering stores it smaller"} \
        in report.uncompressed


def test_per_channel_codebooks():
    compressed, _ = compress_post_training(_model(), clusters=3, conv_clusters=3, per_channel=True)
    kernel = compressed.layers[4].kernel.numpy()
    assert all(len(np.unique(kernel[:, channel])) <= 3 for channel in range(kernel.shape[1]))
    assert len(np.unique(kernel)) > 3


def test_unsupported_layer_is_reported_with_its_reason():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1], 3), initializer="ones")

        def call(self, x):
            return x @ self.scale

    model = keras.Sequential([keras.Input((4,)), Scale(name="my_scale"), keras.layers.Dense(2)])
    _, report = compress_post_training(model, clusters=2)
    reasons = {row["tensor"]: row["reason"] for row in report.uncompressed}
    assert reasons[model.layers[0].scale.path] == "unsupported layer type Scale"
    assert reasons[model.layers[1].bias.path] == "1-D (bias or normalisation scale)"


# ---------------------------------------------------------------- with calibration: a trained model


@pytest.fixture(scope="module")
def trained():
    from weightzip.data import load_mnist_5k

    x_train, y_train, x_test, _ = load_mnist_5k()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 5, strides=2, activation="relu", name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.DepthwiseConv2D(3, strides=2, activation="relu", name="depthwise"),
        keras.layers.Flatten(),
        keras.layers.Dense(48, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="fc2"),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = x_train[:2000].reshape(-1, 28, 28, 1).astype(np.float32)
    model.fit(images, y_train[:2000], epochs=2, batch_size=64, verbose=0)
    return model, x_test[:96].reshape(-1, 28, 28, 1).astype(np.float32)


def _held_out_outputs(model, compressed, calibration):
    _, held = split_calibration(len(calibration), held_out=0.25, seed=0)
    return model.predict(calibration[held], verbose=0), compressed.predict(calibration[held], verbose=0)


def test_fidelity_is_measured_on_the_held_out_part(trained):
    model, calibration = trained
    compressed, report = compress_post_training(model, calibration, clusters=4)
    assert report.sensitivity == "fisher" and report.fidelity.samples == 24
    reference, candidate = _held_out_outputs(model, compressed, calibration)
    expected = measure_fidelity(reference, candidate)
    assert report.fidelity.top1_agreement == pytest.approx(expected.top1_agreement)
    assert report.fidelity.relative_output_error == pytest.approx(expected.relative_output_error, rel=1e-4)
    assert report.fidelity.relative_output_error < 0.5  # k=4 everywhere keeps the model close to the float one
    assert "fidelity on 24 held-out samples" in "\n".join(report.summary_lines())


def test_a_model_built_with_a_list_of_one_input_runs_without_keras_warnings(trained, recwarn):
    """Keras 2 .h5 models (MLPerf-Tiny's) are built with inputs=[x]: each call with a bare array warned."""
    model, calibration = trained
    inputs = keras.Input((28, 28, 1))
    listed = keras.Model([inputs], model(inputs))
    compress_post_training(listed, calibration, bits_per_weight=3.0, codebook_tuning=True)
    structure = [str(w.message) for w in recwarn if "structure of `inputs`" in str(w.message)]
    assert structure == []


def test_allocated_to_bits_per_weight_written_and_read_back(trained, tmp_path):
    model, calibration = trained
    path = tmp_path / "model.wz"
    compressed, report = compress_post_training(model, calibration, bits_per_weight=3.0, path=path)
    assert report.bits_per_weight <= 3.0 and report.file_bytes == path.stat().st_size
    assert report.fidelity.top1_agreement >= 0.9
    decoded = load_wz(path)
    np.testing.assert_allclose(decoded.predict(calibration, verbose=0), compressed.predict(calibration, verbose=0),
                               atol=1e-5)
    stored = read_metadata(path)["post_training"]
    assert stored["fidelity"]["samples"] == 24 and stored["mode"] == "3 bits per weight"
    assert {row["tensor"] for row in stored["tensors"]} == {
        model.get_layer(name).kernel.path for name in ("conv", "depthwise", "fc1", "fc2")}


def test_sensitivity_weighted_allocation_beats_uniform_k_at_the_same_size(trained):
    model, calibration = trained
    uniform, uniform_report = compress_post_training(model, calibration, clusters=4, sensitivity="none")
    allocated, report = compress_post_training(model, calibration, bits_per_weight=uniform_report.bits_per_weight)
    assert report.plan.total_bytes <= uniform_report.plan.total_bytes
    assert report.fidelity.relative_output_error < uniform_report.fidelity.relative_output_error


def test_target_size_is_the_whole_file_and_an_unmeetable_one_writes_nothing(trained, tmp_path):
    model, calibration = trained
    path = tmp_path / "small.wz"
    _, report = compress_post_training(model, calibration, target_bytes=12_000, path=path)
    assert path.stat().st_size <= 12_000 and report.file_bytes == path.stat().st_size
    with pytest.raises(TargetUnreachableError, match="cannot be met"):
        compress_post_training(model, calibration, target_bytes=2_000, path=tmp_path / "tiny.wz")
    assert not (tmp_path / "tiny.wz").exists()


def test_min_fidelity_gives_a_smaller_file_that_meets_it(trained):
    model, calibration = trained
    _, report = compress_post_training(model, calibration, min_fidelity=0.98)
    assert report.mode == "min fidelity 0.98"
    assert report.bits_per_weight < 8 and report.fidelity.top1_agreement >= 0.9


def test_warning_names_the_worst_layers_when_below_the_floor(trained):
    model, calibration = trained
    _, report = compress_post_training(model, calibration, clusters=2, sensitivity="none")
    warning = report.warning()
    assert warning is not None and "\n" not in warning
    assert any(model.get_layer(name).kernel.path in warning for name in ("conv", "depthwise", "fc1", "fc2"))
    assert "--bits-per-weight" in warning


def test_bad_calibration_and_goals_are_refused(trained):
    model, calibration = trained
    with pytest.raises(WeightzipError, match=r"samples of shape \(28, 28\)"):
        compress_post_training(model, calibration[..., 0])
    with pytest.raises(WeightzipError, match="at most one of"):
        compress_post_training(model, calibration, bits_per_weight=3, target_bytes=10_000)
    with pytest.raises(WeightzipError, match="min_fidelity needs calibration inputs"):
        compress_post_training(model, min_fidelity=0.9)


# ---------------------------------------------------------------- the command line


def _cli(*argv):
    from weightzip.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    model, calibration = trained
    folder = tmp_path_factory.mktemp("cli")
    model.save(folder / "model.keras")
    np.savez(folder / "calibration.npz", x=calibration)
    return folder


def test_cli_post_training_with_calibration(saved, capsys):
    output = saved / "allocated.wz"
    assert _cli("compress", saved / "model.keras", "-o", output, "--calibration", saved / "calibration.npz",
                "--bits-per-weight", "3") == 0
    printed = capsys.readouterr().out
    assert "3 bits per weight, sensitivity fisher" in printed and "top-1 agreement" in printed
    assert read_metadata(output)["post_training"]["bits_per_weight"] <= 3.0


def test_cli_folder_of_images_normalised_as_asked(trained, saved, tmp_path, capsys):
    from PIL import Image

    from weightzip.calibration import ImagePreprocessing, load_calibration

    model, calibration = trained
    photos = tmp_path / "digits"
    photos.mkdir()
    for index, image in enumerate(calibration[:48]):
        Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8)).save(photos / f"{index:02d}.png")
    output = tmp_path / "digits.wz"
    assert _cli("compress", saved / "model.keras", "-o", output, "--calibration", photos, "--image-mean", "0.1307",
                "--image-std", "0.3081", "--bits-per-weight", "3") == 0
    assert "top-1 agreement" in capsys.readouterr().out
    recorded = read_metadata(output)["post_training"]["fidelity"]
    inputs = load_calibration(photos, (28, 28, 1), preprocessing=ImagePreprocessing(mean=0.1307, std=0.3081))
    assert inputs.shape == (48, 28, 28, 1) and inputs.max() > 2.0  # normalised, not [0, 1]
    _, report = compress_post_training(model, inputs, bits_per_weight=3)  # what the command was asked to do
    assert report.fidelity.relative_output_error == pytest.approx(recorded["relative_output_error"], abs=1e-5)


@pytest.mark.parametrize("problem", ["wrong shape", "empty folder", "unmeetable target", "fidelity without data"])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(saved, tmp_path, capsys, problem):
    output = tmp_path / "out.wz"
    arguments = {
        "wrong shape": ["--calibration", tmp_path / "flat.npz"],
        "empty folder": ["--calibration", tmp_path / "photos"],
        "unmeetable target": ["--calibration", saved / "calibration.npz", "--target-size", "1500"],
        "fidelity without data": ["--min-fidelity", "0.9"],
    }[problem]
    np.savez(tmp_path / "flat.npz", x=np.zeros((4, 784), np.float32))
    (tmp_path / "photos").mkdir()
    assert _cli("compress", saved / "model.keras", "-o", output, *arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("weightzip compress: error:") and "\n" not in error, error
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["flat.npz", "photos"]


def test_near_zero_kernels_keep_their_few_large_weights():
    """Issue 9: a kernel 97 % near zero made DENSITY_BASED put all 16 centroids near 1e-31 (constant output);
    post-training uses the exact optimum (OPTIMAL), which keeps the large weights."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, use_bias=False)])
    kernel = rng.normal(scale=1e-30, size=(64, 32))
    large = rng.random((64, 32)) < 0.03
    kernel[large] = rng.normal(scale=0.5, size=large.sum())
    model.layers[0].kernel.assign(kernel.astype(np.float32))
    x = rng.normal(size=(40, 64)).astype(np.float32)
    _, report = compress_post_training(model, x, clusters=16)
    assert report.fidelity.relative_output_error < 0.1 and report.fidelity.mean_cosine > 0.99
    _, density = compress_post_training(model, x, clusters=16, init="density")
    assert density.fidelity.relative_output_error > 0.9  # the collapse the default avoids
