"""Magnitude masks, N:M masks and pruning schedules of weightzip.core.pruning."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightzip.core.pruning import (
    ConstantSparsity,
    InvalidScheduleError,
    InvalidSparsityError,
    PolynomialDecay,
    apply_mask,
    is_n_m_sparse,
    magnitude_mask,
    measured_sparsity,
    n_m_mask,
    pruned_count,
    schedule_from_config,
)

# ---------------------------------------------------------------- magnitude_mask

@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 60),
    st.floats(0.0, 0.99),
    st.integers(0, 2**31 - 1),
)
def test_magnitude_mask_zeroes_exactly_the_smallest(size, sparsity, seed):
    weights = np.random.default_rng(seed).normal(size=size).astype(np.float32)
    keep = magnitude_mask(weights, sparsity)
    expected_zeros = min(int(np.floor(sparsity * size + 0.5)), size - 1)
    assert np.count_nonzero(~keep) == expected_zeros
    if keep.any() and (~keep).any():
        assert np.abs(weights[keep]).min() >= np.abs(weights[~keep]).max()


def test_magnitude_mask_breaks_ties_by_lower_index_and_is_deterministic():
    weights = np.array([1.0, -1.0, 1.0, 1.0, 3.0], dtype=np.float32)
    keep = magnitude_mask(weights, 0.4)  # two zeros among four equal magnitudes
    np.testing.assert_array_equal(keep, [True, True, False, False, True])
    np.testing.assert_array_equal(keep, magnitude_mask(weights.copy(), 0.4))


def sorted_reference_mask(weights, sparsity, axis):
    """The mask by a full stable sort (largest first, equal magnitudes in index order), slice by slice."""
    magnitude = np.abs(weights)
    rows = magnitude.reshape(1, -1) if axis is None else np.moveaxis(magnitude, axis, 0).reshape(
        magnitude.shape[axis], -1)
    keep = np.zeros(rows.shape, dtype=bool)
    kept = rows.shape[1] - pruned_count(rows.shape[1], sparsity)
    np.put_along_axis(keep, np.argsort(-rows, axis=1, kind="stable")[:, :kept], True, axis=1)
    if axis is None:
        return keep.reshape(weights.shape)
    return np.moveaxis(keep.reshape((weights.shape[axis],) + tuple(np.delete(weights.shape, axis))), 0, axis)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 0.99), st.sampled_from([None, 0, 1]), st.integers(1, 5))
def test_magnitude_mask_selection_equals_a_full_stable_sort(seed, sparsity, axis, levels):
    """O(n) selection against the sort it replaces, with many ties (few distinct magnitudes, both signs)."""
    rng = np.random.default_rng(seed)
    weights = rng.integers(-levels, levels + 1, size=(int(rng.integers(1, 9)), int(rng.integers(1, 40))))
    weights = weights.astype(np.float32) * 0.5
    np.testing.assert_array_equal(magnitude_mask(weights, sparsity, axis=axis),
                                  sorted_reference_mask(weights, sparsity, axis))


def test_magnitude_mask_per_axis_prunes_every_slice_equally():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(10, 6)) * np.array([100.0, 1, 1, 1, 1, 0.01])  # very unequal columns
    keep = magnitude_mask(weights, 0.5, axis=1)
    np.testing.assert_array_equal(keep.sum(axis=0), np.full(6, 5))
    whole = magnitude_mask(weights, 0.5)
    assert whole[:, 5].sum() == 0  # tensor-wide ranking empties the small column; per-axis does not


def test_magnitude_mask_keeps_at_least_one_and_zero_sparsity_keeps_all():
    assert magnitude_mask(np.array([0.5]), 0.9).all()
    assert magnitude_mask(np.arange(1.0, 9.0).reshape(2, 4), 0.0).all()


def test_magnitude_mask_blocks_prune_whole_blocks():
    weights = np.array([[1.0, 1.0, 9.0, 9.0, 2.0, 2.0],
                        [5.0, 5.0, 0.1, 0.1, 3.0, 3.0]])
    keep = magnitude_mask(weights, 0.5, block_shape=(1, 2))
    # blocks of two along the row: means 1, 9, 2 / 5, 0.1, 3 -> the three smallest blocks go
    np.testing.assert_array_equal(keep, [[False, False, True, True, False, False],
                                         [True, True, False, False, True, True]])


def test_magnitude_mask_blocks_overhanging_edge_and_max_pooling():
    weights = np.array([[0.1, 0.2, 5.0], [0.3, 0.4, 0.0]])
    keep = magnitude_mask(weights, 0.5, block_shape=(2, 2), pooling="max")
    # two blocks: columns 0-1 (max 0.4) and the overhanging column 2 (max 5.0)
    np.testing.assert_array_equal(keep, [[False, False, True], [False, False, True]])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", True])
def test_magnitude_mask_rejects_bad_sparsity(bad):
    with pytest.raises(InvalidSparsityError, match="sparsity"):
        magnitude_mask(np.ones(4), bad)


def test_magnitude_mask_rejects_bad_blocks_and_nan():
    with pytest.raises(InvalidSparsityError, match="one entry per weight dimension"):
        magnitude_mask(np.ones((4, 4)), 0.5, block_shape=(2,))
    with pytest.raises(InvalidSparsityError, match="pooling"):
        magnitude_mask(np.ones((4, 4)), 0.5, block_shape=(2, 2), pooling="median")
    with pytest.raises(ValueError, match="NaN"):
        magnitude_mask(np.array([1.0, np.nan]), 0.5)


def test_pruned_count_rounds_half_up_and_keeps_one():
    assert pruned_count(10, 0.25) == 3  # 2.5 -> 3
    assert pruned_count(10, 0.3) == 3
    assert pruned_count(3, 0.9) == 2
    assert pruned_count(0, 0.5) == 0


# ---------------------------------------------------------------- n_m_mask

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.sampled_from([(2, 4), (1, 4), (4, 8), (3, 3)]), st.integers(0, 2**31 - 1))
def test_n_m_mask_keeps_n_largest_of_every_m(groups, pattern, seed):
    n, m = pattern
    weights = np.random.default_rng(seed).normal(size=(groups * m, 3)).astype(np.float32)
    keep = n_m_mask(weights, n, m, axis=0)
    runs = keep.reshape(groups, m, 3)
    np.testing.assert_array_equal(runs.sum(axis=1), np.full((groups, 3), n))
    magnitudes = np.abs(weights).reshape(groups, m, 3)
    kept_min = np.where(runs, magnitudes, np.inf).min(axis=1)
    dropped_max = np.where(runs, -np.inf, magnitudes).max(axis=1)
    assert np.all(kept_min >= dropped_max)
    assert is_n_m_sparse(apply_mask(weights, keep), n, m, axis=0)


def test_n_m_mask_on_conv_kernel_input_axis_and_ties():
    kernel = np.ones((3, 3, 8, 2), dtype=np.float32)
    keep = n_m_mask(kernel, 2, 4, axis=-2)
    runs = keep.reshape(3, 3, 2, 4, 2)
    np.testing.assert_array_equal(runs[..., 0, :, :][0, 0, :, 0], [True, True, False, False])
    assert is_n_m_sparse(kernel * keep, axis=2)
    assert not is_n_m_sparse(kernel, axis=2)


def test_n_m_mask_errors_name_the_problem():
    with pytest.raises(InvalidSparsityError, match="multiple of 4"):
        n_m_mask(np.ones((6, 2)), 2, 4, axis=0)
    with pytest.raises(InvalidSparsityError, match="n <= m"):
        n_m_mask(np.ones((8, 2)), 5, 4, axis=0)
    with pytest.raises(InvalidSparsityError, match="out of range"):
        n_m_mask(np.ones((8, 2)), 2, 4, axis=2)


def test_apply_mask_and_measured_sparsity():
    weights = np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32)
    pruned = apply_mask(weights, magnitude_mask(weights, 0.5))
    assert pruned.dtype == np.float32
    np.testing.assert_array_equal(pruned, [[0.0, -2.0], [3.0, 0.0]])
    assert measured_sparsity(pruned) == 0.5
    with pytest.raises(InvalidSparsityError, match="does not match"):
        apply_mask(weights, np.ones(4, dtype=bool))


# ---------------------------------------------------------------- schedules

def test_constant_sparsity_follows_tfmot_step_rule():
    schedule = ConstantSparsity(0.5, begin_step=10, end_step=30, frequency=10)
    pruned_steps = [step for step in range(50) if schedule.should_prune(step)]
    assert pruned_steps == [10, 20, 30]
    assert schedule(20) == (True, 0.5)
    assert schedule(25) == (False, 0.5)
    forever = ConstantSparsity(0.8, begin_step=0, frequency=7)
    assert forever.should_prune(7000) and not forever.should_prune(7001)


def test_polynomial_decay_ramps_cubically():
    schedule = PolynomialDecay(0.2, 0.8, begin_step=100, end_step=300, frequency=50)
    assert schedule.sparsity_at(0) == pytest.approx(0.2)
    assert schedule.sparsity_at(100) == pytest.approx(0.2)
    assert schedule.sparsity_at(200) == pytest.approx(0.8 + (0.2 - 0.8) * 0.5**3)
    assert schedule.sparsity_at(300) == pytest.approx(0.8)
    assert schedule.sparsity_at(10_000) == pytest.approx(0.8)
    sparsities = [schedule.sparsity_at(step) for step in range(100, 301, 10)]
    assert all(a <= b for a, b in zip(sparsities, sparsities[1:]))
    assert [s for s in range(400) if schedule.should_prune(s)] == [100, 150, 200, 250, 300]
    assert PolynomialDecay(0.0, 0.5, 5, 5).sparsity_at(5) == 0.5


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ConstantSparsity(1.0, 0), "target_sparsity"),
        (lambda: ConstantSparsity(0.5, -1), "begin_step"),
        (lambda: ConstantSparsity(0.5, 10, end_step=5), "end_step"),
        (lambda: ConstantSparsity(0.5, 0, end_step=-2), "end_step"),
        (lambda: ConstantSparsity(0.5, 0, frequency=0), "frequency"),
        (lambda: ConstantSparsity(0.5, 1.5), "begin_step"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, -1), "end_step cannot be -1"),
        (lambda: PolynomialDecay(0.0, 1.2, 0, 10), "final_sparsity"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, power=0), "power"),
    ],
)
def test_schedules_reject_bad_settings(make, message):
    with pytest.raises(InvalidScheduleError, match=message):
        make()


def test_schedules_round_trip_through_config_and_are_frozen():
    for schedule in (ConstantSparsity(0.6, 3, 40, 2), PolynomialDecay(0.1, 0.9, 0, 99, power=2, frequency=3)):
        assert schedule_from_config(schedule.get_config()) == schedule
        with pytest.raises(AttributeError):
            schedule.begin_step = 1
    with pytest.raises(InvalidScheduleError, match="class_name"):
        schedule_from_config({"class_name": "Nope"})
