"""Every supported layer type clusters, runs, and strips to at most k values per kernel (or per channel)."""

import keras
import numpy as np
import pytest
from keras_clustering_helpers import (
    JAX_CASES,
    LAYER_CASES,
    model_of,
    per_channel_unique,
    sample_input,
    skip_on_jax_unless,
    to_numpy,
)

import weightzip.keras as wk
from weightzip.core import ClusterConfig, assign_to_centroids, cluster_array

pytestmark = pytest.mark.backend_matrix

K = 4


def stripped_values(wrapper, stripped_layer):
    """{weight name: (stripped value, channel axis)} for each weight the wrapper clustered."""
    positions = [id(variable) for variable in wrapper.layer.weights]
    values = {}
    for target in wrapper.clustered_targets:
        position = positions.index(id(target.variable))
        values[target.name] = (to_numpy(stripped_layer.weights[position]), target.channel_axis)
    return values


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_type_clusters_and_strips_to_k_values(case, per_channel):
    skip_on_jax_unless(not per_channel or case in JAX_CASES)
    factory, shape, dtype = LAYER_CASES[case]
    model = model_of(factory(), shape, dtype)
    x = sample_input(shape, dtype)
    original = [to_numpy(w) for w in model.weights]

    clustered = wk.cluster_weights(model, K, cluster_per_channel=per_channel)
    wrapper = clustered.layers[1]
    assert isinstance(wrapper, wk.ClusterWeights)
    assert wrapper.clustered_targets, "no weight was clustered"
    assert all("bias" not in target.name for target in wrapper.clustered_targets)

    stripped = wk.strip_clustering(clustered)
    plain = stripped.layers[1]
    assert type(plain) is type(model.layers[1])
    assert not any(isinstance(layer, wk.ClusterWeights) for layer in stripped.layers)
    np.testing.assert_allclose(to_numpy(stripped(x)), to_numpy(clustered(x)), rtol=1e-5, atol=1e-5)

    for name, (values, axis) in stripped_values(wrapper, plain).items():
        centroids = wrapper.cluster_centroids[name]
        if per_channel:
            assert tuple(centroids.shape) == (values.shape[axis], K), name
            counts = per_channel_unique(values, axis)
            assert max(counts) <= K, (name, counts)
            assert len(np.unique(values)) > K, f"{name}: channels should have their own codebooks"
        else:
            assert tuple(centroids.shape) == (K,), name
            assert 2 <= len(np.unique(values)) <= K, name

    # The input model is untouched and biases are not clustered.
    for before, after in zip(original, model.weights):
        np.testing.assert_array_equal(before, to_numpy(after))
    for source, target in zip(model.layers[1].weights, plain.weights):
        if "bias" in source.path:
            np.testing.assert_array_equal(to_numpy(source), to_numpy(target))


ATTENTION = {
    "MultiHeadAttention": lambda: keras.layers.MultiHeadAttention(num_heads=2, key_dim=4),
    "GroupQueryAttention": lambda: keras.layers.GroupQueryAttention(head_dim=4, num_query_heads=4,
                                                                    num_key_value_heads=2),
}


@pytest.mark.parametrize("kind", sorted(ATTENTION))
def test_attention_clusters_its_four_projection_kernels(kind):
    skip_on_jax_unless(kind == "MultiHeadAttention")
    inputs = keras.Input((5, 8))
    outputs = ATTENTION[kind]()(inputs, inputs)
    model = keras.Model(inputs, outputs)
    x = sample_input((5, 8))
    clustered = wk.cluster_weights(model, K)
    wrapper = clustered.layers[1]
    assert sorted(t.name for t in wrapper.clustered_targets) == [
        "key_dense.kernel", "output_dense.kernel", "query_dense.kernel", "value_dense.kernel"]
    stripped = wk.strip_clustering(clustered)
    np.testing.assert_allclose(to_numpy(stripped(x)), to_numpy(clustered(x)), rtol=1e-5, atol=1e-5)
    for name, (values, _) in stripped_values(wrapper, stripped.layers[1]).items():
        assert len(np.unique(values)) <= K, name


@pytest.mark.parametrize("per_channel", [False, True])
def test_initial_clusters_are_the_cores(per_channel):
    """The wrapper's codebook and assignment are weightzip.core's, not a re-implementation."""
    model = model_of(keras.layers.Dense(9), (13,))
    kernel = to_numpy(model.layers[1].kernel)
    axis = -1 if per_channel else None
    expected = cluster_array(kernel, ClusterConfig(K, axis=axis))

    fixed = wk.cluster_weights(model, K, cluster_per_channel=per_channel, reassignment="fixed").layers[1]
    codebook = to_numpy(fixed.cluster_centroids["kernel"])
    np.testing.assert_allclose(codebook.reshape(expected.codebook.shape), expected.codebook, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(fixed.pulling_indices["kernel"]), expected.indices)

    every_step = wk.cluster_weights(model, K, cluster_per_channel=per_channel).layers[1]
    np.testing.assert_allclose(to_numpy(every_step.clustered_weights()["kernel"]), expected.decode(), rtol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_preserve_sparsity_keeps_zeros_and_a_zero_centroid(per_channel):
    model = model_of(keras.layers.Dense(8), (10,))
    kernel = to_numpy(model.layers[1].kernel)
    kernel[np.abs(kernel) < np.median(np.abs(kernel))] = 0.0
    model.layers[1].kernel.assign(kernel)

    wrapper = wk.cluster_weights(model, K, cluster_per_channel=per_channel, preserve_sparsity=True).layers[1]
    clustered = to_numpy(wrapper.clustered_weights()["kernel"])
    np.testing.assert_array_equal(clustered == 0, kernel == 0)
    codebook = to_numpy(wrapper.cluster_centroids["kernel"]).reshape(-1, K)
    assert all((row == 0).any() for row in codebook)
    rows = clustered.T if per_channel else clustered.reshape(1, -1)
    assert max(len(np.unique(row)) for row in rows) <= K


def test_more_clusters_than_weights_represents_them_exactly():
    model = model_of(keras.layers.Dense(2), (2,))  # a 2 x 2 kernel: 4 values, k = 16
    kernel = to_numpy(model.layers[1].kernel)
    wrapper = wk.cluster_weights(model, 16).layers[1]
    np.testing.assert_array_equal(to_numpy(wrapper.clustered_weights()["kernel"]), kernel)


def test_ties_go_to_the_lower_centroid_as_in_the_core():
    model = model_of(keras.layers.Dense(4), (3,))
    kernel = np.array([[-1.0, 0.0, 1.0, 0.5], [0.25, -0.5, 0.75, -0.25], [1.0, -1.0, 0.0, 0.5]], dtype="float32")
    model.layers[1].kernel.assign(kernel)
    wrapper = wk.cluster_weights(model, 5).layers[1]  # LINEAR: centroids -1, -0.5, 0, 0.5, 1; midpoints = ties
    codebook = to_numpy(wrapper.cluster_centroids["kernel"])
    expected = codebook[assign_to_centroids(kernel, codebook)]
    np.testing.assert_array_equal(to_numpy(wrapper.clustered_weights()["kernel"]), expected)


# ---------------------------------------------------- the wrapped layer's call without a second Layer.__call__

class _Recording(keras.layers.Dense):
    """A Dense layer that records the training flag and mask its ``call`` receives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def call(self, inputs, training=None, mask=None):
        self.seen.append((training, None if mask is None else to_numpy(mask).tolist()))
        return super().call(inputs)


def _run_both_ways(monkeypatch, build, run):
    """``run(build())`` with the wrapped layers called directly where :mod:`weightzip.keras._direct_call`
    takes them, then with every call through ``Layer.__call__`` (as before the direct path): both results,
    and how many calls the direct path took."""
    from weightzip.keras import _direct_call, _substitution

    taken = []

    def counting(*args):
        outputs = _direct_call.direct_call(*args)
        taken.append(outputs is not _direct_call.DECLINED)
        return outputs

    monkeypatch.setattr(_substitution, "direct_call", counting)
    keras.utils.set_random_seed(3)
    direct = run(build())
    monkeypatch.setattr(_substitution, "direct_call", lambda *args: _direct_call.DECLINED)
    keras.utils.set_random_seed(3)
    nested = run(build())
    return direct, nested, sum(taken)


def _recorded_model(layer_options=None, masked=False):
    inputs = keras.Input((6,), dtype="int32" if masked else "float32")
    x = keras.layers.Embedding(5, 4, mask_zero=True)(inputs) if masked else inputs
    layer = _Recording(3, **(layer_options or {}))
    outputs = wk.cluster_weights(layer, 4)(x)
    return keras.Model(inputs, outputs), layer


def test_direct_call_of_the_wrapped_layer_changes_nothing(monkeypatch):
    """Outputs, gradients, the training flag (given, inherited, default) and the output mask are those of
    the nested Layer.__call__; on PyTorch the direct path serves these calls."""
    skip_on_jax_unless(False)
    x = np.random.default_rng(0).normal(size=(2, 6)).astype("float32")

    def run(built):
        model, layer = built
        outputs = [to_numpy(model(x, training=flag)) for flag in (True, False, None)]
        wrapper = model.layers[-1]
        outputs.append(to_numpy(wrapper(keras.ops.convert_to_tensor(x), training=True)))
        masks = keras.ops.convert_to_tensor(x)
        return outputs, layer.seen, getattr(wrapper(masks), "_keras_mask", None)

    direct, nested, taken = _run_both_ways(monkeypatch, _recorded_model, run)
    for got, expected in zip(direct[0], nested[0]):
        np.testing.assert_array_equal(got, expected)
    assert direct[1] == nested[1] and [flag for flag, _ in nested[1]] == [True, False, None, True, None]
    assert direct[2] is None and nested[2] is None
    assert taken == (5 if keras.backend.backend() == "torch" else 0)


@pytest.mark.parametrize("case", ["mask", "mixed_precision", "activity_regularizer", "forward_hook"])
def test_direct_call_declines_what_layer_call_would_change(monkeypatch, case):
    """An input mask, an autocast scope of the layer's own, an activity regulariser, a torch module hook: the
    wrapped layer goes through Layer.__call__ and the results equal the nested call's."""
    skip_on_jax_unless(False)
    hooked = []

    def build():
        if case == "mask":
            return _recorded_model(masked=True)
        if case == "mixed_precision":
            return _recorded_model({"dtype": "mixed_bfloat16"})
        if case == "activity_regularizer":
            return _recorded_model({"activity_regularizer": keras.regularizers.L2(0.5)})
        model, layer = _recorded_model()
        if keras.backend.backend() == "torch":
            layer.register_forward_hook(lambda module, args, output: hooked.append(module.name))
        return model, layer

    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(2, 6)).astype("int32") if case == "mask" else rng.normal(size=(2, 6)).astype("float32")

    def run(built):
        model, layer = built
        outputs = model(x, training=True)
        mask = getattr(outputs, "_keras_mask", None)
        return (to_numpy(outputs), str(keras.backend.standardize_dtype(outputs.dtype)), layer.seen,
                None if mask is None else to_numpy(mask), [float(to_numpy(loss)) for loss in model.losses], len(hooked))

    direct, nested, taken = _run_both_ways(monkeypatch, build, run)
    np.testing.assert_array_equal(direct[0], nested[0])
    assert direct[1:4] == nested[1:4] if case != "mask" else direct[1:3] == nested[1:3]
    if case == "mask":
        np.testing.assert_array_equal(direct[3], nested[3])
        assert nested[2][0][1] is not None  # the layer was handed the Embedding's mask
    assert direct[4] == nested[4]
    assert taken == 0
    if case == "mixed_precision":
        assert direct[1] == "bfloat16"
    if case == "activity_regularizer":
        assert len(nested[4]) == 1 and nested[4][0] > 0
    if case == "forward_hook" and keras.backend.backend() == "torch":
        assert (direct[5], nested[5]) == (1, 2)  # the hook ran once in each run (the count is cumulative)
