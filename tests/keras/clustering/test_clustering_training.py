"""Fine-tuning a clustered model with model.fit: the loss falls, kernels keep k values, and each
reassignment policy and sparsity preservation behave as documented."""

import dataclasses
import weakref

import keras
import numpy as np
import pytest
from keras_clustering_helpers import skip_on_jax_unless, to_numpy

import weightzip.keras as wk
from weightzip.core import assign_to_centroids

pytestmark = pytest.mark.backend_matrix

K = 4


def problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 12)).astype("float32")
    teacher = rng.normal(size=(12, 3)).astype("float32")
    y = np.argmax(x @ teacher, axis=1).astype("int32")
    return x, y


@pytest.fixture(scope="module")
def baseline():
    """(x, y, a trained MLP): cluster_weights never modifies its input, so tests share it."""
    x, y = problem()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=5, verbose=0)
    return x, y, model


def compiled(model, learning_rate=1e-2):
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def kernels(model):
    return [to_numpy(layer.kernel) for layer in model.layers if hasattr(layer, "kernel")]


def test_training_a_clustered_model_lowers_the_loss_and_keeps_k_values(baseline):
    x, y, model = baseline
    clustered = compiled(wk.cluster_weights(model, K))
    before = clustered.evaluate(x, y, verbose=0)
    centroids_before = [to_numpy(layer.cluster_centroids["kernel"]) for layer in clustered.layers]
    clustered.fit(x, y, batch_size=32, epochs=4, verbose=0)
    after = clustered.evaluate(x, y, verbose=0)
    assert after < 0.9 * before, (before, after)
    centroids_after = [to_numpy(layer.cluster_centroids["kernel"]) for layer in clustered.layers]
    assert all(not np.allclose(b, a) for b, a in zip(centroids_before, centroids_after)), "centroids did not train"

    stripped = wk.strip_clustering(clustered)
    assert all(len(np.unique(kernel)) <= K for kernel in kernels(stripped))
    np.testing.assert_allclose(stripped.predict(x, verbose=0), clustered.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_every_step_reassignment_trains_the_original_weights(baseline):
    skip_on_jax_unless(False)
    x, y, model = baseline
    clustered = compiled(wk.cluster_weights(model, K))
    originals = [to_numpy(layer.layer.kernel) for layer in clustered.layers]
    clustered.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert all(not np.allclose(o, to_numpy(layer.layer.kernel)) for o, layer in zip(originals, clustered.layers))


def test_fixed_reassignment_trains_only_the_centroids(baseline):
    skip_on_jax_unless(False)
    x, y, model = baseline
    clustered = compiled(wk.cluster_weights(model, K, reassignment="fixed"))
    indices = [to_numpy(layer.pulling_indices["kernel"]) for layer in clustered.layers]
    originals = [to_numpy(layer.layer.kernel) for layer in clustered.layers]
    before = clustered.evaluate(x, y, verbose=0)
    clustered.fit(x, y, batch_size=32, epochs=6, verbose=0)
    assert clustered.evaluate(x, y, verbose=0) < before
    for layer, idx, original in zip(clustered.layers, indices, originals):
        np.testing.assert_array_equal(to_numpy(layer.pulling_indices["kernel"]), idx)
        np.testing.assert_array_equal(to_numpy(layer.layer.kernel), original)
        centroids = to_numpy(layer.cluster_centroids["kernel"])
        np.testing.assert_array_equal(to_numpy(layer.clustered_weights()["kernel"]), centroids[idx])


def fresh_search(original, codebook, per_channel):
    """The core's nearest-centroid index of each weight of `original` (a Dense kernel), and its centroid."""
    if per_channel:
        indices = np.stack([assign_to_centroids(column, row) for column, row in zip(original.T, codebook)], axis=1)
        return indices, np.take_along_axis(codebook.T, indices.astype(np.intp), axis=0)
    indices = assign_to_centroids(original, codebook)
    return indices, codebook[indices]


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_every_step_kernel_is_a_fresh_nearest_centroid_search_after_each_step(per_channel):
    """TFMOT's semantics on each backend's compiled step (XLA on TensorFlow and JAX, numba kernels on
    PyTorch): after every training step, the kernel the compiled forward pass uses (read back by
    predicting an identity batch through a bias-free Dense) is the current centroids at a fresh
    nearest-centroid search of the current original weights, although some weights changed cluster."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(64, 12)).astype("float32"), rng.normal(size=(64, 16)).astype("float32")
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, use_bias=False)])
    clustered = wk.cluster_weights(model, 6, cluster_per_channel=per_channel)
    clustered.compile(keras.optimizers.SGD(0.3), keras.losses.MeanSquaredError())
    wrapper, identity = clustered.layers[0], np.eye(12, dtype="float32")
    first_assignment, moved = None, 0
    for step in range(6):
        clustered.train_on_batch(x[step * 8:(step + 1) * 8], y[step * 8:(step + 1) * 8])
        seen = to_numpy(clustered.predict_on_batch(identity))
        original, codebook = to_numpy(wrapper.layer.kernel), to_numpy(wrapper.cluster_centroids["kernel"])
        assignment, expected = fresh_search(original, codebook, per_channel)
        np.testing.assert_allclose(seen, expected, rtol=1e-6, atol=1e-7, err_msg=f"step {step}")
        if first_assignment is None:
            first_assignment = assignment
        moved = int(np.count_nonzero(assignment != first_assignment))
    assert moved > 0, "no weight changed cluster: the test would not see a stale assignment"


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_preserve_sparsity_keeps_pruned_weights_zero_through_training(baseline, per_channel):
    skip_on_jax_unless(per_channel)
    x, y, trained = baseline
    model = keras.models.clone_model(trained)
    model.set_weights(trained.get_weights())
    for layer in model.layers:
        kernel = to_numpy(layer.kernel)
        kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.5)] = 0.0
        layer.kernel.assign(kernel)
    zeros = [kernel == 0 for kernel in kernels(model)]
    clustered = compiled(wk.cluster_weights(model, K, cluster_per_channel=per_channel, preserve_sparsity=True))
    clustered.fit(x, y, batch_size=32, epochs=4, verbose=0)
    stripped = wk.strip_clustering(clustered)
    for mask, kernel, layer in zip(zeros, kernels(stripped), clustered.layers):
        np.testing.assert_array_equal(kernel == 0, mask)
        columns = kernel.T if per_channel else kernel.reshape(1, -1)
        assert max(len(np.unique(column)) for column in columns) <= K
        codebook = to_numpy(layer.cluster_centroids["kernel"]).reshape(-1, K)
        assert all(np.count_nonzero(row == 0) >= 1 for row in codebook)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="XLA on the TensorFlow backend")
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_xla_compiled_training_matches_graph_training(baseline, per_channel):
    """Under XLA the search and the gradient reduction use other kernels; the numbers must not change."""
    x, y, model = baseline
    weights = []
    for jit_compile in (False, True):
        clustered = wk.cluster_weights(model, 8, cluster_per_channel=per_channel,
                                       cluster_gradient_aggregation="average")
        clustered.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          jit_compile=jit_compile)
        clustered.fit(x, y, batch_size=256, epochs=3, shuffle=False, verbose=0)
        weights.append([to_numpy(w) for w in clustered.weights])
    for graph, xla in zip(*weights):
        np.testing.assert_allclose(xla, graph, rtol=1e-4, atol=1e-5)


def kernel_and_centroid_gradient(wrapper, upstream):
    """(the clustered kernel of a differentiated TensorFlow graph step, traced afresh; the gradient of
    sum(kernel * upstream) with respect to the centroids), as NumPy arrays."""
    import tensorflow as tf

    centroids = wrapper.cluster_centroids["kernel"]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            kernel = wrapper.clustered_weights()["kernel"]
            loss = tf.reduce_sum(kernel * tf.constant(upstream))
        return kernel, tape.gradient(loss, centroids)

    return tuple(to_numpy(value) for value in step())


def _without_workspaces(clustered):
    """The same model with its TensorFlow workspaces dropped: its steps take the portable ops."""
    for layer in clustered.layers:
        if isinstance(layer, wk.ClusterWeights):
            layer._cluster_states = tuple(dataclasses.replace(state, workspace=None) for state in layer._cluster_states)
    return clustered


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the in-place lookup of TensorFlow steps")
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_tensorflow_step_writes_a_fresh_nearest_centroid_search_in_place(per_channel):
    """In a differentiated TensorFlow step (outside XLA), the kernel and the indices the step uses, written
    in place into the wrapper's workspace, are a fresh nearest-centroid search of the current weights."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(64, 12)).astype("float32"), rng.normal(size=(64, 16)).astype("float32")
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, use_bias=False)])
    clustered = wk.cluster_weights(model, 6, cluster_per_channel=per_channel)
    clustered.compile(keras.optimizers.SGD(0.3), keras.losses.MeanSquaredError())
    wrapper = clustered.layers[0]
    workspace = wrapper._cluster_states[0].workspace

    @tf.function
    def kernel_in_a_step():
        with tf.GradientTape():
            return wrapper.clustered_weights()["kernel"]

    first_assignment, moved = None, 0
    for step in range(5):
        clustered.train_on_batch(x[step * 8:(step + 1) * 8], y[step * 8:(step + 1) * 8])
        original, codebook = to_numpy(wrapper.layer.kernel), to_numpy(wrapper.cluster_centroids["kernel"])
        assignment, expected = fresh_search(original, codebook, per_channel)
        np.testing.assert_array_equal(to_numpy(kernel_in_a_step()), expected, err_msg=f"step {step}")
        order = np.argsort(codebook, axis=-1, kind="stable")
        rank = np.argsort(order, axis=-1)
        sorted_position = np.take_along_axis(rank.T, assignment, axis=0) if per_channel else rank[assignment]
        offsets = np.arange(16) * 6 if per_channel else 0
        np.testing.assert_array_equal(workspace.index.numpy(), sorted_position + offsets, err_msg=f"step {step}")
        if first_assignment is None:
            first_assignment = assignment
        moved = int(np.count_nonzero(assignment != first_assignment))
    assert moved > 0, "no weight changed cluster: the test would not see a stale assignment"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the in-place lookup of TensorFlow steps")
@pytest.mark.parametrize(("reassignment", "per_channel", "aggregation"),
                         [("every_step", False, "sum"), ("every_step", True, "average"),
                          ("fixed", False, "average"), ("fixed", True, "sum")])
def test_tensorflow_in_place_steps_train_as_the_portable_ops(baseline, reassignment, per_channel, aggregation):
    x, y, model = baseline
    trained, initial = [], None
    for portable in (False, True):
        clustered = wk.cluster_weights(model, K, cluster_per_channel=per_channel, reassignment=reassignment,
                                       cluster_gradient_aggregation=aggregation)
        if portable:
            _without_workspaces(clustered)
        initial = [to_numpy(w) for w in clustered.weights]
        compiled(clustered, 5e-2).fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        trained.append([to_numpy(w) for w in clustered.weights])
    for fast, portable in zip(*trained):
        np.testing.assert_allclose(fast, portable, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(before, after) for before, after in zip(initial, trained[0])), "nothing trained"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the in-place lookup of TensorFlow steps")
@pytest.mark.parametrize(("reassignment", "aggregation"), [("every_step", "sum"), ("fixed", "average")])
def test_tensorflow_large_kernel_step_sums_each_centroids_members_in_parallel(reassignment, aggregation):
    """A kernel of 2^20 weights takes the parallel sum with one-byte positions: in a differentiated step
    the kernel is each weight's centroid at a fresh search (every step) or its stored index (fixed), those
    positions are held as uint8 (the workspace's buffer, written by the numba search; the stored indices
    themselves with fixed assignment), and each centroid's gradient is the sum (or mean) of its members'
    upstream gradients, as a float64 bincount."""
    import tensorflow as tf

    from weightzip.keras.clustering import _tf_lookup

    rng = np.random.default_rng(11)
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024, use_bias=False)])
    model.layers[0].kernel.assign(rng.normal(size=(1024, 1024)).astype("float32"))
    clustered = wk.cluster_weights(model, 16, reassignment=reassignment, cluster_gradient_aggregation=aggregation)
    wrapper = clustered.layers[0]
    workspace = wrapper._cluster_states[0].workspace
    assert workspace.parallel_sums and workspace.kernel.shape.num_elements() == _tf_lookup.MIN_PARALLEL_WEIGHTS
    assert workspace.index.dtype == tf.uint8
    upstream = rng.normal(size=(1024, 1024)).astype("float32")
    kernel, gradient = kernel_and_centroid_gradient(wrapper, upstream)
    codebook = to_numpy(wrapper.cluster_centroids["kernel"])
    if reassignment == "every_step":
        assignment, expected_kernel = fresh_search(to_numpy(wrapper.layer.kernel), codebook, False)
        positions = np.argsort(np.argsort(codebook, kind="stable"))[assignment]  # into the sorted table
    else:
        assignment = to_numpy(wrapper.pulling_indices["kernel"])
        expected_kernel, positions = codebook[assignment], assignment
    np.testing.assert_array_equal(kernel, expected_kernel)
    held = workspace.buffers["index"] if reassignment == "every_step" else wrapper.pulling_indices["kernel"]
    assert held.dtype == "uint8"
    np.testing.assert_array_equal(to_numpy(held), positions)
    sums = np.bincount(assignment.ravel(), weights=to_numpy(upstream).ravel().astype(np.float64), minlength=16)
    if aggregation == "average":
        sums = sums / np.maximum(np.bincount(assignment.ravel(), minlength=16), 1)
    assert len(np.unique(assignment)) == 16
    np.testing.assert_allclose(gradient, sums, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the in-place lookup of TensorFlow steps")
def test_tensorflow_large_kernel_search_reuses_its_buffers_only_once_released():
    """The numba search of a graph step writes into the workspace's buffers, which TensorFlow adopts as the
    outputs' memory: step after step the same buffer while nothing holds the result, a new one while a caller
    still holds an earlier step's kernel, whose values never change. (TensorFlow may release a step's arrays
    only after the next step has begun: the second step may still take a new buffer.)"""
    import tensorflow as tf

    rng = np.random.default_rng(12)
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024, use_bias=False)])
    model.layers[0].kernel.assign(rng.normal(size=(1024, 1024)).astype("float32"))
    clustered = wk.cluster_weights(model, 16)
    wrapper = clustered.layers[0]
    workspace = wrapper._cluster_states[0].workspace

    @tf.function
    def kernel_in_a_step():
        with tf.GradientTape():
            return tf.identity(wrapper.clustered_weights()["kernel"])

    @tf.function
    def checksum_of_a_step():
        with tf.GradientTape():
            return tf.reduce_sum(wrapper.clustered_weights()["kernel"])

    first = checksum_of_a_step()
    checksum_of_a_step()  # (TensorFlow may release the first step's arrays only after the second has begun)
    buffer = weakref.ref(workspace.buffers["kernel"])  # (a strong reference would hold it)
    for _ in range(3):
        np.testing.assert_array_equal(checksum_of_a_step(), first)
        assert workspace.buffers["kernel"] is buffer(), "a released buffer was not reused"
    kept = kernel_in_a_step()
    expected = to_numpy(kept).copy()
    wrapper.layer.kernel.assign(-wrapper.layer.kernel)
    changed = to_numpy(kernel_in_a_step())
    assert not np.array_equal(changed, expected), "the search did not see the new weights"
    np.testing.assert_array_equal(to_numpy(kept), expected)
    _, fresh = fresh_search(to_numpy(wrapper.layer.kernel), to_numpy(wrapper.cluster_centroids["kernel"]), False)
    np.testing.assert_array_equal(changed, fresh)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the in-place lookup of TensorFlow steps")
def test_tensorflow_large_per_channel_kernel_step_is_a_fresh_search_per_channel():
    """The numba search of a graph step with one codebook per output channel (2^20 weights, 512 x 16 entries:
    int32 positions): each weight's nearest centroid of its own channel, and each channel's centroid gradient
    the sum of its members' upstream gradients."""

    rng = np.random.default_rng(13)
    model = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(512, use_bias=False)])
    model.layers[0].kernel.assign(rng.normal(size=(2048, 512)).astype("float32") * np.linspace(0.5, 2, 512))
    clustered = wk.cluster_weights(model, 16, cluster_per_channel=True)
    wrapper = clustered.layers[0]
    upstream = rng.normal(size=(2048, 512)).astype("float32")
    kernel, gradient = kernel_and_centroid_gradient(wrapper, upstream)
    codebook = to_numpy(wrapper.cluster_centroids["kernel"])
    assignment, expected = fresh_search(to_numpy(wrapper.layer.kernel), codebook, True)
    np.testing.assert_array_equal(kernel, expected)
    assert wrapper._cluster_states[0].workspace.buffers["index"].dtype == np.int32
    flat = (assignment + np.arange(512) * 16).ravel()
    sums = np.bincount(flat, weights=to_numpy(upstream).ravel().astype(np.float64), minlength=512 * 16)
    np.testing.assert_allclose(gradient, sums.reshape(512, 16), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the in-place lookup of TensorFlow steps")
@pytest.mark.parametrize("k", [64, 256])
def test_tensorflow_large_kernel_step_with_a_large_codebook_is_a_fresh_search(k):
    """Codebooks past the XLA chain's 32 entries: a graph step on 2^20 weights takes numba's search (its
    buffers are written), with the portable ops' kernel (each weight's nearest centroid by float32 midpoints:
    256 random centroids put a few weights exactly on one, where the core's float64 search may differ) and
    each centroid's summed gradient."""

    rng = np.random.default_rng(14)
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024, use_bias=False)])
    model.layers[0].kernel.assign(rng.normal(size=(1024, 1024)).astype("float32"))
    clustered = wk.cluster_weights(model, k)
    wrapper = clustered.layers[0]
    upstream = rng.normal(size=(1024, 1024)).astype("float32")
    kernel, gradient = kernel_and_centroid_gradient(wrapper, upstream)
    assert sorted(wrapper._cluster_states[0].workspace.buffers) == ["index", "kernel"]
    _without_workspaces(clustered)
    portable, _ = kernel_and_centroid_gradient(wrapper, upstream)
    np.testing.assert_array_equal(kernel, portable)
    codebook = to_numpy(wrapper.cluster_centroids["kernel"])
    assignment, expected = fresh_search(to_numpy(wrapper.layer.kernel), codebook, False)
    assert np.count_nonzero(kernel != expected) <= 8
    assignment = np.argmin(np.abs(kernel.reshape(-1, 1) - codebook.reshape(1, -1)), axis=1)  # (distinct values)
    sums = np.bincount(assignment, weights=to_numpy(upstream).ravel().astype(np.float64), minlength=k)
    np.testing.assert_allclose(gradient, sums, rtol=1e-5, atol=1e-4)


def _counted(monkeypatch, module, name: str) -> list:
    """A list that gets one entry per call of ``module.name`` (the function itself still runs)."""
    calls = []
    function = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args: calls.append(1) or function(*args))
    return calls


def _large_dense_model():
    """Dense(1024) then a Dense whose 1024 x 1030 kernel (>= 2^20 weights) the fused products serve."""
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((40,)), keras.layers.Dense(1024), keras.layers.Dense(1030, activation="relu")])


def _torch_dense_gradients(model, x, upstream):
    """(the model's output, the gradient of sum(output * upstream) by trainable variable path), on torch."""
    import torch

    for variable in model.trainable_variables:
        variable.value.grad = None
    output = model(torch.from_numpy(x))
    (output * torch.from_numpy(upstream)).sum().backward()
    return output.detach().numpy(), {v.path: v.value.grad.numpy().copy() for v in model.trainable_variables}


def _general_path_only(monkeypatch):
    """Every clustered Dense declined by the backends' one-function paths: the general path."""
    from weightzip.keras.clustering import _fused_dense

    monkeypatch.setattr(_fused_dense, "dense_state", lambda wrapper, **_: None)


def _assert_same_gradients(results: dict, expected_output, expected: dict, count: int):
    for taken, (output, gradients) in results.items():
        np.testing.assert_allclose(output, expected_output, rtol=1e-5, atol=1e-5, err_msg=taken)
        assert gradients.keys() == expected.keys() and len(gradients) == count
        for path, gradient in expected.items():
            scale = np.abs(gradient).max()
            np.testing.assert_allclose(gradients[path], gradient, rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=f"{taken}: {path}")


@pytest.mark.parametrize("pinned", [False, True], ids=["free", "pinned_zero"])
def test_torch_fixed_dense_fused_step_equals_the_general_path(monkeypatch, pinned):
    """A large clustered Dense with fixed assignment on torch: its product and centroid gradient by one function
    (no weight gradient formed; above MAX_ROWS rows, the weight gradient summed by index) give the general path's
    output, centroid gradients and input gradient (to the layer before it)."""
    if keras.backend.backend() != "torch":
        pytest.skip("the fused Dense step is PyTorch's")
    from weightzip.keras.clustering import _fused_dense, _numba_dense, _torch_dense

    if not _numba_dense.serves(16):
        pytest.skip("numba compiles for neither AVX-512 nor AVX2 with FMA here")
    model = _large_dense_model()
    if pinned:
        kernel = model.layers[1].kernel
        kernel.assign(np.where(np.abs(to_numpy(kernel)) < 0.01, 0.0, to_numpy(kernel)))
    clustered = wk.cluster_weights(model, 16, reassignment="fixed", preserve_sparsity=pinned)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(37, 40)).astype("float32")
    upstream = rng.normal(size=(37, 1030)).astype("float32")
    tiles = _counted(monkeypatch, _numba_dense, "outer_product_segment_sums")
    functions = _counted(monkeypatch, _torch_dense, "_dense_output")
    results = {"tiles": _torch_dense_gradients(clustered, x, upstream)}
    assert tiles == ([] if pinned else [1])  # a sparsity mask takes the general path
    assert len(functions) == (0 if pinned else 2)  # (the first layer: the weight gradient summed by index)
    monkeypatch.setattr(_fused_dense, "MAX_ROWS", 36)  # the weight gradient summed by index
    results["summed weight gradient"] = _torch_dense_gradients(clustered, x, upstream)
    assert len(tiles) <= 1 and len(functions) == (0 if pinned else 4)
    _general_path_only(monkeypatch)
    output, general = _torch_dense_gradients(clustered, x, upstream)
    assert len(tiles) <= 1 and len(functions) == (0 if pinned else 4)
    _assert_same_gradients(results, output, general, 4)  # two codebooks, two biases


@pytest.mark.parametrize("k", [16, 40])
def test_torch_fixed_small_dense_layers_take_one_function(monkeypatch, k):
    """LeNet-300-100 at batch 128 with fixed assignment on torch: each Dense by one autograd function (look-up,
    product, and the weight gradient summed by index from the layer's reused buffer), with the general path's
    output and gradients, step after step."""
    if keras.backend.backend() != "torch":
        pytest.skip("the one-function Dense is PyTorch's")
    from weightzip.keras.clustering import _numba_dense, _torch_dense

    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300, activation="relu"),
                              keras.layers.Dense(100, activation="relu"), keras.layers.Dense(10)])
    clustered = wk.cluster_weights(model, k, reassignment="fixed")
    rng = np.random.default_rng(6)
    x = rng.normal(size=(128, 784)).astype("float32")
    upstream = rng.normal(size=(128, 10)).astype("float32")
    tiles = _counted(monkeypatch, _numba_dense, "outer_product_segment_sums")
    functions = _counted(monkeypatch, _torch_dense, "_dense_output")
    results = {f"step {step}": _torch_dense_gradients(clustered, x, upstream) for step in (1, 2)}
    assert len(functions) == 6 and tiles == []
    _general_path_only(monkeypatch)
    output, general = _torch_dense_gradients(clustered, x, upstream)
    assert len(functions) == 6
    _assert_same_gradients(results, output, general, 6)  # three codebooks, three biases


def _jax_dense_gradients(model, x, upstream):
    """(the model's output, the gradients of sum(output * upstream) by trainable variable and to the input) from a
    jitted JAX step (traced afresh at each call)."""
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable, x):
        output, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return jnp.sum(output * upstream), output

    (_, output), (variables, inputs) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(trainable, x)
    return np.asarray(output), [np.asarray(g) for g in variables] + [np.asarray(inputs)]


@pytest.mark.parametrize("reassignment", ["fixed", "every_step"])
def test_jax_dense_fused_step_equals_the_general_path(monkeypatch, reassignment):
    """A large clustered Dense in a JAX step: its product by the look-up table (XLA FFI targets; the kernel never
    formed in the forward pass) and, with fixed assignment, its centroid gradient from the tiles of the weight
    gradient give the general path's output, centroid gradients, input gradients (to the layer before it and to
    the input) and, every step, straight-through gradients to the original weights."""
    if keras.backend.backend() != "jax":
        pytest.skip("the fused Dense step here is JAX's")
    from weightzip.keras.clustering import _fused_dense, _jax_dense, _jax_lookup, _numba_dense

    if not (_numba_dense.serves(16) and _jax_lookup.runs_here()):
        pytest.skip("numba compiles for neither AVX-512 nor AVX2 with FMA here, or the FFI targets do not run")
    clustered = wk.cluster_weights(_large_dense_model(), 16, reassignment=reassignment)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(37, 40)).astype("float32")
    upstream = rng.normal(size=(37, 1030)).astype("float32")
    calls = _counted(monkeypatch, _jax_dense, "_dense_output")
    output, fused = _jax_dense_gradients(clustered, x, upstream)
    assert calls == [1]
    monkeypatch.setattr(_fused_dense, "MAX_ROWS", 36)  # every call declined: the general path
    expected_output, general = _jax_dense_gradients(clustered, x, upstream)
    assert calls == [1]
    np.testing.assert_allclose(output, expected_output, rtol=1e-5, atol=1e-5)
    # two codebooks, two biases, the input (and, every step, the two original kernels)
    assert len(fused) == len(general) == (5 if reassignment == "fixed" else 7)
    names = [v.path for v in clustered.trainable_variables] + ["x"]
    for name, gradient, expected in zip(names, fused, general):
        np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max(), err_msg=name)


def test_jax_fixed_dense_fused_step_marks_indices_outside_the_codebook(monkeypatch):
    """XLA cannot raise: an index outside the codebook makes the layer's output NaN, as the general path's."""
    if keras.backend.backend() != "jax":
        pytest.skip("the fused Dense step here is JAX's")
    from weightzip.keras.clustering import _jax_dense, _jax_lookup, _numba_dense

    if not (_numba_dense.serves(16) and _jax_lookup.runs_here()):
        pytest.skip("numba compiles for neither AVX-512 nor AVX2 with FMA here, or the FFI targets do not run")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1024), keras.layers.Dense(1030)])
    clustered = wk.cluster_weights(model, 8, reassignment="fixed")
    indices = clustered.layers[1].pulling_indices["kernel"]
    indices.assign(np.full(indices.shape, 9, np.uint8))  # k = 8
    calls = _counted(monkeypatch, _jax_dense, "_dense_output")
    output, _ = _jax_dense_gradients(clustered, np.ones((4, 8), np.float32), np.ones((4, 1030), np.float32))
    assert calls == [1]
    assert np.isnan(output).all()


@pytest.mark.parametrize("reassignment", ["fixed", "every_step"])
@pytest.mark.parametrize("batch_shape", [37, None], ids=["static_batch", "open_batch"])
def test_tensorflow_dense_look_up_product_equals_the_general_path(monkeypatch, batch_shape, reassignment):
    """A large clustered Dense in a traced TensorFlow step: its product by the look-up table (the kernel never
    multiplied as a matrix in the forward pass) gives the general path's output, centroid gradients, input
    gradient (to the layer before it and to the input) and, with every-step reassignment, straight-through
    gradient to the original weights."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the look-up product serves TensorFlow steps")
    import tensorflow as tf

    from weightzip.keras.clustering import _fused_dense, _numba_lut

    if not _numba_lut.serves(16):
        pytest.skip("numba compiles for neither AVX-512 nor AVX2 with FMA here")
    model = _large_dense_model()
    clustered = wk.cluster_weights(model, 16, reassignment=reassignment)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(37, 40)).astype("float32")
    upstream = tf.constant(rng.normal(size=(37, 1030)).astype("float32"))
    calls = _counted(monkeypatch, _numba_lut, "lut_product")

    def step():
        @tf.function(input_signature=[tf.TensorSpec((batch_shape, 40), tf.float32)])
        def gradients(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                output = clustered(x, training=True)
                loss = tf.reduce_sum(output * upstream)
            return output, tape.gradient(loss, clustered.trainable_variables + [x])

        output, gradients = gradients(tf.constant(x))
        return output.numpy(), [g.numpy() for g in gradients]

    fused_output, fused = step()
    assert calls == [1]
    results = {"look-up product": (fused_output, fused)}
    if batch_shape is None:  # rows left open, a batch above MAX_ROWS when the step runs: TensorFlow's matmul
        monkeypatch.setattr(_fused_dense, "MAX_ROWS", 8)
        results["matmul of the open batch"] = step()
        assert calls == [1]
    monkeypatch.setattr(_fused_dense, "MIN_WEIGHTS", 1 << 30)  # every call declined: the general path
    output, general = step()
    assert calls == [1]
    names = [v.path for v in clustered.trainable_variables] + ["x"]
    for taken, (got_output, got) in results.items():
        np.testing.assert_allclose(got_output, output, rtol=1e-5, atol=1e-5, err_msg=taken)
        # two codebooks, two biases, the input (and, every step, the two original kernels)
        assert len(got) == len(general) == (5 if reassignment == "fixed" else 7)
        for name, gradient, expected in zip(names, got, general):
            np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max(),
                                       err_msg=f"{taken}: {name}")


def test_tensorflow_fixed_dense_look_up_product_refuses_indices_outside_the_codebook():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the look-up product serves TensorFlow steps")
    import tensorflow as tf

    from weightzip.keras.clustering import _numba_lut

    if not _numba_lut.serves(16):
        pytest.skip("numba compiles for neither AVX-512 nor AVX2 with FMA here")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1024), keras.layers.Dense(1030)])
    clustered = wk.cluster_weights(model, 8, reassignment="fixed")
    indices = clustered.layers[1].pulling_indices["kernel"]
    indices.assign(np.full(indices.shape, 9, np.uint8))  # k = 8

    @tf.function
    def loss(x):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(clustered(x, training=True))
        return tape.gradient(value, clustered.trainable_variables)

    with pytest.raises(Exception, match="pulling indices out of range"):
        loss(tf.ones((4, 8)))
