"""Bad input to the clustering core: each case gets its documented error, with a message naming the problem."""

import numpy as np
import pytest

from weightzip.core import (
    CentroidInitialization,
    ClusterConfig,
    InvalidClusterCountError,
    InvalidWeightsError,
    WeightzipError,
    cluster_array,
    fit_centroids,
    optimal_centroids,
    relative_sse,
    sse,
)

INITS = list(CentroidInitialization)
GOOD = np.array([0.5, -1.0, 2.0, 3.5, 0.25])


def test_errors_share_a_base_class_that_is_a_value_error():
    assert issubclass(InvalidWeightsError, WeightzipError) and issubclass(InvalidClusterCountError, WeightzipError)
    assert issubclass(WeightzipError, ValueError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("init", INITS)
def test_non_finite_weights_are_rejected(bad, init):
    values = GOOD.copy()
    values[2] = bad
    with pytest.raises(InvalidWeightsError, match="contains 1 NaN or infinite value"):
        fit_centroids(values, 2, init)
    with pytest.raises(InvalidWeightsError, match="NaN or infinite"):
        cluster_array(values, ClusterConfig(2, init=init))


@pytest.mark.parametrize("call", [
    lambda v: fit_centroids(v, 1),
    lambda v: optimal_centroids(v, 1),
    lambda v: cluster_array(v, ClusterConfig(1)),
    lambda v: sse(v, [0.0]),
])
def test_empty_weights_are_rejected(call):
    with pytest.raises(InvalidWeightsError, match="empty"):
        call(np.zeros((0, 3), dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.bool_])
def test_integer_and_boolean_weights_are_rejected(dtype):
    with pytest.raises(InvalidWeightsError, match=f"floating-point array, got dtype {np.dtype(dtype)}"):
        fit_centroids(np.arange(6).astype(dtype), 2)
    with pytest.raises(InvalidWeightsError, match="floating-point"):
        cluster_array(np.arange(6).astype(dtype), ClusterConfig(2))


def test_python_lists_of_floats_are_accepted():
    assert fit_centroids([0.0, 1.0, 2.0], 2, "optimal").shape == (2,)


@pytest.mark.parametrize("k, message", [
    (0, "must be >= 1, got 0"),
    (-3, "must be >= 1, got -3"),
    (2.0, "must be an integer, got 2.0"),
    (2.5, "must be an integer, got 2.5"),
    ("4", "must be an integer, got '4'"),
    (True, "must be an integer, got True"),
    (None, "must be an integer, got None"),
])
def test_bad_cluster_counts_are_rejected(k, message):
    with pytest.raises(InvalidClusterCountError, match=f"number_of_clusters {message}"):
        fit_centroids(GOOD, k)
    with pytest.raises(InvalidClusterCountError, match=f"number_of_clusters {message}"):
        optimal_centroids(GOOD, k)
    with pytest.raises(InvalidClusterCountError, match=f"number_of_clusters {message}"):
        ClusterConfig(k)


def test_numpy_integer_cluster_counts_are_accepted():
    assert fit_centroids(GOOD, np.int64(3), "optimal").shape == (3,)
    assert ClusterConfig(np.int32(3)).number_of_clusters == 3


@pytest.mark.parametrize("init", INITS)
def test_more_clusters_than_distinct_values_raises_in_fit_centroids(init):
    values = np.array([1.0, 1.0, 2.0, 2.0, 3.0])
    with pytest.raises(InvalidClusterCountError, match="number_of_clusters=4 exceeds the 3 distinct values"):
        fit_centroids(values, 4, init, lloyd_iterations=0 if init != "linear" else 3, seed=0)


def test_linear_without_refinement_only_rejects_constant_data():
    # Documented: LINEAR without Lloyd does not sort, so it only catches constant data (or n < k).
    np.testing.assert_array_equal(fit_centroids(np.array([1.0, 1.0, 2.0]), 3, "linear"), [1.0, 1.5, 2.0])
    with pytest.raises(InvalidClusterCountError, match="exceeds the 1 distinct values"):
        fit_centroids(np.full(5, 7.0), 2, "linear")
    with pytest.raises(InvalidClusterCountError, match="exceeds the 2 distinct values"):
        fit_centroids(np.array([0.0, 1.0]), 3, "linear")


@pytest.mark.parametrize("init", INITS)
def test_more_clusters_than_values_of_positive_weight_raises(init):
    importance = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    with pytest.raises(InvalidClusterCountError, match="exceeds the 2 distinct values of positive sample_weight"):
        fit_centroids(GOOD, 3, init, sample_weight=importance, lloyd_iterations=0 if init != "linear" else 3)


@pytest.mark.parametrize("init", INITS)
def test_cluster_array_pads_instead_of_raising(init):
    values = np.array([[2.0, 2.0], [5.0, 2.0]], dtype=np.float32)
    clustered = cluster_array(values, ClusterConfig(4, init=init, seed=0))
    # LINEAR without Lloyd never raises (see above): its empty clusters stay where linspace put them.
    padded = [[2.0, 3.0, 4.0, 5.0]] if init is CentroidInitialization.LINEAR else [[2.0, 5.0, 5.0, 5.0]]
    np.testing.assert_array_equal(clustered.codebook, padded)
    np.testing.assert_array_equal(clustered.decode(), values)


@pytest.mark.parametrize("shape", [(4,), (5, 1), (1, 5), (6,)])
def test_sample_weight_of_the_wrong_shape_is_rejected(shape):
    with pytest.raises(InvalidWeightsError, match=r"sample_weight has shape .* expected the weights' shape \(5,\)"):
        fit_centroids(GOOD, 2, "optimal", sample_weight=np.ones(shape))
    with pytest.raises(InvalidWeightsError, match="sample_weight has shape"):
        cluster_array(GOOD, ClusterConfig(2), sample_weight=np.ones(shape))


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_negative_or_non_finite_sample_weight_is_rejected(bad):
    importance = np.ones(5)
    importance[1] = bad
    with pytest.raises(InvalidWeightsError, match="sample_weight must be finite and non-negative"):
        fit_centroids(GOOD, 2, "optimal", sample_weight=importance)
    with pytest.raises(InvalidWeightsError, match="sample_weight must be finite and non-negative"):
        sse(GOOD, [0.0, 1.0], sample_weight=importance)


@pytest.mark.parametrize("init", INITS)
def test_all_zero_sample_weight_is_rejected_by_fit(init):
    with pytest.raises(InvalidWeightsError, match="sample_weight is zero everywhere"):
        fit_centroids(GOOD, 2, init, sample_weight=np.zeros(5))


@pytest.mark.parametrize("axis", [2, -3, 10])
def test_axis_out_of_range_is_rejected(axis):
    with pytest.raises(ValueError, match=f"axis {axis} is out of range for a tensor of rank 2"):
        cluster_array(np.ones((3, 4), np.float32), ClusterConfig(2, axis=axis))


@pytest.mark.parametrize("axis", [1.0, "0"])
def test_non_integer_axis_is_rejected(axis):
    with pytest.raises(ValueError, match="axis must be an integer or None"):
        ClusterConfig(2, axis=axis)


@pytest.mark.parametrize("group_size", [0, -1, 1.5])
def test_bad_group_size_is_rejected(group_size):
    with pytest.raises(ValueError, match="group_size must be an integer >= 1"):
        ClusterConfig(2, axis=0, group_size=group_size)


@pytest.mark.parametrize("iterations", [-1, 2.5, True])
def test_bad_lloyd_iterations_are_rejected(iterations):
    with pytest.raises(ValueError, match="lloyd_iterations must be an integer >= 0"):
        fit_centroids(GOOD, 2, lloyd_iterations=iterations)
    if iterations is not True:  # a bool is an int to the dataclass check; fit_centroids rejects it
        with pytest.raises(ValueError, match="lloyd_iterations must be an integer >= 0"):
            ClusterConfig(2, lloyd_iterations=iterations)


def test_unknown_init_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="unknown centroid initialization 'median'; choose one of LINEAR"):
        fit_centroids(GOOD, 2, "median")
    with pytest.raises(ValueError, match="unknown centroid initialization"):
        ClusterConfig(2, init="median")


def test_preserve_sparsity_needs_two_clusters():
    with pytest.raises(InvalidClusterCountError, match="preserve_sparsity needs number_of_clusters >= 2"):
        ClusterConfig(1, preserve_sparsity=True)


def test_max_atoms_below_two_is_rejected():
    with pytest.raises(ValueError, match="max_atoms must be >= 2 or None, got 1"):
        optimal_centroids(GOOD, 2, max_atoms=1)


def test_relative_sse_rejects_bad_values():
    with pytest.raises(InvalidWeightsError, match="NaN"):
        relative_sse(np.array([0.0, np.nan]), [0.0])


def test_inputs_are_not_modified():
    values = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    importance = np.random.default_rng(1).uniform(size=(8, 8))
    before, before_importance = values.copy(), importance.copy()
    for init in INITS:
        fit_centroids(values, 4, init, sample_weight=importance, lloyd_iterations=3, seed=0)
        cluster_array(values, ClusterConfig(4, init=init, axis=1, preserve_sparsity=True, seed=0),
                      sample_weight=importance)
    np.testing.assert_array_equal(values, before)
    np.testing.assert_array_equal(importance, before_importance)
