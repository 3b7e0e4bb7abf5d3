"""What cluster_weights accepts: layers, lists, Sequential and Functional models, TFMOT's selective
clone_model recipe, subclassed models, custom ClusterableLayers; and the errors it gives."""

import keras
import numpy as np
import pytest
from keras_clustering_helpers import sample_input, to_numpy

import weightzip.keras as wk
from weightzip.core import InvalidClusterCountError

L = keras.layers
K = 4


def unique_counts(model):
    return [len(np.unique(to_numpy(w))) for layer in model.layers for w in layer.weights if "kernel" in w.path]


@pytest.mark.backend_matrix
def test_selective_clustering_with_clone_model_as_in_tfmot_guide():
    base = keras.Sequential([keras.Input((6,)), L.Dense(8, name="first"), L.PReLU(name="prelu"),
                             L.Dense(3, name="last")])

    def apply_clustering_to_dense(layer):
        if isinstance(layer, L.Dense):
            return wk.cluster_weights(layer, number_of_clusters=K,
                                      cluster_centroids_init=wk.CentroidInitialization.LINEAR)
        return layer

    clustered = keras.models.clone_model(base, clone_function=apply_clustering_to_dense)
    assert [type(layer).__name__ for layer in clustered.layers] == ["ClusterWeights", "PReLU", "ClusterWeights"]
    x = sample_input((6,), batch=8)
    stripped = wk.strip_clustering(clustered)
    assert [type(layer).__name__ for layer in stripped.layers] == ["Dense", "PReLU", "Dense"]
    assert all(count <= K for count in unique_counts(stripped))
    np.testing.assert_allclose(to_numpy(stripped(x)), to_numpy(clustered(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.backend_matrix
def test_subclassed_model_is_clustered_in_place_and_trains():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.stem = L.Dense(8, activation="relu")
            self.blocks = [L.Dense(8, activation="relu"), L.Dense(8)]
            self.norm = L.BatchNormalization()
            self.head = L.Dense(2)

        def call(self, inputs):
            x = self.stem(inputs)
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))

    net = Net()
    x = sample_input((5,), batch=32)
    y = (x[:, 0] > 0).astype("int32")
    net(x)
    clustered = wk.cluster_weights(net, K)
    assert clustered is net
    assert isinstance(net.stem, wk.ClusterWeights) and all(isinstance(b, wk.ClusterWeights) for b in net.blocks)
    assert isinstance(net.norm, L.BatchNormalization) and isinstance(net.head, wk.ClusterWeights)
    assert len(net.trainable_weights) == 4 * 3 + 2  # kernel, bias, centroids per Dense; gamma, beta
    net.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = net.fit(x, y, epochs=4, verbose=0).history["loss"]
    assert history[-1] < history[0]
    before = to_numpy(net(x))
    wk.strip_clustering(net)
    assert isinstance(net.stem, L.Dense) and all(isinstance(b, L.Dense) for b in net.blocks)
    np.testing.assert_allclose(to_numpy(net(x)), before, rtol=1e-5, atol=1e-5)
    for layer in (net.stem, *net.blocks, net.head):
        assert len(np.unique(to_numpy(layer.kernel))) <= K


def test_unsupported_layer_with_weights_is_an_error_naming_it():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.PReLU(name="my_prelu")(L.Dense(4)(inputs)))
    with pytest.raises(wk.UnsupportedLayerError, match="my_prelu.*PReLU"):
        wk.cluster_weights(model, K)
    with pytest.raises(wk.UnsupportedLayerError, match="my_prelu"):
        wk.cluster_weights(model.get_layer("my_prelu"), K)


def test_custom_layer_with_own_weights_in_a_subclassed_model_is_an_error():
    class Scale(L.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

        def call(self, x):
            return x * self.scale

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)
            self.scale = Scale(name="my_scale")

        def call(self, x):
            return self.scale(self.dense(x))

    net = Net()
    net(sample_input((4,)))
    with pytest.raises(wk.UnsupportedLayerError, match="my_scale.*Scale.*scale"):
        wk.cluster_weights(net, K)


def test_weightless_and_normalisation_layers_pass_through_and_the_input_is_not_modified():
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, activation="relu")(inputs)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling2D()(x)
    x = L.Dropout(0.2)(x)
    x = L.Flatten()(x)
    x = L.LayerNormalization()(x)
    model = keras.Model(inputs, L.Dense(3)(x))
    before = [to_numpy(w) for w in model.weights]
    clustered = wk.cluster_weights(model, K)
    names = [type(layer).__name__ for layer in clustered.layers]
    assert names == ["InputLayer", "ClusterWeights", "BatchNormalization", "MaxPooling2D", "Dropout", "Flatten",
                     "LayerNormalization", "ClusterWeights"]
    assert not set(map(id, clustered.layers)) & set(map(id, model.layers))
    clustered.compile("adam", "mse")
    xs = sample_input((8, 8, 1), batch=8)
    clustered.fit(xs, np.zeros((8, 3), "float32"), epochs=1, verbose=0)
    for value, variable in zip(before, model.weights):
        np.testing.assert_array_equal(value, to_numpy(variable))
    assert wk.cluster_weights(L.Flatten(), K).__class__ is L.Flatten


def test_list_of_layers_and_an_unbuilt_layer_in_a_sequential():
    first, second = L.Dense(5), L.Dense(2)
    wrapped = wk.cluster_weights([first, second], K)
    assert all(isinstance(layer, wk.ClusterWeights) for layer in wrapped)
    assert wrapped[0].layer is first  # unbuilt layers are wrapped as they are, clustered when built
    model = keras.Sequential([keras.Input((7,)), *wrapped])
    assert all(layer.built for layer in wrapped)
    assert wrapped[0].cluster_centroids["kernel"].shape == (K,)
    stripped = wk.strip_clustering(model)
    assert all(count <= K for count in unique_counts(stripped))


def test_nested_models_are_clustered_recursively():
    inner = keras.Sequential([keras.Input((6,)), L.Dense(6, name="inner_dense")], name="inner")
    inputs = keras.Input((6,))
    outer = keras.Model(inputs, L.Dense(2)(inner(inputs)))
    clustered = wk.cluster_weights(outer, K)
    nested = clustered.layers[1]
    assert isinstance(nested, keras.Sequential) and isinstance(nested.layers[0], wk.ClusterWeights)
    stripped = wk.strip_clustering(clustered)
    assert isinstance(stripped.layers[1].layers[0], L.Dense)
    x = sample_input((6,))
    np.testing.assert_allclose(to_numpy(stripped(x)), to_numpy(clustered(x)), rtol=1e-5, atol=1e-5)


class _ClusterableDense(L.Dense, wk.ClusterableLayer):
    def get_clusterable_weights(self):
        return [("kernel", self.kernel)]


class _DuckClusterable(L.Layer):
    """Not a subclass of ClusterableLayer: the protocol is structural."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 3), initializer="glorot_uniform", name="w")
        self.b = self.add_weight(shape=(3,), initializer="zeros", name="b")

    def call(self, x):
        return keras.ops.matmul(x, self.w) + self.b

    def get_clusterable_weights(self):
        return [("w", self.w)]

    def get_clusterable_algorithm(self, weight_name):
        return wk.ClusteringAlgorithm(channel_axis=0)


@pytest.mark.parametrize("layer_class", [_ClusterableDense, _DuckClusterable])
def test_custom_clusterable_layers(layer_class):
    layer = layer_class(3) if layer_class is _ClusterableDense else layer_class()
    assert isinstance(layer, wk.ClusterableLayer)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, layer(inputs))
    clustered = wk.cluster_weights(model, 2, cluster_per_channel=True)
    wrapper = clustered.layers[1]
    (target,) = wrapper.clustered_targets
    axis = 0 if layer_class is _DuckClusterable else -1
    assert target.channel_axis == axis
    values = to_numpy(wrapper.clustered_weights()[target.name])
    assert max(len(np.unique(channel)) for channel in np.moveaxis(values, axis, 0)) <= 2


def test_argument_errors():
    model = keras.Sequential([keras.Input((3,)), L.Dense(2)])
    with pytest.raises(InvalidClusterCountError):
        wk.cluster_weights(model, 0)
    with pytest.raises(InvalidClusterCountError):
        wk.cluster_weights(model, 2.5)
    with pytest.raises(InvalidClusterCountError, match="preserve_sparsity"):
        wk.cluster_weights(model, 1, preserve_sparsity=True)
    with pytest.raises(ValueError, match="unknown centroid initialization"):
        wk.cluster_weights(model, 4, cluster_centroids_init="nearest")
    with pytest.raises(ValueError, match="GradientAggregation"):
        wk.cluster_weights(model, 4, cluster_gradient_aggregation="median")
    with pytest.raises(TypeError, match="name"):
        wk.cluster_weights(model, 4, name="x")
    with pytest.raises(TypeError, match="keras Layer"):
        wk.cluster_weights(np.zeros(3), 4)


@pytest.mark.parametrize("spelling", [wk.CentroidInitialization.KMEANS_PLUS_PLUS, "KMEANS_PLUS_PLUS",
                                      "CentroidInitialization.KMEANS_PLUS_PLUS", "kmeans++"])
def test_tfmot_spellings_of_the_options(spelling):
    model = keras.Sequential([keras.Input((9,)), L.Dense(9)])
    clustered = wk.cluster_weights(model, K, cluster_centroids_init=spelling, seed=3,
                                   cluster_gradient_aggregation="GradientAggregation.AVG")
    wrapper = clustered.layers[0]
    assert wrapper.params.cluster_centroids_init is wk.CentroidInitialization.KMEANS_PLUS_PLUS
    assert wrapper.params.cluster_gradient_aggregation is wk.GradientAggregation.AVG
