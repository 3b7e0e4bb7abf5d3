"""Keras models to and from `.wz`: exact round trips, palettized and sparse kernels, refusals and errors."""

import keras
import numpy as np
import pytest

from weightzip.core import ClusteredTensor
from weightzip.core.errors import WeightzipError
from weightzip.format import WzFormatError, inspect_table, read_metadata, read_wz, write_wz
from weightzip.keras.storage import load_wz, model_tensors, palettized_or_raw, save_wz


def sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(3, name="logits"),
    ])


def functional_with_batchnorm():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((10,))
    hidden = keras.layers.Dense(8, name="dense")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    hidden = keras.layers.Activation("relu")(hidden)
    skip = keras.layers.Dense(8, use_bias=False, name="skip")(inputs)
    outputs = keras.layers.Dense(2, name="out")(keras.layers.Add()([hidden, skip]))
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")  # non-trivial statistics, so inference actually uses them
    rng = np.random.default_rng(2)
    bn.moving_mean.assign(rng.normal(size=8).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=8).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=8).astype("float32"))
    return model


def conv_model():
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((9, 9, 2)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="fc"),
    ])


def inputs_for(model, n=7):
    return np.random.default_rng(4).normal(size=(n, *model.input_shape[1:])).astype("float32")


def set_kernel(model, layer_name, values):
    layer = model.get_layer(layer_name)
    layer.kernel.assign(values.astype("float32"))


def by_layer(named: dict, suffix: str):
    """The entry whose variable path ends with `suffix` (paths start with the model's name scope)."""
    matches = [key for key in named if key == suffix or key.endswith("/" + suffix)]
    assert len(matches) == 1, (suffix, list(named))
    return named[matches[0]]


def quantised(shape, levels, seed=0):
    """Values drawn from `levels` distinct floats (what strip_clustering leaves behind)."""
    rng = np.random.default_rng(seed)
    palette = rng.normal(size=levels).astype("float32")
    return palette[rng.integers(0, levels, size=shape)]


@pytest.mark.parametrize("build", [sequential, functional_with_batchnorm, conv_model])
def test_round_trip_gives_identical_predictions(tmp_path, build):
    model = build()
    path = tmp_path / "model.wz"
    size = save_wz(model, path)
    assert size == path.stat().st_size
    decoded = load_wz(path)
    x = inputs_for(model)
    np.testing.assert_array_equal(decoded.predict(x, verbose=0), model.predict(x, verbose=0))
    for original, restored in zip(model.weights, decoded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored), keras.ops.convert_to_numpy(original))


def test_round_trip_of_clustered_and_pruned_kernels_is_exact(tmp_path):
    model = conv_model()
    kernel = quantised((3, 3, 2, 4), 6)
    kernel[np.random.default_rng(5).random(kernel.shape) < 0.7] = 0
    set_kernel(model, "conv", kernel)
    set_kernel(model, "fc", quantised((36, 5), 12, seed=1))
    path = tmp_path / "model.wz"
    save_wz(model, path)
    decoded = load_wz(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(decoded.get_layer("conv").kernel), kernel)
    x = inputs_for(model)
    np.testing.assert_array_equal(decoded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_few_distinct_values_are_stored_as_one_codebook(tmp_path):
    model = sequential()
    set_kernel(model, "hidden", quantised((12, 16), 8))
    path = tmp_path / "model.wz"
    save_wz(model, path)
    tensors, _ = read_wz(path)
    kernel = by_layer(tensors, "hidden/kernel")
    assert isinstance(kernel, ClusteredTensor)
    assert kernel.codebook.shape == (1, 8)
    np.testing.assert_array_equal(kernel.decode(), keras.ops.convert_to_numpy(model.get_layer("hidden").kernel))
    assert not isinstance(by_layer(tensors, "hidden/bias"), ClusteredTensor)  # 16 distinct biases: raw is cheaper
    assert not isinstance(by_layer(tensors, "logits/kernel"), ClusteredTensor)  # unclustered float kernel


def test_per_channel_palettes_are_stored_per_channel():
    rng = np.random.default_rng(6)
    channels = 64
    palettes = rng.normal(size=(channels, 4)).astype("float32")  # 256 distinct values, 4 per channel
    kernel = np.take_along_axis(palettes.T, rng.integers(0, 4, size=(300, channels)), axis=0)
    assert len(np.unique(kernel)) > 16
    stored = palettized_or_raw(kernel, max_clusters=16)
    assert isinstance(stored, ClusteredTensor)
    assert stored.codebook.shape == (channels, 4)
    assert stored.axis in (-1, 1)
    np.testing.assert_array_equal(stored.decode(), kernel)


def test_too_many_distinct_values_stay_raw():
    kernel = np.random.default_rng(7).normal(size=(40, 30)).astype("float32")
    stored = palettized_or_raw(kernel)
    assert isinstance(stored, np.ndarray)
    np.testing.assert_array_equal(stored, kernel)


def test_pruned_kernels_are_stored_sparse(tmp_path):
    model = sequential()
    clustered = quantised((12, 16), 4)
    clustered[np.random.default_rng(8).random(clustered.shape) < 0.9] = 0
    set_kernel(model, "hidden", clustered)
    raw = np.random.default_rng(9).normal(size=(16, 3)).astype("float32")
    raw[np.abs(raw) < 1.5] = 0  # pruned but never clustered: a sparse raw array
    set_kernel(model, "logits", raw)
    model.get_layer("hidden").bias.assign(np.linspace(-1, 1, 16).astype("float32"))
    path = tmp_path / "model.wz"
    save_wz(model, path)
    rows = {row.name: row for row in inspect_table(path).rows}
    hidden, logits = by_layer(rows, "hidden/kernel"), by_layer(rows, "logits/kernel")
    assert hidden.kind == "clustered"
    assert hidden.layout == "sparse"
    assert hidden.nonzero == np.count_nonzero(clustered)
    assert logits.kind == "array"
    assert logits.layout == "sparse"
    assert logits.nonzero == np.count_nonzero(raw)
    assert by_layer(rows, "hidden/bias").layout == "dense"  # no zeros: nothing to skip


def test_negative_zeros_are_stored_as_zeros(tmp_path):
    kernel = quantised((12, 16), 4)
    mask = np.random.default_rng(10).random(kernel.shape) < 0.85
    with_negative_zeros = np.where(mask, -0.0 * np.abs(kernel), kernel).astype("float32")  # masking by -x * 0
    with_positive_zeros = np.where(mask, 0.0, kernel).astype("float32")
    assert np.signbit(with_negative_zeros[mask]).any()
    kernel_bytes = []
    for name, values in (("negative", with_negative_zeros), ("positive", with_positive_zeros)):
        model = sequential()
        set_kernel(model, "hidden", values)
        assert isinstance(by_layer(model_tensors(model), "hidden/kernel"), ClusteredTensor)
        save_wz(model, tmp_path / f"{name}.wz")
        row = by_layer({row.name: row for row in inspect_table(tmp_path / f"{name}.wz").rows}, "hidden/kernel")
        assert row.nonzero == np.count_nonzero(~mask)
        assert row.layout == "sparse"
        kernel_bytes.append(row.encoded_bytes)
        restored = keras.ops.convert_to_numpy(load_wz(tmp_path / f"{name}.wz").get_layer("hidden").kernel)
        np.testing.assert_array_equal(restored, with_positive_zeros)
        assert not np.signbit(restored[mask]).any()
    assert kernel_bytes[0] == kernel_bytes[1]


def test_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "model.wz"
    first = sequential()
    save_wz(first, path)
    before = path.read_bytes()
    second = conv_model()
    with pytest.raises(WeightzipError, match="exists"):
        save_wz(second, path)
    assert path.read_bytes() == before
    save_wz(second, path, overwrite=True)
    assert load_wz(path).count_params() == second.count_params()


def test_extra_metadata_is_kept(tmp_path):
    path = tmp_path / "model.wz"
    save_wz(sequential(), path, extra_metadata={"deep_compression": {"clusters": 32}})
    metadata = read_metadata(path)
    assert metadata["framework"] == "keras"
    assert metadata["deep_compression"] == {"clusters": 32}


def test_a_torch_file_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "torch.wz"
    write_wz(path, {"fc.weight": np.ones((3, 4), np.float32)}, {"framework": "torch"})
    with pytest.raises(WeightzipError, match="does not hold a Keras model.*torch"):
        load_wz(path)


def test_a_file_without_metadata_is_refused(tmp_path):
    path = tmp_path / "bare.wz"
    write_wz(path, {"w": np.ones(3, np.float32)})
    with pytest.raises(WeightzipError, match="does not hold a Keras model"):
        load_wz(path)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_a_corrupted_file_raises_wz_format_error(tmp_path, where):
    path = tmp_path / "model.wz"
    save_wz(conv_model(), path)
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(WzFormatError):
        load_wz(path)


def test_a_truncated_file_raises_wz_format_error(tmp_path):
    path = tmp_path / "model.wz"
    save_wz(sequential(), path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(WzFormatError):
        load_wz(path)


def test_a_file_for_another_architecture_is_refused(tmp_path):
    path = tmp_path / "model.wz"
    model = sequential()
    save_wz(model, path)
    tensors, metadata = read_wz(path)
    name = next(key for key in tensors if key.endswith("logits/bias"))
    del tensors[name]
    metadata["variables"].remove(name)
    forged = tmp_path / "forged.wz"
    write_wz(forged, tensors, metadata)
    with pytest.raises(WeightzipError, match="stored variables"):
        load_wz(forged)
