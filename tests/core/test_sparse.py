"""Relative-index sparse streams: the paper's filler rule, exact round trips, gap width choice."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightzip.core.errors import WeightzipError
from weightzip.core.sparse import best_gap_bits, positions_from_gaps, relative_positions, sparse_decode, sparse_encode


def test_gap_at_the_width_limit_needs_no_filler_one_more_needs_one():
    # 3-bit gaps skip at most 7 positions (the paper's "span of 8").
    keep = np.zeros(20, dtype=bool)
    keep[[7, 16]] = True  # first gap 7 (fits), second gap 8 (one filler)
    stream = relative_positions(keep, 3)
    np.testing.assert_array_equal(stream.gaps, [7, 7, 0])
    np.testing.assert_array_equal(stream.positions, [7, 15, 16])
    assert stream.fillers == 1 and stream.entries == 3


def test_paper_figure_2_style_example():
    # Kept at 1, 4 and 15 with 3-bit gaps: 15 - 4 - 1 = 10 skipped > 7, so one filler at 12.
    flat = np.zeros(16, dtype=np.float32)
    flat[[1, 4, 15]] = [3.4, 0.9, 1.7]
    stream, values = sparse_encode(flat, 0.0, 3)
    np.testing.assert_array_equal(stream.gaps, [1, 2, 7, 2])
    np.testing.assert_array_equal(stream.positions, [1, 4, 12, 15])
    np.testing.assert_array_equal(values, np.array([3.4, 0.9, 0.0, 1.7], dtype=np.float32))  # filler = 0


def test_long_runs_use_many_fillers_and_trailing_background_costs_nothing():
    keep = np.zeros(1000, dtype=bool)
    keep[900] = True
    stream = relative_positions(keep, 2)  # 900 skipped, 4 positions per filler
    assert stream.fillers == 225 and stream.entries == 226
    assert stream.positions[-1] == 900
    assert relative_positions(np.zeros(50, dtype=bool), 4).entries == 0


@settings(max_examples=150, deadline=None)
@given(length=st.integers(0, 2000), density=st.floats(0.0, 1.0), gap_bits=st.integers(1, 16),
       seed=st.integers(0, 2 ** 32 - 1))
def test_round_trip_is_exact_and_gaps_fit_their_width(length, density, gap_bits, seed):
    rng = np.random.default_rng(seed)
    flat = rng.normal(size=length).astype(np.float32)
    flat[rng.random(length) >= density] = 0
    stream, values = sparse_encode(flat, 0.0, gap_bits)
    assert stream.gaps.size == 0 or int(stream.gaps.max()) < 2 ** gap_bits
    assert stream.entries - stream.fillers == np.count_nonzero(flat)
    assert np.all(flat[stream.positions[values == 0]] == 0)  # fillers sit on background positions
    decoded = sparse_decode(stream.gaps, values, 0.0, length)
    assert decoded.tobytes() == flat.tobytes()


def test_per_element_background_and_negative_zero_are_exact():
    flat = np.array([5, 5, 2, 7, 7, 7, 1], dtype=np.uint8)
    background = np.array([5, 5, 5, 7, 7, 7, 7], dtype=np.uint8)  # e.g. two codebook groups
    stream, values = sparse_encode(flat, background, 4)
    np.testing.assert_array_equal(stream.positions, [2, 6])
    np.testing.assert_array_equal(sparse_decode(stream.gaps, values, background, 7), flat)
    signed = np.array([0.0, -0.0, 1.0], dtype=np.float32)
    stream, values = sparse_encode(signed, 0.0, 4)
    assert sparse_decode(stream.gaps, values, 0.0, 3).tobytes() == signed.tobytes()


def test_best_gap_bits_balances_fillers_against_width():
    rng = np.random.default_rng(0)
    keep = rng.random(100_000) < 0.08
    gaps = np.diff(np.flatnonzero(keep), prepend=-1) - 1

    def cost(w):
        return (keep.sum() + np.sum(gaps >> w)) * (w + 4)

    best = best_gap_bits(keep, value_bits=4)
    assert cost(best) == min(cost(w) for w in range(1, 17))
    assert 4 <= best <= 6  # the paper's 5 bits for fc layers at ~8% density
    assert best_gap_bits(rng.random(100_000) < 0.005, value_bits=4) > best  # sparser: wider gaps


def test_gaps_running_past_the_end_are_refused():
    with pytest.raises(WeightzipError, match="past the array"):
        positions_from_gaps(np.array([3, 4]), 8)
    with pytest.raises(WeightzipError, match="gap_bits"):
        relative_positions(np.ones(3, dtype=bool), 0)


def reference_entries(keep, gap_bits):
    """Entries written out plainly: walk the positions, emit a filler whenever the gap would overflow."""
    gaps, positions, last, span = [], [], -1, 1 << gap_bits
    for position in np.flatnonzero(keep):
        gap = position - last - 1
        while gap >= span:
            last += span
            gaps.append(span - 1)
            positions.append(last)
            gap -= span
        gaps.append(gap)
        positions.append(position)
        last = position
    return gaps, positions


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3000), st.floats(0.0, 1.0), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_entries_and_best_width_equal_a_plain_reference(length, density, gap_bits, seed):
    keep = np.random.default_rng(seed).random(length) < density ** 3  # long empty runs too
    stream = relative_positions(keep, gap_bits)
    gaps, positions = reference_entries(keep, gap_bits)
    np.testing.assert_array_equal(stream.gaps, gaps)
    np.testing.assert_array_equal(stream.positions, positions)
    assert stream.fillers == len(gaps) - int(keep.sum())
    costs = {w: len(reference_entries(keep, w)[0]) * (w + 3.5) for w in range(1, 17)}
    assert costs[best_gap_bits(keep, 3.5)] == min(costs.values())
