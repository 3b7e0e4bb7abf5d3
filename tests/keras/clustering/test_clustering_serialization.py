"""A clustered model saved as .keras loads back (with or without cluster_scope) and keeps training."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras_clustering_helpers import sample_input, skip_on_jax_unless, to_numpy

import weightzip.keras as wk

L = keras.layers
K = 4


def clustered_model(**options):
    inputs = keras.Input((6,))
    x = L.Dense(8, activation="relu")(inputs)
    x = L.BatchNormalization()(x)
    model = keras.Model(inputs, L.Dense(3)(x))
    return wk.cluster_weights(model, K, **options)


def compile_and_fit(model, x, y, epochs=1):
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(x, y, batch_size=16, epochs=epochs, verbose=0).history["loss"]


ROUNDTRIPS = {  # id: (options, load inside cluster_scope, also on JAX)
    "default-cluster_scope": ({}, True, False),
    "default-registered": ({}, False, True),
    "fixed_per_channel": ({"reassignment": "fixed", "cluster_per_channel": True}, False, False),
    "sparse_average": ({"preserve_sparsity": True, "cluster_gradient_aggregation": "average"}, True, True),
}


@pytest.mark.backend_matrix
@pytest.mark.parametrize("case", sorted(ROUNDTRIPS))
def test_save_load_roundtrip_then_keep_training(tmp_path, case):
    options, use_scope, on_jax = ROUNDTRIPS[case]
    skip_on_jax_unless(on_jax)
    x = sample_input((6,), batch=48)
    y = (x[:, 0] > 0).astype("int32")
    model = clustered_model(**options)
    compile_and_fit(model, x, y)
    path = tmp_path / "clustered.keras"
    model.save(path)
    if use_scope:
        with wk.cluster_scope():
            loaded = keras.models.load_model(path)
    else:
        loaded = keras.models.load_model(path)

    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
    for original, restored in zip(model.layers, loaded.layers):
        if isinstance(original, wk.ClusterWeights):
            assert restored.params == original.params
            for name, variable in original.cluster_centroids.items():
                np.testing.assert_array_equal(to_numpy(restored.cluster_centroids[name]), to_numpy(variable))
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)

    losses = compile_and_fit(loaded, x, y, epochs=3)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    stripped = wk.strip_clustering(loaded)
    for layer in stripped.layers:
        if isinstance(layer, L.Dense):
            kernel = to_numpy(layer.kernel)
            rows = kernel.T if options.get("cluster_per_channel") else kernel.reshape(1, -1)
            assert max(len(np.unique(row)) for row in rows) <= K


def test_config_roundtrip():
    wrapper = clustered_model(cluster_per_channel=True, seed=5).layers[1]
    config = wrapper.get_config()
    assert config["number_of_clusters"] == K and config["cluster_centroids_init"] == "linear"
    clone = wk.ClusterWeights.from_config(config)
    assert clone.params == wrapper.params and type(clone.layer) is type(wrapper.layer)


def test_loads_in_a_fresh_process_once_weightzip_keras_is_imported(tmp_path):
    x = sample_input((6,), batch=4)
    model = clustered_model()
    path = tmp_path / "clustered.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", to_numpy(model(x)))
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import weightzip.keras
        model = keras.models.load_model({str(path)!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), np.load({str(tmp_path / 'y.npy')!r}),
                                   rtol=1e-5, atol=1e-5)
        print("LOADED")
    """)
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "LOADED" in result.stdout, result.stderr[-3000:]


@pytest.mark.backend_matrix
def test_fixed_indices_saved_as_int32_by_earlier_versions_load_as_bytes(tmp_path, monkeypatch):
    """Checkpoints from before one-byte pulling indices (int32) load, compute the same outputs and keep training."""
    from weightzip.keras.clustering import _initial_clusters

    x = sample_input((6,), batch=48)
    y = (x[:, 0] > 0).astype("int32")
    with monkeypatch.context() as old_version:
        old_version.setattr(_initial_clusters, "pulling_index_dtype", lambda k: np.int32)
        model = clustered_model(reassignment="fixed")
    stored = [v for v in model.weights if v.path.endswith("_pulling_indices")]
    assert stored and all(v.dtype == "int32" for v in stored)
    expected = to_numpy(model(x))
    path = tmp_path / "int32_indices.keras"
    model.save(path)

    loaded = keras.models.load_model(path)
    restored = [v for v in loaded.weights if v.path.endswith("_pulling_indices")]
    assert [v.dtype for v in restored] == ["uint8"] * len(stored)
    for old, new in zip(stored, restored):
        np.testing.assert_array_equal(to_numpy(new), to_numpy(old))
    np.testing.assert_allclose(to_numpy(loaded(x)), expected, rtol=1e-5, atol=1e-5)
    losses = compile_and_fit(loaded, x, y, epochs=3)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
