"""The per-channel output correction's arithmetic: the least-squares gain and its fold into a normalisation."""

import numpy as np

from weightzip.core.output_correction import SCALE_ROWS, fitted_scales, folded_statistics, position_subset, scale_limit


def test_fitted_scales_are_the_least_squares_gain_clipped_to_the_trusted_range():
    rng = np.random.default_rng(0)
    got = rng.normal(size=(500, 4))
    wanted = got * np.array([0.7, 1.5, 5.0, 0.1]) + 3.0 + rng.normal(scale=1e-3, size=(500, 4))
    np.testing.assert_allclose(fitted_scales(wanted, got), [0.7, 1.5, 2.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(fitted_scales(wanted, got, limit=np.array([1.0, 1.2, 9.0, 9.0])), [0.7, 1.2, 2.0, 0.5],
                               atol=1e-3)
    constant = np.column_stack([got[:, 0], np.zeros(500)])  # a channel that does not vary keeps gain 1
    np.testing.assert_allclose(fitted_scales(constant * 0.9, constant), [0.9, 1.0])


def test_folded_statistics_compute_the_normalisation_of_the_scaled_and_shifted_input():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(100, 3))
    mean, variance, epsilon = np.array([0.2, -1.0, 0.5]), np.array([0.3, 2.0, 1e-4]), 1e-3
    scale, shift = np.array([0.8, 1.7, 1.9]), np.array([0.1, -0.4, 0.0])
    scale = np.minimum(scale, scale_limit(variance, epsilon))  # the third channel's variance is tiny
    assert scale[2] < 1.9

    def normalised(x, m, v):
        return (x - m) / np.sqrt(v + epsilon)

    folded_mean, folded_variance = folded_statistics(mean, variance, epsilon, scale, shift)
    assert np.all(folded_variance >= 0)
    np.testing.assert_allclose(normalised(y, folded_mean, folded_variance),
                               normalised(scale * y + shift, mean, variance), rtol=1e-10, atol=1e-10)


def test_position_subset_is_evenly_spaced_and_only_for_large_outputs():
    assert position_subset(SCALE_ROWS) is None
    chosen = position_subset(10 * SCALE_ROWS)
    assert len(chosen) == SCALE_ROWS and chosen[0] == 0 and chosen[-1] == 10 * SCALE_ROWS - 1
    assert np.all(np.diff(chosen) > 0)
