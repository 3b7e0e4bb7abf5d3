"""The PyTorch clustered kernel (clustering/_torch_lookup.py) on torch tensors, whatever Keras backend this
process runs: results and gradients equal a fresh nearest-centroid search and a bincount at every call,
while its per-weight buffers are reused in place only when nothing else holds them, and the one-byte
copy of stored indices follows every change of the stored variable."""

import gc

import numpy as np
import pytest

from weightzip.core import assign_to_centroids
from weightzip.core.errors import InvalidWeightsError

torch = pytest.importorskip("torch")
from weightzip.keras.clustering import _torch_lookup  # noqa: E402

K = 16


def table():
    return torch.nn.Parameter(torch.linspace(-1.0, 1.0, K))


def searched(weights, centroids, **options):
    options = {"channel_axis": None, "centroid_pin": None, "average_gradient": False, **options}
    return _torch_lookup.lookup(centroids, weights, fixed_indices=None, sparsity_mask=None, **options)


def indexed(index, centroids, average_gradient):
    kernel_like = torch.zeros(index.shape, dtype=centroids.dtype)  # only its shape and dtype are read
    return _torch_lookup.lookup(centroids, kernel_like, channel_axis=None, fixed_indices=index, centroid_pin=None,
                                          sparsity_mask=None, average_gradient=average_gradient)


def _three_searched_steps(rng, weights, centroids) -> set[int]:
    """Three training steps of the searched look-up, results and gradients checked at each; the kernel buffers'
    addresses."""
    addresses = set()
    for _ in range(3):
        clustered = searched(weights, centroids)
        expected = assign_to_centroids(weights.detach().numpy(), centroids.detach().numpy())
        np.testing.assert_array_equal(clustered.detach().numpy(), centroids.detach().numpy()[expected])
        upstream = torch.from_numpy(rng.normal(size=clustered.shape).astype(np.float32))
        (clustered * upstream).sum().backward()
        np.testing.assert_allclose(centroids.grad.numpy(), np.bincount(expected.ravel(), upstream.numpy().ravel(), K),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(weights.grad.numpy(), upstream.numpy())  # straight-through
        assert clustered.data_ptr() == _torch_lookup.scratch_for(weights).buffers["kernel"][0].data_ptr()
        addresses.add(clustered.data_ptr())
        del clustered
        with torch.no_grad():
            weights.mul_(0.5)  # most weights move to another cell
        centroids.grad = weights.grad = None
    return addresses


def test_searched_lookup_reuses_its_buffer_but_never_one_still_held():
    rng = np.random.default_rng(0)
    centroids = table()
    # Nothing of ours holds the last step's kernel, so it is written in place: one address for three steps. (In
    # one full-suite run of six, something in the same pytest worker held a step's storage once, and the buffer
    # was correctly not reused; a second attempt, on another weight, then tells that apart from no reuse at all.)
    for attempt in range(2):
        weights = torch.nn.Parameter(torch.from_numpy(rng.normal(size=(300, 70)).astype(np.float32)))
        addresses = _three_searched_steps(rng, weights, centroids)
        if len(addresses) == 1:
            break
        gc.collect()
    assert len(addresses) == 1
    kept = searched(weights, centroids)
    kept_values = kept.detach().clone()
    with torch.no_grad():
        weights.mul_(-1.0)
    again = searched(weights, centroids)  # `kept` is still alive: a new buffer, `kept` unchanged
    assert again.data_ptr() != kept.data_ptr()
    assert torch.equal(kept, kept_values) and not torch.equal(again, kept_values)


def test_indexed_lookup_follows_the_stored_indices_through_their_byte_copy():
    rng = np.random.default_rng(1)
    index = torch.nn.Parameter(torch.from_numpy(rng.integers(0, K, size=(50, 40)).astype(np.int32)),
                               requires_grad=False)
    centroids = table()
    for _ in range(2):
        clustered = indexed(index, centroids, True)
        np.testing.assert_array_equal(clustered.detach().numpy(), centroids.detach().numpy()[index.numpy()])
        upstream = torch.from_numpy(rng.normal(size=clustered.shape).astype(np.float32))
        (clustered * upstream).sum().backward()
        counts = np.maximum(np.bincount(index.numpy().ravel(), minlength=K), 1)
        np.testing.assert_allclose(centroids.grad.numpy(),
                                   np.bincount(index.numpy().ravel(), upstream.numpy().ravel(), K) / counts,
                                   rtol=1e-5, atol=1e-6)
        centroids.grad = None
        with torch.no_grad():
            index.copy_((index + 3) % K)  # as Keras's assign: the next call must read these
    with torch.no_grad():
        index[7, 3] = K
    with pytest.raises(InvalidWeightsError, match="out of range"):
        indexed(index, centroids, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unsorted_pinned_per_channel_codebooks_are_sorted_inside_the_step(dtype):
    """Centroids that crossed while training (any order, a duplicate), a pinned zero per row, a codebook per
    output channel: each weight gets its row's nearest unpinned centroid (a tie to the first of equal ones),
    each centroid the sum of its members' gradients, a pinned one none, the kernel the upstream gradient."""
    rng = np.random.default_rng(2)
    channels, k = 6, 5
    rows = rng.normal(size=(channels, k))
    rows[:, 2] = rows[:, 4]  # a duplicate centroid in every row: the first copy is the one searched for
    centroids = torch.nn.Parameter(torch.from_numpy(rows).to(dtype))
    pin = torch.ones(channels, k, dtype=dtype)
    pin[:, 1] = 0.0
    weights = torch.nn.Parameter(torch.from_numpy(rng.normal(size=(40, channels))).to(dtype))
    clustered = searched(weights, centroids, channel_axis=-1, centroid_pin=pin)
    upstream = torch.from_numpy(rng.normal(size=(40, channels))).to(dtype)
    (clustered * upstream).sum().backward()

    expected_kernel = np.empty((40, channels))
    expected_gradient = np.zeros((channels, k))
    for channel in range(channels):
        live = [j for j in range(k) if j != 1]
        values = rows[channel, live]
        nearest = np.array(live)[assign_to_centroids(weights.detach().numpy()[:, channel].astype(np.float64),
                                                     values)]
        assert not np.any(nearest == 4)  # the later copy of the duplicate never wins
        expected_kernel[:, channel] = rows[channel, nearest]
        np.add.at(expected_gradient[channel], nearest, upstream.numpy()[:, channel])
    np.testing.assert_allclose(clustered.detach().numpy(), expected_kernel, rtol=1e-6)
    gradient = centroids.grad.numpy().copy()
    gradient[:, 2] += gradient[:, 4]  # the two copies split their cell at their shared midpoint (as the portable
    gradient[:, 4] = 0.0  # path's midpoint search): their gradients add up to the cell's
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-5, atol=1e-6)
    assert np.all(centroids.grad.numpy()[:, 1] == 0)
    np.testing.assert_array_equal(weights.grad.numpy(), upstream.numpy())
