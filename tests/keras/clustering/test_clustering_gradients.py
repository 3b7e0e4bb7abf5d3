"""Gradients: each centroid gets the sum (or mean) of its members' gradients, checked against a manual
computation; the original weights get their clustered value's gradient (straight-through)."""

import keras
import numpy as np
import pytest
from keras_clustering_helpers import gradients, sample_input, skip_on_jax_unless, to_numpy

import weightzip.keras as wk
from weightzip.core import assign_to_centroids

pytestmark = pytest.mark.backend_matrix

L = keras.layers
K = 3

# name: (built layer factory, input shape, input dtype)
CASES = {
    "Dense": (lambda: L.Dense(5), (7,), "float32"),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(3, 2), (3, 3, 2), "float32"),
    "Embedding": (lambda: L.Embedding(12, 4), (5,), "int32"),
    "LSTM": (lambda: L.LSTM(3), (4, 2), "float32"),
    "GRU": (lambda: L.GRU(3), (4, 2), "float32"),
}

# On JAX (each case compiles its ops eagerly: seconds each): every layer per tensor, and two per channel.
JAX_SUBSET = {*((case, False, "sum") for case in CASES), ("Dense", True, "average"), ("Conv2DTranspose", True, "sum")}


def built(case):
    factory, shape, dtype = CASES[case]
    layer = factory()
    inputs = keras.Input(shape, dtype=dtype)
    layer(inputs)
    return layer, sample_input(shape, dtype, batch=3, seed=1)


def kernel_gradient(wrapper, target, x, upstream):
    """dL/d(clustered kernel), from a plain copy of the layer holding the clustered kernel."""
    plain = wrapper.stripped_layer()
    position = [id(v) for v in wrapper.layer.weights].index(id(target.variable))
    variable = plain.weights[position]
    return gradients(lambda: keras.ops.sum(plain(x) * upstream), [variable])[0]


def expected_centroid_gradient(codebook, indices, member_gradient, axis, average):
    """Per codebook row: bincount of the members' gradients (divided by the member counts)."""
    k = codebook.shape[-1]
    if axis is None:
        rows_idx, rows_grad = [indices.ravel()], [member_gradient.ravel()]
    else:
        rows_idx = list(np.moveaxis(indices, axis, 0).reshape(indices.shape[axis], -1))
        rows_grad = list(np.moveaxis(member_gradient, axis, 0).reshape(indices.shape[axis], -1))
    result = []
    for idx, grad in zip(rows_idx, rows_grad):
        total = np.bincount(idx, weights=grad, minlength=k)
        if average:
            total = total / np.maximum(np.bincount(idx, minlength=k), 1)
        result.append(total)
    return np.array(result).reshape(codebook.shape)


def assignment(kernel, codebook, axis):
    if axis is None:
        return assign_to_centroids(kernel, codebook).astype(np.int64)
    moved = np.moveaxis(kernel, axis, 0)
    rows = [assign_to_centroids(channel, row) for channel, row in zip(moved, codebook)]
    return np.moveaxis(np.array(rows), 0, axis).astype(np.int64)


@pytest.mark.parametrize("aggregation", ["sum", "average"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_centroid_gradient_is_the_sum_of_its_members_gradients(case, per_channel, aggregation):
    skip_on_jax_unless((case, per_channel, aggregation) in JAX_SUBSET)
    layer, x = built(case)
    wrapper = wk.cluster_weights(layer, K, cluster_per_channel=per_channel, cluster_gradient_aggregation=aggregation)
    upstream = keras.ops.convert_to_tensor(
        np.random.default_rng(2).normal(size=to_numpy(wrapper(x)).shape).astype("float32"))
    targets = wrapper.clustered_targets
    centroids = [wrapper.cluster_centroids[t.name] for t in targets]
    originals = [t.variable for t in targets]

    grads = gradients(lambda: keras.ops.sum(wrapper(x) * upstream), centroids + originals)

    for i, target in enumerate(targets):
        member_gradient = kernel_gradient(wrapper, target, x, upstream)
        codebook = to_numpy(centroids[i])
        axis = target.channel_axis if per_channel else None
        indices = assignment(to_numpy(target.variable), codebook, axis)
        expected = expected_centroid_gradient(codebook, indices, member_gradient, axis, aggregation == "average")
        assert np.abs(expected).max() > 0, "degenerate check"
        np.testing.assert_allclose(grads[i], expected, rtol=1e-4, atol=1e-5, err_msg=target.name)
        # Straight-through: the original weight gets its clustered value's gradient.
        np.testing.assert_allclose(grads[len(targets) + i], member_gradient, rtol=1e-5, atol=1e-6,
                                   err_msg=target.name)


def test_fixed_assignment_uses_the_stored_indices_and_freezes_the_kernel():
    layer, x = built("Dense")
    wrapper = wk.cluster_weights(layer, K, reassignment="fixed")
    target = wrapper.clustered_targets[0]
    assert wrapper.pulling_indices["kernel"].dtype == "uint8"  # one byte each up to 256 clusters
    assert not target.variable.trainable
    assert all(v is not target.variable for v in wrapper.trainable_weights)
    upstream = keras.ops.ones(to_numpy(wrapper(x)).shape)
    centroids = wrapper.cluster_centroids["kernel"]
    (grad,) = gradients(lambda: keras.ops.sum(wrapper(x) * upstream), [centroids])
    indices = to_numpy(wrapper.pulling_indices["kernel"])
    expected = np.bincount(indices.ravel(), weights=kernel_gradient(wrapper, target, x, upstream).ravel(),
                           minlength=K)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_pinned_zero_centroid_and_pruned_weights_get_no_gradient():
    layer, x = built("Dense")
    kernel = to_numpy(layer.kernel)
    kernel[::2] = 0.0
    layer.kernel.assign(kernel)
    wrapper = wk.cluster_weights(layer, 4, preserve_sparsity=True)
    upstream = keras.ops.ones(to_numpy(wrapper(x)).shape)
    centroids = wrapper.cluster_centroids["kernel"]
    original = wrapper.clustered_targets[0].variable
    grad_c, grad_w = gradients(lambda: keras.ops.sum(wrapper(x) * upstream), [centroids, original])
    codebook = to_numpy(centroids)
    assert np.count_nonzero(codebook == 0) == 1
    assert grad_c[codebook == 0] == 0 and np.all(grad_c[codebook != 0] != 0)
    assert np.all(grad_w[kernel == 0] == 0) and np.any(grad_w[kernel != 0] != 0)
