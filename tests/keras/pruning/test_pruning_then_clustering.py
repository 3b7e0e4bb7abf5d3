"""Collaborative optimisation, stage 2: sparsity-preserving clustering of a pruned Keras model.

Checks the clustering front end's ``preserve_sparsity=True`` on the output of the pruning front end:
the zero pattern stays exactly the pruned one (zeros stay zero, nonzeros stay nonzero, as in the core's
``preserve_sparsity``) while the centroids train, with either reassignment mode, and every kernel keeps at
most k values (zero included).
"""

import keras
import numpy as np
import pytest

from weightzip.core.pruning import ConstantSparsity
from weightzip.keras import cluster_weights, strip_clustering
from weightzip.keras.pruning.api import prune_low_magnitude, strip_pruning
from weightzip.keras.pruning.callbacks import UpdatePruningStep

K = 4


@pytest.fixture(scope="module")
def pruned_and_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 12)).astype("float32")
    y = (x[:, 0] - x[:, 3] > 0).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(2, name="logits")])
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.6, 0))
    compile_fit(pruned, (x, y), callbacks=[UpdatePruningStep()])
    return strip_pruning(pruned), (x, y)


def compile_fit(model, data, callbacks=()):
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*data, batch_size=32, epochs=2, verbose=0, callbacks=list(callbacks))
    return model


@pytest.mark.parametrize("per_channel, reassignment", [(False, "every_step"), (True, "every_step"), (False, "fixed")])
def test_sparsity_preserving_clustering_keeps_pruned_zeros(pruned_and_data, per_channel, reassignment):
    pruned, data = pruned_and_data
    zeros = {name: pruned.get_layer(name).get_weights()[0] == 0 for name in ("hidden", "logits")}
    assert all(np.isclose(mask.mean(), 0.6, atol=0.01) for mask in zeros.values())
    clustered = cluster_weights(pruned, number_of_clusters=K, preserve_sparsity=True,
                                cluster_per_channel=per_channel, reassignment=reassignment)
    initial = {name: keras.ops.convert_to_numpy(next(iter(layer.cluster_centroids.values()))).copy()
               for name, layer in (("hidden", clustered.get_layer("cluster_hidden")),
                                   ("logits", clustered.get_layer("cluster_logits")))}
    compile_fit(clustered, data)
    for name in ("hidden", "logits"):
        wrapper = clustered.get_layer(f"cluster_{name}")
        during = keras.ops.convert_to_numpy(wrapper.clustered_weights()["kernel"])
        np.testing.assert_array_equal(during == 0, zeros[name])  # while training
        trained = keras.ops.convert_to_numpy(next(iter(wrapper.cluster_centroids.values())))
        assert not np.allclose(trained[trained != 0], initial[name][initial[name] != 0])  # centroids moved
    stripped = strip_clustering(clustered)
    for name in ("hidden", "logits"):
        kernel = stripped.get_layer(name).get_weights()[0]
        np.testing.assert_array_equal(kernel == 0, zeros[name])
        groups = kernel.T if per_channel else [kernel]
        assert max(np.unique(group).size for group in groups) <= K

