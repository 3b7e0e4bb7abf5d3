"""The Keras front end speaks the shared vocabulary: ClusteringSpec / PruningSpec names (TFMOT's kept as aliases),
LayerRules behind every per-layer option, save_wz / load_wz, and its mutation rule (calls return a new model)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses

import keras
import numpy as np
import pytest

import weightzip.keras as wk
from weightzip.core.errors import ArgumentTypeError, WeightzipError
from weightzip.core.pruning import ConstantSparsity
from weightzip.keras import DeepCompressionConfig, compress_post_training


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(8, name="fc1"),
                             keras.layers.Dense(3, name="fc2")])


def wrapper_params(model):
    return {layer.layer.name: layer.params for layer in model.layers if isinstance(layer, wk.ClusterWeights)}


def test_spec_names_tfmot_names_and_a_spec_cluster_alike():
    spec = wk.ClusteringSpec(5, "density", per_channel=True, gradient_aggregation="mean", seed=1)
    tfmot = wk.cluster_weights(small_model(), 5, cluster_centroids_init="density", cluster_per_channel=True,
                               cluster_gradient_aggregation="AVG", seed=1)
    shared = wk.cluster_weights(small_model(), 5, init="density", per_channel=True, gradient_aggregation="mean",
                                seed=1)
    by_spec = wk.cluster_weights(small_model(), spec=spec)
    assert wrapper_params(tfmot) == wrapper_params(shared) == wrapper_params(by_spec)
    params = wrapper_params(by_spec)["fc1"]
    assert params.spec == dataclasses.replace(spec, reassignment="every_step")   # the Keras default, stated
    assert (params.init, params.per_channel, params.gradient_aggregation) == (spec.init, True, spec.gradient_aggregation)
    for a, b in zip(tfmot.get_weights(), by_spec.get_weights()):
        np.testing.assert_array_equal(a, b)
    overridden = wk.cluster_weights(small_model(), spec=spec, number_of_clusters=3, reassignment="fixed")
    assert {p.number_of_clusters for p in wrapper_params(overridden).values()} == {3}
    assert wk.ClusteringParams.from_spec(params.spec) == params


def test_one_spelling_per_option_and_specs_keras_cannot_honour_are_refused():
    with pytest.raises(ArgumentTypeError, match="both cluster_centroids_init= and init="):
        wk.cluster_weights(small_model(), 4, cluster_centroids_init="linear", init="density")
    with pytest.raises(WeightzipError, match="group_size=2 is not available on the Keras front end"):
        wk.cluster_weights(small_model(), spec=wk.ClusteringSpec(4, per_channel=True, group_size=2))
    with pytest.raises(TypeError, match="number_of_clusters"):
        wk.cluster_weights(small_model())
    with pytest.raises(WeightzipError, match="per_channel pruning is not available on the Keras front end"):
        wk.prune_low_magnitude(small_model(), spec=wk.PruningSpec(per_channel=True))


def test_pruning_spec_on_keras_equals_the_tfmot_arguments():
    spec = wk.PruningSpec(ConstantSparsity(0.75, 0), block_size=(1, 2), block_pooling_type="max")
    by_spec = wk.prune_low_magnitude(small_model(), spec=spec)
    tfmot = wk.prune_low_magnitude(small_model(), ConstantSparsity(0.75, 0), block_size=(1, 2),
                                   block_pooling_type="MAX")
    fields = ("pruning_schedule", "block_size", "block_pooling_type", "sparsity_m_by_n")
    settings = [[layer.get_config()[f] for f in fields] for model in (by_spec, tfmot) for layer in model.layers
                if isinstance(layer, wk.PruneLowMagnitude)]
    assert len(settings) == 6 and all(row == settings[0] for row in settings)
    assert settings[0][1:] == [[1, 2], "MAX", None]


def test_deep_compression_fields_build_layer_rules_that_resolve_each_layer():
    config = DeepCompressionConfig(sparsity=0.9, conv_sparsity=0.5, layer_sparsity={"fc2": 0.25}, clusters=16,
                                   conv_clusters=32, layer_clusters={"fc1": 8})
    assert config.sparsity_rules == wk.LayerRules(0.9, ((wk.CONVOLUTION, 0.5),), (("fc2", 0.25),))
    assert config.cluster_rules == wk.LayerRules.tiers(16, conv=32, layers={"fc1": 8})
    model = small_model()
    assert [config.sparsity_of(model.get_layer(n)) for n in ("conv", "fc1", "fc2")] == [0.5, 0.9, 0.25]
    assert [config.clusters_of(model.get_layer(n)) for n in ("conv", "fc1", "fc2")] == [32, 8, 16]


def test_deep_compression_takes_the_rules_object_itself():
    import json

    clusters = wk.LayerRules(16).set_type(wk.CONVOLUTION, 32).set_name("fc1", 8)
    sparsity = wk.LayerRules(0.9).set_type(keras.layers.Conv2D, 0.5)
    config = DeepCompressionConfig(sparsity=sparsity, clusters=clusters, layer_sparsity={"fc2": 0.25})
    assert config.cluster_rules == clusters and config.conv_clusters is None  # the rules decide convolutions
    assert config.sparsity_rules == sparsity.set_name("fc2", 0.25)
    model = small_model()
    assert [config.sparsity_of(model.get_layer(n)) for n in ("conv", "fc1", "fc2")] == [0.5, 0.9, 0.25]
    assert [config.clusters_of(model.get_layer(n)) for n in ("conv", "fc1", "fc2")] == [32, 8, 16]
    stored = json.loads(json.dumps(config.to_json()))
    assert stored["sparsity"] == {"default": 0.9, "types": [["Conv2D", 0.5]], "names": {}}
    assert DeepCompressionConfig().conv_sparsity == 0.6 and DeepCompressionConfig().conv_clusters == 64
    with pytest.raises(WeightzipError, match=r"clusters\['fc1'\] must be an integer in \[2, 65536\]"):
        DeepCompressionConfig(clusters=wk.LayerRules(16).set_name("fc1", 1))


def test_post_training_takes_rules_for_clusters_and_sparsity():
    model = small_model()
    rules = wk.LayerRules(8).set_type(wk.CONVOLUTION, 4).set_name("fc2", 2)
    compressed, report = compress_post_training(model, clusters=rules,
                                                sparsity=wk.LayerRules(0.0).set_type(keras.layers.Dense, 0.5))
    kernels = {layer.name: keras.ops.convert_to_numpy(layer.kernel) for layer in compressed.layers if layer.weights}
    assert [len(np.unique(kernels[n])) for n in ("conv", "fc1", "fc2")] == [4, 8, 2]
    assert float(np.mean(kernels["fc1"] == 0)) == pytest.approx(0.5, abs=0.02)
    assert not np.any(kernels["conv"] == 0)
    assert "k=8 (convolution 4, 'fc2' 2)" in report.mode
    with pytest.raises(WeightzipError, match=r"names layers \['fc9'\]"):
        compress_post_training(model, clusters=wk.LayerRules(8).set_name("fc9", 2))
    tiers, _ = compress_post_training(model, clusters=8, conv_clusters=4)
    by_rules, _ = compress_post_training(model, clusters=wk.LayerRules(8).set_type(wk.CONVOLUTION, 4))
    for a, b in zip(tiers.get_weights(), by_rules.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_keras_calls_return_a_new_model_and_leave_the_input_unchanged(tmp_path):
    model = small_model()
    before = [w.copy() for w in model.get_weights()]
    layers = list(model.layers)
    for result in (wk.cluster_weights(model, 4), wk.prune_low_magnitude(model), wk.quantize_model(model)):
        assert result is not model and list(model.layers) == layers
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    stripped = wk.strip_clustering(wk.cluster_weights(model, 4))
    size = wk.save_wz(stripped, tmp_path / "m.wz")
    assert size == (tmp_path / "m.wz").stat().st_size
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(wk.load_wz(tmp_path / "m.wz").predict(x, verbose=0), stripped.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_inplace_states_the_mutation_a_caller_expects_and_refuses_the_other():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(3)

        def call(self, x):
            return self.fc(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 4), "float32"))
    with pytest.raises(WeightzipError, match="can only be clustered in place.*inplace=True"):
        wk.cluster_weights(subclassed, 4, inplace=False)
    assert wk.cluster_weights(subclassed, 4, inplace=True) is subclassed and isinstance(subclassed.fc,
                                                                                           wk.ClusterWeights)
    with pytest.raises(WeightzipError, match="clustered as a copy, never in place"):
        wk.cluster_weights(small_model(), 4, inplace=True)
    assert wk.cluster_weights(small_model(), 4, inplace=False) is not None

    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    shared = wk.prune_low_magnitude(dense, ConstantSparsity(0.5, 0))
    copied = wk.prune_low_magnitude(dense, ConstantSparsity(0.5, 0), inplace=False)
    assert shared.layer is dense and copied.layer is not dense
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(copied.layer.kernel), keras.ops.convert_to_numpy(dense.kernel))
    with pytest.raises(WeightzipError, match="pruned as a clone, never in place"):
        wk.prune_low_magnitude(small_model(), inplace=True)


def test_post_training_spec_is_the_keywords_in_one_object():
    model = small_model()
    rules = wk.LayerRules(8).set_type(wk.CONVOLUTION, 4)
    spec = wk.PostTrainingSpec(clusters=rules, sparsity=0.25, granularity="channel")
    by_spec, spec_report = compress_post_training(model, spec=spec)
    by_keywords, report = compress_post_training(model, clusters=8, conv_clusters=4, sparsity=0.25, per_channel=True)
    for a, b in zip(by_spec.get_weights(), by_keywords.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert spec_report.mode == report.mode
    overridden, _ = compress_post_training(model, spec=spec, clusters=2)  # a keyword given replaces the spec's field
    kernel = keras.ops.convert_to_numpy(overridden.get_layer("fc1").kernel)
    assert max(len(np.unique(column)) for column in kernel.T) == 2  # per output channel, as the spec says
    assert float(np.mean(kernel == 0)) == pytest.approx(0.25, abs=0.02)
