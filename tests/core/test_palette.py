import numpy as np
import pytest

from weightzip.core import ClusterConfig, InvalidClusterCountError, cluster_array, palettize_exact


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_palettization_of_clustered_tensor_is_exact(axis):
    weights = np.random.default_rng(1).normal(size=(6, 5, 4)).astype(np.float32)
    clustered = cluster_array(weights, ClusterConfig(4, axis=axis)).decode()
    palette = palettize_exact(clustered, 4, axis=axis)
    assert palette.codebook.shape[1] <= 4
    assert palette.decode().tobytes() == clustered.tobytes()


def test_too_many_values_names_the_channel():
    weights = np.zeros((3, 8), np.float32)
    weights[:, 2] = np.arange(3)  # channel 2 along the last axis holds 3 distinct values
    palettize_exact(weights, 3, axis=-1)
    with pytest.raises(InvalidClusterCountError, match="channel 2 holds 3 distinct values"):
        palettize_exact(weights, 2, axis=-1)


def test_smallest_palette_prefers_per_tensor_when_it_fits():
    from weightzip.core.palette import smallest_exact_palette

    weights = np.random.default_rng(0).choice(np.float32([-1, 0.5, 2]), size=(40, 8))
    palette = smallest_exact_palette(weights, 16, channel_axis=-1)
    assert palette.axis is None and palette.codebook.shape == (1, 3)


def test_smallest_palette_counts_only_nonzero_weights():
    """A pruned kernel whose nonzeros are all distinct stores smaller raw (sparse) than as a palette."""
    from weightzip.core.palette import smallest_exact_palette

    weights = np.zeros((64, 64), np.float32)
    weights[np.arange(64), np.arange(64)] = np.arange(1, 65)  # 64 distinct nonzeros, one per channel
    assert smallest_exact_palette(weights, 256, channel_axis=-1) is None
    assert smallest_exact_palette(np.arange(10), 16) is None  # integers are never palettized
