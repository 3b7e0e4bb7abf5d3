"""Pruning and PCQAT train on the PyTorch and JAX Keras backends (one subprocess per backend: the backend is
fixed when keras is first imported)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np, keras
    keras.utils.set_random_seed(0)
    from weightzip.core import ClusterConfig, cluster_array
    from weightzip.core.pruning import ConstantSparsity
    from weightzip.keras.pruning.api import prune_low_magnitude, strip_pruning
    from weightzip.keras.pruning.callbacks import UpdatePruningStep
    from weightzip.keras.quantization.api import quantize_model, strip_quantization

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def mlp():
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(2, name="b")])

    # pruning: masks recomputed from the callback while training, zeros exact after strip
    pruned = prune_low_magnitude(mlp(), pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("adam", loss)
    pruned.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    stripped = strip_pruning(pruned)
    assert (stripped.get_layer("a").get_weights()[0] == 0).sum() == 32
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)

    # PCQAT: centroids train, zeros stay zero, <= 4 values per channel. (A trained centroid may come to within half
    # an int8 step of zero and be stored as 0: that keeps the sparsity, so only zeros staying zero is asserted.)
    model = mlp()
    for layer in model.layers:
        w = layer.get_weights()
        k = np.where(np.abs(w[0]) < np.median(np.abs(w[0])), 0, w[0]).astype("float32")
        w[0] = cluster_array(k, ClusterConfig(4, preserve_sparsity=True)).decode()
        layer.set_weights(w)
    before = model.get_layer("a").get_weights()[0]
    q = quantize_model(model, preserve="sparse_clusters")
    q.compile(keras.optimizers.Adam(1e-2), loss)
    q.fit(x, y, batch_size=16, epochs=2, verbose=0)
    after = strip_quantization(q).get_layer("a").get_weights()[0]
    assert np.all(after[before == 0] == 0)
    assert (after != 0).sum() >= 0.9 * (before != 0).sum()
    assert max(np.unique(c).size for c in after.T) <= 4
    scale = np.abs(before).max(axis=0) / 127
    assert not np.allclose(after, np.round(before / scale) * scale)  # the centroids trained
    print("OK", keras.backend.backend())
""")


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_pruning_and_pcqat_train_on_backend(backend):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and f"OK {backend}" in result.stdout, result.stderr[-3000:]
