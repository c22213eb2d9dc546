"""benchmarks.stats against scipy.stats and against cases worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from benchmarks import stats


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _mean_diff(x, y, axis=0):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


# --- paired ------------------------------------------------------------------------------------
def test_paired_t_matches_scipy(rng):
    a = rng.normal(size=7)
    b = a + rng.normal(0.4, 0.5, size=7)
    ours, ref = stats.paired_t(a, b), st.ttest_rel(a, b)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)


def test_paired_t_by_hand():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 on 2 df.
    t = stats.paired_t([2, 3, 4], [1, 1, 1])
    assert t.statistic == pytest.approx(2 * math.sqrt(3))
    assert t.p == pytest.approx(2 * st.t.sf(2 * math.sqrt(3), 2))


def test_degenerate_differences_are_defined():
    assert stats.paired_t([1, 2, 3], [1, 2, 3]).p == 1.0
    constant = stats.paired_t([2, 3, 4], [1, 2, 3])
    assert constant.statistic == math.inf and constant.p == 0.0
    assert stats.cohen_dz([2, 3, 4], [1, 2, 3]) == math.inf
    assert stats.cohen_dz([1, 2], [1, 2]) == 0.0


@pytest.mark.parametrize("n", [5, 8])
def test_sign_flip_exact_matches_scipy(rng, n):
    a, b = rng.normal(size=n), rng.normal(0.5, 1, size=n)
    ours = stats.sign_flip(a, b)
    ref = st.permutation_test((a - b,), np.mean, permutation_type="samples",
                              n_resamples=np.inf, vectorized=True)
    assert ours.exact
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert ours.statistic == pytest.approx(np.mean(a - b))


def test_sign_flip_by_hand():
    # d = (1, 2, 3): |sum| = 6 only for all + or all -: p = 2 / 8.
    assert stats.sign_flip([1, 2, 3], [0, 0, 0]).p == pytest.approx(0.25)
    # d = (1, 1, -1, 3): sums of the 16 sign vectors; |sum| >= 4 for (+,+,-,+), (+,+,+,+),
    # (+,-,+,+), (-,+,+,+) and their mirror images: 8 / 16 (ties with the observed 4 count).
    assert stats.sign_flip([1, 1, -1, 3], [0, 0, 0, 0]).p == pytest.approx(0.5)


def test_sign_flip_counts_float_ties():
    # Accuracy-like values whose differences are whole hundredths: other arrangements reach
    # the observed |sum| up to rounding, and must count as ties (without the tolerance this
    # case gives 150/256 instead of 158/256). Reference: the same test in integer hundredths.
    import itertools
    hundredths = np.array([3, 1, 1, 8, -4, 6, 3, -9])
    a = np.array([0.69, 0.92, 0.77, 0.51, 0.88, 0.86, 0.92, 0.58])
    observed = abs(hundredths.sum())
    hits = sum(abs(int(np.dot(signs, hundredths))) >= observed
               for signs in itertools.product((-1, 1), repeat=len(hundredths)))
    assert hits == 158
    assert stats.sign_flip(a, a - hundredths / 100).p == pytest.approx(hits / 2 ** 8)


def test_sign_flip_monte_carlo_is_seeded_and_close_to_exact(rng):
    a, b = rng.normal(size=12), rng.normal(0.6, 1, size=12)
    exact = stats.sign_flip(a, b)
    mc = stats.sign_flip(a, b, max_exact=100, resamples=40_000, seed=3)
    assert not mc.exact and exact.exact
    assert mc.p == stats.sign_flip(a, b, max_exact=100, resamples=40_000, seed=3).p
    assert mc.p == pytest.approx(exact.p, abs=4 * math.sqrt(exact.p * (1 - exact.p) / 40_000)
                                 + 1e-4)


def test_sign_flip_exact_up_to_twenty_pairs(rng):
    d = rng.normal(0.2, 1, size=20)
    assert stats.sign_flip(d, np.zeros(20)).exact
    assert not stats.sign_flip(rng.normal(size=21), np.zeros(21)).exact


@pytest.mark.parametrize("diffs", [[1, 2, 3, -1, 4, 5, 6], [1, -1], [-2, -3, -4, -5, 1]])
def test_sign_test_matches_scipy_binomtest(diffs):
    d = np.array(diffs, dtype=float)
    k, m = int((d > 0).sum()), int((d != 0).sum())
    assert stats.sign_test(d, np.zeros(len(d))).p == pytest.approx(st.binomtest(k, m).pvalue)


def test_sign_test_by_hand_drops_ties():
    # 5 non-zero differences, all positive: p = 2 / 32; the zero is dropped.
    t = stats.sign_test([1, 2, 3, 4, 5, 0], [0, 0, 0, 0, 0, 0])
    assert t.statistic == 5 and t.p == pytest.approx(2 / 32)
    assert stats.sign_test([1, 1], [1, 1]).p == 1.0


# --- independent ------------------------------------------------------------------------------
def test_welch_matches_scipy(rng):
    a, b = rng.normal(size=6), rng.normal(0.8, 2.5, size=9)
    ours, ref = stats.welch_t(a, b), st.ttest_ind(a, b, equal_var=False)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert stats.welch_df(a, b) == pytest.approx(ref.df, rel=1e-12)


def test_permutation_two_sample_exact_matches_scipy(rng):
    # Equal sizes: the null distribution of the mean difference is symmetric, so scipy's
    # "twice the smaller tail" equals our "|statistic| at least the observed".
    a, b = rng.normal(size=6), rng.normal(1.0, 1, size=6)
    ours = stats.permutation_two_sample(a, b)
    ref = st.permutation_test((a, b), _mean_diff, n_resamples=np.inf, vectorized=True)
    assert ours.exact and ours.p == pytest.approx(ref.pvalue, rel=1e-12)


def test_permutation_two_sample_by_hand():
    # a = (3, 4), b = (0, 1): of the C(4, 2) = 6 splits, only {3, 4} vs {0, 1} and its mirror
    # reach |mean difference| 3: p = 2 / 6.
    assert stats.permutation_two_sample([3, 4], [0, 1]).p == pytest.approx(1 / 3)
    # Unequal sizes, brute force over the 10 splits of 5 values into 2 + 3.
    a, b = [5.0, 2.0], [1.0, 0.0, 4.0]
    pooled = a + b
    import itertools
    obs = abs(np.mean(a) - np.mean(b))
    hits = sum(abs(np.mean([pooled[i] for i in s])
                   - np.mean([pooled[i] for i in range(5) if i not in s])) >= obs - 1e-12
               for s in itertools.combinations(range(5), 2))
    assert stats.permutation_two_sample(a, b).p == pytest.approx(hits / 10)


def test_permutation_two_sample_monte_carlo_is_seeded_and_close(rng):
    a, b = rng.normal(size=8), rng.normal(0.9, 1, size=8)
    exact = stats.permutation_two_sample(a, b)
    mc = stats.permutation_two_sample(a, b, max_exact=1000, resamples=40_000, seed=1)
    assert not mc.exact
    assert mc.p == stats.permutation_two_sample(a, b, max_exact=1000, resamples=40_000,
                                                seed=1).p
    assert mc.p == pytest.approx(exact.p, abs=4 * math.sqrt(exact.p * (1 - exact.p) / 40_000)
                                 + 1e-4)


def test_cohen_d_by_hand():
    # a = (1, 2, 3), b = (3, 4, 5): means differ by -2, both sd 1 -> d = -2.
    assert stats.cohen_d([1, 2, 3], [3, 4, 5]) == pytest.approx(-2.0)
    # d_z: d = (1, 2, 3), mean 2, sd 1.
    assert stats.cohen_dz([2, 3, 4], [1, 1, 1]) == pytest.approx(2.0)
    assert stats.mean_difference([1, 2, 3], [3, 4, 5, 6]) == pytest.approx(-2.5)


# --- Holm -------------------------------------------------------------------------------------
def test_holm_known_example():
    # Sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 = 0.02, 0.03, 0.06,
    # 0.04 -> monotone 0.02, 0.03, 0.06, 0.06; back in input order:
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_order():
    assert stats.holm([0.5, 0.9, 0.2]) == pytest.approx([1.0, 1.0, 0.6])
    assert stats.holm([0.04]) == [0.04]
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([0.1, 1.2])


def test_holm_agrees_with_scipy_false_discovery_free_reference():
    # Against a direct implementation of the step-down definition.
    p = np.array([0.001, 0.2, 0.012, 0.013, 0.04, 0.7])
    order, m = np.argsort(p), len(p)
    running, ref = 0.0, np.empty(m)
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        ref[i] = running
    assert stats.holm(p) == pytest.approx(ref.tolist())


# --- minimum detectable difference -------------------------------------------------------------
def test_mde_paired_has_the_stated_power():
    # At the MDE the noncentral t with lambda = MDE / (sd / sqrt n) rejects with power 0.8...
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.0, 0.4])
    n, sd = len(d), d.std(ddof=1)
    mde = stats.mde_paired(d)
    lam, c = mde / (sd / math.sqrt(n)), st.t.ppf(0.975, n - 1)
    assert st.nct.sf(c, n - 1, lam) + st.nct.cdf(-c, n - 1, lam) == pytest.approx(0.8, abs=1e-6)
    # ... and sits just above the textbook (t_0.975 + t_0.8) sd / sqrt(n) approximation.
    approx = (c + st.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert approx < mde < 1.05 * approx


def test_mde_paired_power_by_simulation():
    # Simulated paired t-tests at a true difference of the MDE (sd 1, n 10) reject ~80%.
    rng = np.random.default_rng(0)
    n = 10
    mde = stats.mde_paired(np.array([-1.0, 1.0] * 5) * math.sqrt(0.9))  # sd exactly 1
    x = rng.normal(mde, 1.0, size=(50_000, n))
    t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > st.t.ppf(0.975, n - 1)) == pytest.approx(0.8, abs=0.01)


def test_mde_shrinks_with_seeds_and_welch_uses_both_spreads(rng):
    assert stats.mde_paired([0.1, -0.1, 0.1]) > stats.mde_paired([0.1, -0.1] * 10)
    a, b = rng.normal(0, 1, size=5), rng.normal(0, 1, size=5)
    wider = stats.mde_welch(a, b * 3)
    assert wider > stats.mde_welch(a, b)
    assert math.isnan(stats.mde_paired([0.3]))


# --- wording and the per-metric comparison -----------------------------------------------------
def test_verdict_wording():
    assert stats.verdict(0.2, 0.00123) == ("no difference detected at Holm-corrected p >= 0.05 "
                                          "(smallest detectable difference 0.00123)")
    assert stats.verdict(0.012, 0.001, test="paired_t") == "DIFFERENT (Holm p = 0.012, paired_t)"
    assert stats.verdict(0.05, 0.1).startswith("no difference")
    assert "fewer than 2 seeds" in stats.verdict(0.5, math.nan)


def test_holm_across_flags_a_shifted_metric_only():
    rng = np.random.default_rng(2)
    base = rng.normal(0.5, 0.01, size=10)
    rows = {"same": stats.compare(base, base + rng.normal(0, 0.01, size=10), paired=True),
            "shifted": stats.compare(base + 0.05, base + rng.normal(0, 0.001, size=10),
                                     paired=True)}
    rows = stats.holm_across(rows)
    assert set(rows["same"]["p_holm"]) == set(stats.PAIRED_TESTS)
    assert rows["shifted"]["different"] and rows["shifted"]["verdict"].startswith("DIFFERENT")
    assert not rows["same"]["different"]
    assert rows["same"]["verdict"].startswith("no difference detected")
    # Two metrics per family: Holm doubles the smaller p (capped at 1).
    p = [rows[m]["tests"]["paired_t"].p for m in ("same", "shifted")]
    assert rows["shifted"]["p_holm"]["paired_t"] == pytest.approx(min(1.0, 2 * min(p)))


def test_compare_independent_runs_welch_and_permutation(rng):
    a, b = rng.normal(size=5), rng.normal(size=5)
    row = stats.compare(a, b, paired=False)
    assert set(row["tests"]) == set(stats.INDEPENDENT_TESTS)
    assert row["effect_size_kind"] == "d"
    assert row["tests"]["welch_t"].p == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
