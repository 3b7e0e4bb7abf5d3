"""Keras pruning front end: wrappers, schedules in training, strip, structured sparsity, saving, callbacks."""

import keras
import numpy as np
import pytest

from weightzip.core.pruning import ConstantSparsity, InvalidSparsityError, PolynomialDecay, is_n_m_sparse
from weightzip.keras.pruning.api import prune_low_magnitude, strip_pruning
from weightzip.keras.pruning.callbacks import PruningSummaries, UpdatePruningStep, layer_sparsities
from weightzip.keras.pruning.registry import UnsupportedLayerError
from weightzip.keras.pruning.wrapper import PruneLowMagnitude


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 16)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    return x, y


def mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(24, activation="relu", name="hidden"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(2, name="logits"),
    ])


def fit(model, data, epochs=2, callbacks=()):
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[UpdatePruningStep(), *callbacks])
    return model


def kernel(model, name):
    return model.get_layer(name).get_weights()[0]


def test_whole_model_pruning_reaches_target_and_strip_matches(data):
    base = mlp()
    before = [w.copy() for w in base.get_weights()]
    pruned = fit(prune_low_magnitude(base, pruning_schedule=PolynomialDecay(0.0, 0.75, 0, 6, frequency=2)), data)
    for name in ("hidden", "logits"):
        assert isinstance(pruned.get_layer(f"prune_low_magnitude_{name}"), PruneLowMagnitude)
    stripped = strip_pruning(pruned)
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in stripped.layers)
    for name in ("hidden", "logits"):
        zeros = np.count_nonzero(kernel(stripped, name) == 0)
        assert zeros == round(0.75 * kernel(stripped, name).size)
    x, _ = data
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    for original, now in zip(before, base.get_weights()):
        np.testing.assert_array_equal(original, now)  # the input model is untouched
    assert layer_sparsities(pruned) == {"hidden/kernel": 0.75, "logits/kernel": 0.75}


def test_pruned_weights_stay_zero_while_the_rest_trains(data):
    pruned = prune_low_magnitude(mlp(), pruning_schedule=ConstantSparsity(0.5, begin_step=0, end_step=0))
    fit(pruned, data, epochs=1)
    first = kernel(strip_pruning(pruned), "hidden")
    fit(pruned, data, epochs=2)
    later = kernel(strip_pruning(pruned), "hidden")
    np.testing.assert_array_equal(first == 0, later == 0)
    assert not np.allclose(first[first != 0], later[later != 0])


def test_selective_pruning_with_clone_function_on_functional_model(data):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, outputs)

    def only_dense(layer):
        if isinstance(layer, keras.layers.Dense):
            return prune_low_magnitude(layer, pruning_schedule=ConstantSparsity(0.6, 0))
        return layer

    pruned = keras.models.clone_model(model, clone_function=only_dense)
    images = np.random.default_rng(2).normal(size=(64, 8, 8, 1)).astype("float32")
    fit(pruned, (images, data[1][:64]), epochs=1)
    stripped = strip_pruning(pruned)
    assert np.count_nonzero(kernel(stripped, "logits") == 0) == round(0.6 * kernel(stripped, "logits").size)
    assert np.count_nonzero(kernel(stripped, "conv") == 0) == 0


def test_two_four_structured_sparsity_on_dense_and_conv(data):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((6, 6, 4)),
        keras.layers.Conv2D(8, 3, name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(2, name="logits"),
    ])
    pruned = prune_low_magnitude(model, sparsity_m_by_n=(2, 4))
    images = np.random.default_rng(4).normal(size=(64, 6, 6, 4)).astype("float32")
    fit(pruned, (images, data[1][:64]), epochs=1)
    stripped = strip_pruning(pruned)
    for name in ("conv", "logits"):
        weights = kernel(stripped, name)
        assert is_n_m_sparse(weights, 2, 4, axis=-2)
        assert np.count_nonzero(weights == 0) == weights.size // 2


def test_two_four_groups_along_each_layers_own_input_axis():
    """A transposed convolution's kernel is (kh, kw, out, in): its inputs lie on the last axis, not on -2 (the layer
    table's input axis); the attention projections' (in, heads, size) kernels contract axis 0, the output
    projection's (heads, size, out) groups run along size."""
    keras.utils.set_random_seed(5)
    images = keras.Input((4, 4, 8))
    tokens = keras.Input((3, 8))
    upsampled = keras.layers.Flatten()(keras.layers.Conv2DTranspose(3, 3, name="up")(images))
    attended = keras.layers.Flatten()(keras.layers.MultiHeadAttention(2, 4, name="attention")(tokens, tokens))
    model = keras.Model([images, tokens], keras.layers.Concatenate()([upsampled, attended]))
    pruned = prune_low_magnitude(model, sparsity_m_by_n=(2, 4))
    for layer in pruned.layers:
        if isinstance(layer, PruneLowMagnitude):
            layer.update_masks(0)
    stripped = strip_pruning(pruned)
    up = kernel(stripped, "up")
    assert up.shape == (3, 3, 3, 8) and is_n_m_sparse(up, 2, 4, axis=-1)
    for projection in ("_query_dense", "_key_dense", "_value_dense"):
        weights = keras.ops.convert_to_numpy(getattr(stripped.get_layer("attention"), projection).kernel)
        assert weights.shape == (8, 2, 4) and is_n_m_sparse(weights, 2, 4, axis=0)
        assert np.count_nonzero(weights == 0) == weights.size // 2
    output = keras.ops.convert_to_numpy(stripped.get_layer("attention")._output_dense.kernel)
    assert output.shape == (2, 4, 8) and is_n_m_sparse(output, 2, 4, axis=-2)


def test_two_four_rejects_an_input_axis_not_multiple_of_four():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    with pytest.raises(InvalidSparsityError, match="multiple of 4"):
        prune_low_magnitude(model, sparsity_m_by_n=(2, 4))


def test_block_pruning_zeroes_whole_blocks(data):
    pruned = prune_low_magnitude(mlp(), pruning_schedule=ConstantSparsity(0.5, 0), block_size=(1, 4))
    fit(pruned, data, epochs=1)
    weights = kernel(strip_pruning(pruned), "hidden")  # (16, 24): blocks of 4 along each row
    blocks = (weights == 0).reshape(16, 6, 4)
    assert np.all(blocks.all(axis=-1) | ~blocks.any(axis=-1))
    assert blocks.all(axis=-1).sum() == 48


def test_pruned_model_saves_and_loads(tmp_path, data):
    pruned = fit(prune_low_magnitude(mlp(), pruning_schedule=ConstantSparsity(0.5, 0)), data, epochs=1)
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("prune_low_magnitude_hidden")
    assert layer.pruning_schedule == ConstantSparsity(0.5, 0)
    np.testing.assert_allclose(loaded.predict(data[0], verbose=0), pruned.predict(data[0], verbose=0), atol=1e-6)
    np.testing.assert_array_equal(kernel(strip_pruning(loaded), "hidden"), kernel(strip_pruning(pruned), "hidden"))


def test_pruning_summaries_write_csv(tmp_path, data):
    summaries = PruningSummaries(tmp_path / "logs", tensorboard=False)
    pruned = prune_low_magnitude(mlp(), pruning_schedule=PolynomialDecay(0.1, 0.5, 0, 4, frequency=1))
    fit(pruned, data, epochs=2, callbacks=[summaries])
    lines = (tmp_path / "logs" / "pruning_summaries.csv").read_text().splitlines()
    assert lines[0] == "epoch,step,layer,weight,sparsity,target_sparsity"
    assert len(lines) == 1 + 2 * 2  # two epochs, two pruned kernels
    last = lines[-1].split(",")
    assert last[2] == "logits" and float(last[4]) == pytest.approx(0.5, abs=0.02)


def test_strip_without_training_warns_and_bad_inputs_are_named():
    pruned = prune_low_magnitude(mlp())
    with pytest.warns(UserWarning, match="UpdatePruningStep"):
        strip_pruning(pruned)
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    with pytest.raises(UnsupportedLayerError, match="'scale'.*cannot prune"):
        prune_low_magnitude(keras.Sequential([keras.Input((3,)), Scale(name="scale")]))
    with pytest.raises(UnsupportedLayerError, match="no weights to prune"):
        prune_low_magnitude(keras.layers.Flatten())
    with pytest.raises(ValueError, match="block_pooling_type"):
        prune_low_magnitude(keras.layers.Dense(2), block_pooling_type="MEDIAN")
    with pytest.raises(ValueError, match="already wrapped"):
        PruneLowMagnitude(prune_low_magnitude(keras.layers.Dense(2)))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        prune_low_magnitude(Subclassed())


def test_layer_list_wrapping_shares_the_layer():
    dense = keras.layers.Dense(3)
    wrapped = prune_low_magnitude([dense, keras.layers.Conv1D(2, 3)])
    assert wrapped[0].layer is dense and isinstance(wrapped[1], PruneLowMagnitude)


def test_recurrent_layer_kernels_are_pruned():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((5, 4)), keras.layers.LSTM(4, name="lstm"),
                              keras.layers.Dense(2, name="logits")])
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0))
    sequences = np.random.default_rng(6).normal(size=(32, 5, 4)).astype("float32")
    fit(pruned, (sequences, (sequences[:, 0, 0] > 0).astype("int32")), epochs=1)
    stripped = strip_pruning(pruned)
    cell = stripped.get_layer("lstm").cell
    for variable in (cell.kernel, cell.recurrent_kernel):
        values = keras.ops.convert_to_numpy(variable)
        assert np.count_nonzero(values == 0) == values.size // 2
    np.testing.assert_allclose(stripped.predict(sequences, verbose=0), pruned.predict(sequences, verbose=0), atol=1e-5)


def test_pruning_follows_the_schedule_with_several_steps_per_execution(data):
    pruned = prune_low_magnitude(mlp(), pruning_schedule=PolynomialDecay(0.0, 0.5, 0, 7, frequency=1))
    pruned.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   steps_per_execution=3)
    pruned.fit(*data, batch_size=32, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    assert layer_sparsities(pruned) == {"hidden/kernel": 0.5, "logits/kernel": 0.5}
    assert int(keras.ops.convert_to_numpy(pruned.get_layer("prune_low_magnitude_hidden").pruning_step)) == 7


def test_stripped_pruned_kernel_holds_positive_zeros():
    """Pruned weights become +0.0 (all-zero bits), not −0.0, so sparse storage sees them as zeros."""
    import keras as _keras
    import numpy as _np

    from weightzip.core.pruning import ConstantSparsity as _Constant
    from weightzip.keras import UpdatePruningStep as _Update
    from weightzip.keras import prune_low_magnitude as _prune
    from weightzip.keras import strip_pruning as _strip

    _keras.utils.set_random_seed(0)
    model = _keras.Sequential([_keras.Input((16,)), _keras.layers.Dense(32)])
    model.layers[0].kernel.assign(-_np.abs(model.layers[0].kernel.numpy()) - 0.01)  # every weight negative
    # Pruning after a few Adam steps: momentum then moves pruned weights off zero before each re-masking.
    pruned = _prune(model, pruning_schedule=_Constant(0.5, begin_step=4, frequency=1))
    pruned.compile("adam", "mse")
    rng = _np.random.default_rng(0)
    pruned.fit(rng.normal(size=(64, 16)).astype("float32"), rng.normal(size=(64, 32)).astype("float32"),
               epochs=2, batch_size=8, verbose=0, callbacks=[_Update()])
    kernel = _strip(pruned).layers[0].kernel.numpy()
    zeros = kernel == 0
    assert zeros.mean() == 0.5
    assert not _np.signbit(kernel[zeros]).any()
