"""Tests of "do two backends land on the same metric?" over a handful of seeds.

Paired designs (one difference per seed, ``d = a - b``): :func:`paired_t`, :func:`sign_flip`
(exact permutation test of the differences' signs), :func:`sign_test`; effect size
:func:`cohen_dz`. Independent samples: :func:`welch_t`, :func:`permutation_two_sample`; effect
size :func:`cohen_d`. Several metrics at once: :func:`holm`. What the seeds could have seen:
:func:`mde_paired`, :func:`mde_welch`. The sentence a report prints: :func:`verdict` (the single
source of the wording; docs/results.md quotes it).

Every p-value is two-sided. Degenerate samples (zero spread) are defined rather than NaN: no
difference at all gives p = 1; a constant non-zero difference gives t = +-inf and p = 0.
Permutation p-values count the permutations whose statistic is at least the observed one in
absolute value (with a relative float tolerance of 1e-9, so exact ties count as ties); exact
enumeration up to ``max_exact`` arrangements, else a seeded Monte Carlo estimate
``(1 + hits) / (1 + resamples)`` (never 0).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as st

ALPHA = 0.05
POWER = 0.8
MAX_EXACT = 2 ** 20          # arrangements enumerated exactly; beyond, Monte Carlo
RESAMPLES = 100_000          # Monte Carlo arrangements
_CHUNK = 2 ** 16             # arrangements scored per numpy block
_TOL = 1e-9                  # relative tolerance of "at least as extreme"


@dataclass(frozen=True)
class Test:
    """One test's outcome: ``statistic`` (t, mean difference or count of positive differences),
    two-sided ``p``, and ``exact`` (False for a Monte Carlo p-value)."""

    name: str
    statistic: float
    p: float
    exact: bool = True

    def to_dict(self) -> dict:
        return {"statistic": _finite_or_none(self.statistic), "p": self.p, "exact": self.exact}


def _finite_or_none(x: float) -> float | None:
    """JSON has no inf/NaN: such a value is written as null."""
    return float(x) if math.isfinite(x) else None


def _vector(x, what: str, minimum: int = 1) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64).ravel()
    if len(v) < minimum:
        raise ValueError(f"{what} needs at least {minimum} values, got {len(v)}")
    if not np.isfinite(v).all():
        raise ValueError(f"{what} holds a non-finite value: {v.tolist()}")
    return v


def _paired(a, b) -> np.ndarray:
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    return a - b


# --- effect sizes ------------------------------------------------------------------------------
def mean_difference(a, b) -> float:
    """mean(a) - mean(b) (equal to the mean paired difference when a and b are paired)."""
    return float(_vector(a, "a").mean() - _vector(b, "b").mean())


def cohen_dz(a, b) -> float:
    """Paired effect size d_z = mean(d) / sd(d), d = a - b, sd with n - 1 (+-inf when every
    difference is the same non-zero value, 0 when all are 0)."""
    d = _paired(a, b)
    if len(d) < 2:
        return math.nan
    return _ratio(d.mean(), d.std(ddof=1))


def cohen_d(a, b) -> float:
    """Independent effect size d = (mean(a) - mean(b)) / s_pooled,
    s_pooled^2 = ((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)."""
    a, b = _vector(a, "a"), _vector(b, "b")
    if len(a) + len(b) < 3:
        return math.nan
    pooled = ((len(a) - 1) * _var(a) + (len(b) - 1) * _var(b)) / (len(a) + len(b) - 2)
    return _ratio(a.mean() - b.mean(), math.sqrt(pooled))


def _var(x: np.ndarray) -> float:
    return float(x.var(ddof=1)) if len(x) > 1 else 0.0


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return float(num / den)
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def _t_p(t: float, df: float) -> float:
    if math.isnan(t):
        return 1.0
    return float(min(1.0, 2 * st.t.sf(abs(t), df))) if math.isfinite(t) else 0.0


# --- paired tests ------------------------------------------------------------------------------
def paired_t(a, b) -> Test:
    """Student's paired t-test: t = mean(d) / (sd(d) / sqrt(n)), n - 1 degrees of freedom
    (``scipy.stats.ttest_rel``, with the degenerate cases of the module docstring)."""
    d = _paired(a, b)
    if len(d) < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    t = _ratio(d.mean() * math.sqrt(len(d)), d.std(ddof=1))
    return Test("paired_t", t, _t_p(t, len(d) - 1))


def _sign_matrix(codes: np.ndarray, n: int) -> np.ndarray:
    """Rows of +-1: bit j of each code is the sign of element j."""
    return ((codes[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0


def sign_flip(a, b, max_exact: int = MAX_EXACT, resamples: int = RESAMPLES,
              seed: int = 0) -> Test:
    """Permutation test of paired differences: under H0 each d_i = a_i - b_i is as likely
    positive as negative, so the null distribution of sum(d) is that of sum(+-d_i) over the
    2^n sign vectors (enumerated when 2^n <= ``max_exact``, else ``resamples`` seeded random
    vectors). The statistic reported is mean(d). Smallest possible exact p: 2 / 2^n."""
    d = _paired(a, b)
    n, observed = len(d), abs(d.sum())
    tol = _TOL * float(np.abs(d).sum())
    hits, exact = 0, 2 ** n <= max_exact
    if exact:
        for start in range(0, 2 ** n, _CHUNK):
            codes = np.arange(start, min(start + _CHUNK, 2 ** n), dtype=np.int64)
            hits += int((np.abs(_sign_matrix(codes, n) @ d) >= observed - tol).sum())
        return Test("sign_flip", float(d.mean()), hits / 2 ** n)
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        signs = rng.choice((-1.0, 1.0), size=(min(_CHUNK, resamples - start), n))
        hits += int((np.abs(signs @ d) >= observed - tol).sum())
    return Test("sign_flip", float(d.mean()), (1 + hits) / (1 + resamples), exact=False)


def sign_test(a, b) -> Test:
    """Exact two-sided sign test: of the m non-zero differences, k are positive; under H0
    k ~ Binomial(m, 1/2), p = min(1, 2 P(K <= min(k, m - k))) (ties d = 0 are dropped;
    p = 1 when every difference is 0). The statistic is k."""
    d = _paired(a, b)
    m, k = int((d != 0).sum()), int((d > 0).sum())
    if m == 0:
        return Test("sign", 0.0, 1.0)
    tail = sum(math.comb(m, i) for i in range(min(k, m - k) + 1)) / 2 ** m
    return Test("sign", float(k), min(1.0, 2 * tail))


# --- independent tests -------------------------------------------------------------------------
def welch_df(a, b) -> float:
    """Welch-Satterthwaite degrees of freedom of mean(a) - mean(b)."""
    a, b = _vector(a, "a", 2), _vector(b, "b", 2)
    va, vb = _var(a) / len(a), _var(b) / len(b)
    if va + vb == 0:
        return float(len(a) + len(b) - 2)
    return (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))


def welch_t(a, b) -> Test:
    """Welch's unequal-variance t-test: t = (mean(a) - mean(b)) / sqrt(s_a^2/n_a + s_b^2/n_b)
    on :func:`welch_df` degrees of freedom (``scipy.stats.ttest_ind(equal_var=False)``)."""
    a, b = _vector(a, "a", 2), _vector(b, "b", 2)
    t = _ratio(a.mean() - b.mean(), math.sqrt(_var(a) / len(a) + _var(b) / len(b)))
    return Test("welch_t", t, _t_p(t, welch_df(a, b)))


def _subsets(n: int, k: int, chunk: int):
    """All k-subsets of range(n) as [rows, k] int arrays, ``chunk`` rows at a time."""
    combos = itertools.combinations(range(n), k)
    while True:
        block = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, chunk)),
                            dtype=np.int64)
        if not len(block):
            return
        yield block.reshape(-1, k)


def permutation_two_sample(a, b, max_exact: int = MAX_EXACT, resamples: int = RESAMPLES,
                           seed: int = 0) -> Test:
    """Two-sample permutation test of mean(a) - mean(b): under H0 the pooled values are
    exchangeable, so the null distribution is the statistic over every way of choosing which
    n_a of them form ``a`` (enumerated when C(n_a + n_b, n_a) <= ``max_exact``, else
    ``resamples`` seeded random relabellings)."""
    a, b = _vector(a, "a"), _vector(b, "b")
    pooled, na, nb = np.concatenate([a, b]), len(a), len(b)
    total = pooled.sum()
    observed = abs(a.mean() - b.mean())
    tol = _TOL * float(np.abs(pooled).sum())

    def extreme(sum_a: np.ndarray) -> int:
        return int((np.abs(sum_a / na - (total - sum_a) / nb) >= observed - tol).sum())

    count = math.comb(na + nb, na)
    if count <= max_exact:
        hits = sum(extreme(pooled[rows].sum(axis=1)) for rows in _subsets(na + nb, na, _CHUNK))
        return Test("permutation", float(a.mean() - b.mean()), hits / count)
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        shuffled = rng.permuted(np.broadcast_to(pooled, (rows, na + nb)), axis=1)
        hits += extreme(shuffled[:, :na].sum(axis=1))
    return Test("permutation", float(a.mean() - b.mean()), (1 + hits) / (1 + resamples),
                exact=False)


# --- multiple comparisons ----------------------------------------------------------------------
def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: sort ascending p_(1..m), adjust
    p_(i) -> max over j <= i of min(1, (m - j + 1) p_(j)). Reject H_i at level alpha iff its
    adjusted p < alpha (controls the family-wise error rate)."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or ((p < 0) | (p > 1) | np.isnan(p)).any():
        raise ValueError(f"p-values must be a list of numbers in [0, 1], got {p.tolist()}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


# --- minimum detectable difference -------------------------------------------------------------
def _detectable_ncp(df: float, alpha: float, power: float) -> float:
    """The noncentrality lambda at which a two-sided level-alpha t-test on ``df`` degrees of
    freedom rejects with probability ``power``."""
    c = st.t.ppf(1 - alpha / 2, df)

    def shortfall(lam: float) -> float:
        # P(T' < -c; lam) = P(T' > c; -lam): scipy's nct.cdf far in the tail is NaN, its sf 0.
        return st.nct.sf(c, df, lam) + st.nct.sf(c, df, -lam) - power

    guess = c + st.t.ppf(power, df)
    hi = 2 * guess + 1
    while shortfall(hi) < 0:
        hi *= 2
    return float(optimize.brentq(shortfall, 0.0, hi, xtol=1e-10))


def mde_paired(differences, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference the paired t-test detects with probability ``power``:

        MDE = lambda* * s_d / sqrt(n),

    s_d the observed sd of the n differences, lambda* the noncentrality with
    1 - F(t_{1-alpha/2, n-1}; n-1, lambda*) + F(-t_{1-alpha/2, n-1}; n-1, lambda*) = power,
    F the noncentral t cdf (close to the textbook (t_{1-alpha/2, n-1} + t_{power, n-1}) s_d /
    sqrt(n)). NaN for fewer than 2 differences."""
    d = _vector(differences, "differences")
    if len(d) < 2:
        return math.nan
    return _detectable_ncp(len(d) - 1, alpha, power) * float(d.std(ddof=1)) / math.sqrt(len(d))


def mde_welch(a, b, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true difference of means Welch's test detects with probability ``power``:

        MDE = lambda* * sqrt(s_a^2/n_a + s_b^2/n_b),

    lambda* as in :func:`mde_paired` on the Welch-Satterthwaite degrees of freedom (the usual
    noncentral-t approximation of Welch's statistic), the observed sds taken as the true ones."""
    a, b = _vector(a, "a", 2), _vector(b, "b", 2)
    se = math.sqrt(_var(a) / len(a) + _var(b) / len(b))
    return _detectable_ncp(welch_df(a, b), alpha, power) * se


# --- the wording -------------------------------------------------------------------------------
def verdict(p_holm: float, mde: float, alpha: float = ALPHA, test: str | None = None) -> str:
    """The one sentence every report and docs/results.md use for a comparison: "DIFFERENT (Holm p =
    0.012)" when the Holm-corrected p is below ``alpha``, else "no difference detected at
    Holm-corrected p >= 0.05 (smallest detectable difference 0.0012)". ``test`` names the
    test that found the difference."""
    if p_holm < alpha:
        return f"DIFFERENT (Holm p = {p_holm:.3g}{', ' + test if test else ''})"
    detectable = f"{mde:.3g}" if math.isfinite(mde) else "unknown: fewer than 2 seeds"
    return (f"no difference detected at Holm-corrected p >= {alpha:g} "
            f"(smallest detectable difference {detectable})")


# --- one metric, all tests ---------------------------------------------------------------------
PAIRED_TESTS = ("paired_t", "sign_flip", "sign")
INDEPENDENT_TESTS = ("welch_t", "permutation")


def compare(a, b, paired: bool, seed: int = 0) -> dict:
    """Every test of the design for one metric (a = first backend, b = second), before Holm:
    {"diff", "effect_size", "effect_size_kind", "mde", "tests": {name: Test}}."""
    if paired:
        tests = [paired_t(a, b), sign_flip(a, b, seed=seed), sign_test(a, b)]
        effect, kind, mde = cohen_dz(a, b), "d_z", mde_paired(_paired(a, b))
    else:
        tests = [welch_t(a, b), permutation_two_sample(a, b, seed=seed)]
        effect, kind, mde = cohen_d(a, b), "d", mde_welch(a, b)
    return {"diff": mean_difference(a, b), "effect_size": effect, "effect_size_kind": kind,
            "mde": mde, "tests": {t.name: t for t in tests}}


def holm_across(rows: dict[str, dict], alpha: float = ALPHA) -> dict[str, dict]:
    """Holm-correct each test across the metrics of ``rows`` ({metric: :func:`compare`
    output}): one family per test. Adds per metric ``p_holm`` {test: p} and ``verdict``: the
    smallest Holm p over the metric's tests decides (a difference any test sees is reported),
    the detectable difference is the t-test's."""
    names = sorted({t for row in rows.values() for t in row["tests"]})
    for test in names:
        metrics = [m for m, row in rows.items() if test in row["tests"]]
        adjusted = holm([rows[m]["tests"][test].p for m in metrics])
        for m, p in zip(metrics, adjusted):
            rows[m].setdefault("p_holm", {})[test] = p
    for row in rows.values():
        test, p = min(row["p_holm"].items(), key=lambda kv: kv[1])
        row["verdict"] = verdict(p, row["mde"], alpha, test)
        row["different"] = p < alpha
    return rows
