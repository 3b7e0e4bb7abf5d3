"""Exact 1-D k-means (`optimal_centroids`, `fit_centroids(..., "optimal")`) against brute force."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightzip.core import fit_centroids, lloyd_refine, optimal_centroids, optimal_partition, relative_sse, sse
from weightzip.core.sample import SortedSample

# A few repeated values mixed with arbitrary ones, so that duplicates are common.
POOL = [-2.5, -1.0, 0.0, 0.25, 0.25, 1.0, 3.0]
VALUE = st.one_of(st.sampled_from(POOL), st.floats(-50, 50, allow_nan=False, allow_subnormal=False))


def direct_sse(values, centroids, weights=None):
    """Σ w·min_c (x − c)², by an explicit n × k distance matrix."""
    values = np.asarray(values, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    distance = (values[:, None] - centroids[None, :]) ** 2
    return float((weights * distance.min(axis=1)).sum())


def brute_force_contiguous(values, weights, k):
    """Smallest SSE over every split of the sorted points into k contiguous non-empty runs."""
    order = np.argsort(values, kind="stable")
    x = np.asarray(values, dtype=np.float64)[order]
    w = np.asarray(weights, dtype=np.float64)[order]
    n = x.shape[0]
    best = np.inf
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        total = 0.0
        for start, end in zip(bounds[:-1], bounds[1:]):
            run_w, run_x = w[start:end], x[start:end]
            if run_w.sum() > 0:
                mean = (run_w * run_x).sum() / run_w.sum()
                total += float((run_w * (run_x - mean) ** 2).sum())
        best = min(best, total)
    return best


def brute_force_any_assignment(values, k):
    """Smallest SSE over every assignment of the points to k labels (no contiguity assumed)."""
    x = np.asarray(values, dtype=np.float64)
    best = np.inf
    for labels in itertools.product(range(k), repeat=x.shape[0]):
        labels = np.array(labels)
        total = 0.0
        for label in range(k):
            members = x[labels == label]
            if members.size:
                total += float(((members - members.mean()) ** 2).sum())
        best = min(best, total)
    return best


def tolerance(values, weights=None):
    x = np.asarray(values, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    return 1e-9 * (1.0 + float((w * x * x).sum()))


@st.composite
def small_problem(draw, weighted):
    values = draw(st.lists(VALUE, min_size=1, max_size=9))
    if weighted:
        weights = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0]) | st.floats(0, 10),
                                min_size=len(values), max_size=len(values)))
        positive = {v for v, w in zip(values, weights) if w > 0}
    else:
        weights = [1.0] * len(values)
        positive = set(values)
    if not positive:
        weights[0] = 1.0
        positive = {values[0]}
    k = draw(st.integers(1, len(positive)))
    return np.array(values), np.array(weights), k


@settings(deadline=None, max_examples=150)
@given(small_problem(weighted=False))
def test_optimal_matches_brute_force_unweighted(problem):
    values, _, k = problem
    expected = brute_force_contiguous(values, np.ones_like(values), k)
    for centroids in (optimal_centroids(values, k), fit_centroids(values, k, "optimal")):
        assert centroids.shape == (k,)
        assert np.all(np.diff(centroids) >= 0)
        assert direct_sse(values, centroids) == pytest.approx(expected, abs=tolerance(values))


@settings(deadline=None, max_examples=150)
@given(small_problem(weighted=True))
def test_optimal_matches_brute_force_weighted(problem):
    values, weights, k = problem
    positive = weights > 0
    expected = brute_force_contiguous(values[positive], weights[positive], k)
    for centroids in (optimal_centroids(values, k, sample_weight=weights),
                      fit_centroids(values, k, "optimal", sample_weight=weights)):
        assert centroids.shape == (k,)
        achieved = direct_sse(values, centroids, weights)
        assert achieved == pytest.approx(expected, abs=tolerance(values, weights))


@settings(deadline=None, max_examples=40)
@given(st.lists(VALUE, min_size=1, max_size=6), st.integers(1, 3))
def test_optimal_matches_search_over_all_assignments(values, k):
    """Independent of the contiguity theorem: every labelling of up to 6 points is tried."""
    values = np.array(values)
    k = min(k, len(set(values.tolist())))
    expected = brute_force_any_assignment(values, k)
    assert direct_sse(values, optimal_centroids(values, k)) == pytest.approx(expected, abs=tolerance(values))


def test_optimal_is_exact_on_separated_clusters_with_duplicates():
    values = np.array([1.0, 1.0, 1.0, 2.0, 10.0, 10.0, 11.0, 30.0])
    centroids = optimal_centroids(values, 3)
    np.testing.assert_allclose(centroids, [1.25, 31.0 / 3.0, 30.0])


def test_optimal_with_k_equal_to_distinct_values_reproduces_them():
    values = np.array([3.0, -1.0, 3.0, 0.5, -1.0, 8.0])
    np.testing.assert_array_equal(optimal_centroids(values, 4), [-1.0, 0.5, 3.0, 8.0])
    assert sse(values, optimal_centroids(values, 4)) == 0.0


def _lloyd_from_linear(values, k):
    sample = SortedSample.from_values(values)
    centroids, _ = lloyd_refine(sample, np.linspace(values.min(), values.max(), k), 500)
    return centroids


@pytest.mark.parametrize("k", [2, 5, 16])
def test_histogram_path_is_near_the_unbinned_optimum(k):
    values = np.random.default_rng(k).normal(size=6000)
    exact = sse(values, optimal_centroids(values, k, max_atoms=values.size))  # one atom per value
    binned_centroids = optimal_centroids(values, k, max_atoms=1024)  # 6000 > 1024: histogram atoms
    binned = sse(values, binned_centroids)
    lloyd = sse(values, _lloyd_from_linear(values, k))
    assert binned_centroids.shape == (k,)
    assert exact <= binned <= exact * (1 + 1e-3)
    # The binned optimum only cuts between bins, so it may trail a Lloyd run that happens to reach the
    # global optimum by the binning error (1.6e-6 here at k = 2), but never by more.
    assert binned <= lloyd * (1 + 1e-5)


def test_histogram_path_with_weights_stays_near_the_weighted_optimum():
    rng = np.random.default_rng(7)
    values = rng.normal(size=5000)
    weights = rng.exponential(size=5000)
    exact = sse(values, optimal_centroids(values, 8, sample_weight=weights, max_atoms=5000), sample_weight=weights)
    binned = sse(values, optimal_centroids(values, 8, sample_weight=weights, max_atoms=512), sample_weight=weights)
    assert exact <= binned <= exact * (1 + 5e-3)


def test_histogram_path_falls_back_to_distinct_values_when_bins_merge_them():
    # 0 and 1e-6 share a bin of a 4-bin histogram: 4 occupied bins < k = 5 distinct values.
    values = np.tile([0.0, 1e-6, 1.0, 2.0, 3.0], 100)
    centroids = optimal_centroids(values, 5, max_atoms=4)
    np.testing.assert_allclose(centroids, [0.0, 1e-6, 1.0, 2.0, 3.0], rtol=1e-12, atol=1e-15)


def test_optimal_centroids_accepts_float32_and_any_shape():
    values = np.random.default_rng(3).normal(size=(20, 30)).astype(np.float32)
    centroids = optimal_centroids(values, 6)
    assert centroids.dtype == np.float64
    assert direct_sse(values.ravel(), centroids) <= direct_sse(values.ravel(), _lloyd_from_linear(
        values.ravel().astype(np.float64), 6)) * (1 + 1e-9)


def quadratic_dp_sse(values, weights, k):
    """Textbook O(k·n²) dynamic programme over the sorted points (no monotonicity assumed)."""
    order = np.argsort(values, kind="stable")
    x, w = np.asarray(values, np.float64)[order], np.asarray(weights, np.float64)[order]
    n = x.shape[0]
    cost = np.zeros((n + 1, n + 1))
    for start in range(n):
        for end in range(start + 1, n + 1):
            run_w, run_x = w[start:end], x[start:end]
            if run_w.sum() > 0:
                mean = (run_w * run_x).sum() / run_w.sum()
                cost[start, end] = (run_w * (run_x - mean) ** 2).sum()
    best = cost[0].copy()
    for _ in range(1, k):
        best = np.array([np.min(best[:end] + cost[:end, end]) if end else np.inf for end in range(n + 1)])
    return float(best[n])


@pytest.mark.parametrize("seed", range(12))
def test_optimal_matches_a_quadratic_dp_on_medium_inputs(seed):
    """Larger than brute force can reach, so the divide-and-conquer and layer bounds are exercised."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 90))
    values = rng.choice([rng.normal(size=n), rng.integers(-6, 7, size=n).astype(float),
                         rng.standard_t(2, size=n)])
    weights = rng.choice([0.0, 0.3, 1.0, 4.0], size=n) if seed % 2 else np.ones(n)
    positive = weights > 0
    k = int(rng.integers(1, min(25, len(np.unique(values[positive]))) + 1))
    expected = quadratic_dp_sse(values[positive], weights[positive], k)
    achieved = direct_sse(values, optimal_centroids(values, k, sample_weight=weights), weights)
    assert achieved == pytest.approx(expected, abs=tolerance(values, weights))


# ---------------------------------------------------------------- exactness on offset data (issue 10)


def fraction_optimum(values, weights, k):
    """Independent exact solver: the O(k·n²) DP over the sorted distinct values in rational arithmetic.

    Every float is converted to a Fraction exactly, and run costs Σw·x² − (Σw·x)²/Σw are exact, so no
    cancellation can occur: this is the true optimum of the 1-D k-means problem on these values.
    """
    from fractions import Fraction

    atoms = {}
    for x, w in zip(np.asarray(values, np.float64).tolist(), np.asarray(weights, np.float64).tolist()):
        if w > 0:
            atoms[Fraction(x)] = atoms.get(Fraction(x), 0) + Fraction(w)
    xs = sorted(atoms)
    cw, c1, c2 = [Fraction(0)], [Fraction(0)], [Fraction(0)]
    for x in xs:
        cw.append(cw[-1] + atoms[x])
        c1.append(c1[-1] + atoms[x] * x)
        c2.append(c2[-1] + atoms[x] * x * x)

    def cost(m, i):
        total = c1[i] - c1[m]
        return c2[i] - c2[m] - total * total / (cw[i] - cw[m])

    n = len(xs)
    best = [None] + [cost(0, i) for i in range(1, n + 1)]
    for j in range(1, k):
        best = [None] * (j + 1) + [min(best[m] + cost(m, i) for m in range(j, i)) for i in range(j + 1, n + 1)]
    return best[n]


def fraction_partition_cost(values, weights, upper_bounds):
    """Exact Σw·(x − run mean)² of the partition that `upper_bounds` defines, in rational arithmetic."""
    from fractions import Fraction

    runs = np.searchsorted(upper_bounds, values, side="left")
    total = Fraction(0)
    for run in np.unique(runs):
        members = runs == run
        w = [Fraction(v) for v in np.asarray(weights, np.float64)[members].tolist()]
        x = [Fraction(v) for v in np.asarray(values, np.float64)[members].tolist()]
        weight = sum(w)
        if weight > 0:
            first = sum(a * b for a, b in zip(w, x))
            total += sum(a * b * b for a, b in zip(w, x)) - first * first / weight
    return total


@pytest.mark.parametrize("offset", [0.0, 1.0, -1e3, 1e8])
@pytest.mark.parametrize("spread", [1e-5, 1e-2])
@pytest.mark.parametrize("weighted", [False, True])
def test_optimal_is_exact_on_offset_data_against_a_rational_solver(offset, spread, weighted):
    """LayerNorm-like data (offset ≫ spread): raw prefix sums gave up to 48,000× the optimum here."""
    rng = np.random.default_rng(int(abs(offset)) % 97 + int(1 / spread) % 89 + weighted)
    values = offset + spread * rng.standard_normal(32)
    values[:5] = values[5:10]  # duplicates
    weights = rng.choice([0.0, 0.25, 1.0, 3.0], size=32) if weighted else np.ones(32)
    for k in (2, 7):
        optimum = fraction_optimum(values, weights, k)
        partition = optimal_partition(values, k, sample_weight=weights if weighted else None)
        assert partition.exact
        achieved = fraction_partition_cost(values, weights, partition.upper_bounds)
        assert optimum <= achieved
        assert float(achieved / optimum) <= 1 + 1e-9
        assert partition.sse == pytest.approx(float(optimum), rel=1e-9)


@pytest.mark.parametrize("offset", [0.0, 1.0, 1e4])
def test_binned_path_on_offset_data_is_near_the_exact_optimum(offset):
    """More values than max_atoms: bins of offset data keep their exact moments, centred."""
    values = (offset + 1e-3 * np.random.default_rng(5).standard_normal(20000)).astype(np.float64)
    exact = optimal_partition(values, 8, max_atoms=None)
    binned = optimal_partition(values, 8, max_atoms=2048)
    assert exact.exact and not binned.exact
    assert exact.sse <= binned.sse <= exact.sse * (1 + 1e-3)
    # The reported SSE is that of the partition; nearest-centroid assignment can only improve on it.
    assert exact.sse == pytest.approx(sse(values, exact.centroids), rel=1e-9)
    assert sse(values, binned.centroids) <= binned.sse * (1 + 1e-12)


def test_sixteen_bit_data_is_solved_exactly_whatever_its_size():
    rng = np.random.default_rng(8)
    half = rng.normal(size=30000).astype(np.float16)
    bf16 = (rng.normal(size=30000).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    bf16[:5] = -0.0
    bf16[5:10] = 0.0
    for values in (half, bf16):
        fast = optimal_partition(values, 16, max_atoms=1024)  # 30,000 > max_atoms, yet exact
        reference = optimal_partition(values, 16, max_atoms=None)
        assert fast.exact
        np.testing.assert_array_equal(fast.centroids, reference.centroids)
        assert fast.sse == pytest.approx(reference.sse, rel=1e-12)


def test_binned_path_is_marked_exact_when_no_bin_holds_two_values():
    values = np.repeat(np.array([0.0, 1.0, 2.5, 7.0, 7.25]), 500)
    partition = optimal_partition(values, 3, max_atoms=1024)
    assert partition.exact
    np.testing.assert_allclose(partition.centroids, [0.5, 2.5, 7.125])
    np.testing.assert_array_equal(partition.upper_bounds, [1.0, 2.5])


def test_relative_sse_compares_with_the_exact_optimum_not_the_binned_one():
    values = np.random.default_rng(9).normal(size=6000)
    binned = optimal_centroids(values, 16, max_atoms=256)
    exact = optimal_centroids(values, 16, max_atoms=None)
    assert sse(values, exact) < sse(values, binned)
    assert relative_sse(values, exact) == pytest.approx(1.0, abs=1e-12)
    assert relative_sse(values, binned) > 1.0 + 1e-7


def test_exact_mode_refuses_what_it_cannot_hold():
    values = np.arange(300000, dtype=np.float64)
    with pytest.raises(ValueError, match="GiB of split points"):
        optimal_partition(values, 1000, max_atoms=None)


def test_auto_histogram_has_fewer_bins_only_above_k_128_and_stays_close_to_the_finer_one():
    from weightzip.core.optimal import default_atoms

    values = np.random.default_rng(12).standard_normal(60_000).astype(np.float32)
    assert default_atoms(16) == default_atoms(128) == 1 << 16 and default_atoms(256) == 1 << 15
    assert optimal_partition(values, 16).sse == optimal_partition(values, 16, max_atoms=1 << 16).sse
    auto = optimal_partition(values, 256)
    assert auto.sse == optimal_partition(values, 256, max_atoms=1 << 15).sse
    finer = optimal_partition(values, 256, max_atoms=1 << 16)
    assert finer.sse <= auto.sse <= finer.sse * (1 + 1e-3)


@pytest.mark.parametrize("size, weighted", [(400, False), (3000, True), (90_000, True)])
def test_one_programme_for_every_k_gives_each_ks_own_optimum(size, weighted):
    from weightzip.core.optimal import optimal_partitions

    rng = np.random.default_rng(size)
    values = (rng.standard_t(4, size) * 0.03).astype(np.float32)  # 90,000 values: the binned case
    weight = rng.random(size) if weighted else None
    ks = (2, 3, 5, 8, 16, 40)
    together = optimal_partitions(values, ks, sample_weight=weight)
    assert sorted(together) == list(ks)
    for k in ks:
        alone = optimal_partition(values, k, sample_weight=weight)
        np.testing.assert_array_equal(together[k].centroids, alone.centroids)
        assert together[k].sse == alone.sse and together[k].exact == alone.exact
    assert sorted(optimal_partitions(np.array([0.0, 1.0, 2.0]), (2, 3, 4))) == [2, 3]  # k above the values: left out
