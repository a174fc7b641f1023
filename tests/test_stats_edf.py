"""Weighted KS / AD / Wasserstein: agreement with scipy, invariances, binned forms, ADinf."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import integrate, special, stats

from validator.stats.edf import (
    ad_discrete_sf,
    ad_hist,
    ad_inf_cdf,
    ad_inf_sf,
    ad_inf_sf_asymptotic,
    ad_sigma,
    ad_weighted,
    ks_hist,
    ks_weighted,
    wasserstein_hist,
    wasserstein_weighted,
)
from validator.stats.result import GofResult

SIZES = [(40, 55), (500, 300), (2000, 1500), (3001, 777)]


def _anderson_scipy(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns when its p-value is capped
        return stats.anderson_ksamp([a, b], variant="midrank")


# ------------------------------------------------------------------------------------------
# Hand computations from the definitions (independent of validator.stats.edf)
# ------------------------------------------------------------------------------------------


def _ecdf(x, w, grid):
    """Weighted ECDF F(t) = sum_{x_i <= t} w_i / sum w at each t of ``grid`` (raw, unclipped)."""
    x = np.asarray(x, dtype=float)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=float)
    order = np.argsort(x, kind="stable")
    cum = np.r_[0.0, np.cumsum(w[order])] / np.sum(w)
    return cum[np.searchsorted(x[order], grid, side="right")]


def _monotone(cdf):
    """The documented repair of a non-monotone cumulative: mean of its running maximum and its
    reversed running minimum, clipped to [0, 1], last value 1."""
    upper = np.maximum.accumulate(cdf)
    lower = np.minimum.accumulate(cdf[::-1])[::-1]
    mono = np.clip(0.5 * (upper + lower), 0.0, 1.0)
    mono[-1] = 1.0
    return mono


def _kish(w):
    w = np.asarray(w, dtype=float)
    return np.sum(w) ** 2 / np.sum(w**2)


def _a2_midrank(cdf_1, cdf_2, n_1, n_2):
    """Scholz & Stephens (JASA 82 (1987) 918) eq. (7), k = 2, written out:

    A2 = (N-1)/N^2 sum_i 1/n_i sum_j l_j (N M_aij - n_i B_aj)^2 / (B_aj (N - B_aj) - N l_j/4)

    with f_ij = n_i (F_i(z_j) - F_i(z_{j-1})) the (weighted) counts of sample i at the j-th
    distinct pooled value, l_j = f_1j + f_2j, M_aij = sum_{m<=j} f_im - f_ij/2,
    B_aj = sum_{m<=j} l_m - l_j/2.
    """
    n = n_1 + n_2
    f = [n_1 * np.diff(cdf_1, prepend=0.0), n_2 * np.diff(cdf_2, prepend=0.0)]
    l_j = f[0] + f[1]
    b_a = np.cumsum(l_j) - 0.5 * l_j
    use = l_j > 0
    total = 0.0
    for f_i, n_i in zip(f, (n_1, n_2), strict=True):
        m_a = np.cumsum(f_i) - 0.5 * f_i
        num = (n * m_a - n_i * b_a) ** 2
        den = b_a * (n - b_a) - n * l_j / 4.0
        total += np.sum(l_j[use] * num[use] / den[use]) / n_i
    return (n - 1.0) / n**2 * total


def test_hand_a2_is_scipys_midrank_statistic():
    # Check of the written-out formula itself: scipy's T = (A2 - 1)/sigma_N, sigma_N depending
    # on the sample sizes only, so for two pairs of samples of the same sizes the ratio of
    # (A2 - 1) equals the ratio of scipy's statistics.
    rng = np.random.default_rng(21)
    hand, ref = [], []
    for shift in (0.0, 0.3):
        a = np.round(rng.normal(size=300), 1)  # with ties
        b = np.round(rng.normal(shift, 1.0, size=200), 1)
        grid = np.unique(np.r_[a, b])
        hand.append(_a2_midrank(_ecdf(a, None, grid), _ecdf(b, None, grid), 300, 200))
        ref.append(_anderson_scipy(a, b).statistic)
        assert ad_weighted(b, a, None).details["A2"] == pytest.approx(hand[-1], rel=1e-10)
    assert (hand[1] - 1.0) / (hand[0] - 1.0) == pytest.approx(ref[1] / ref[0], rel=1e-9)


# ------------------------------------------------------------------------------------------
# Kolmogorov–Smirnov
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n1", "n2"), SIZES)
def test_ks_unit_weights_matches_scipy_asymp(n1, n2):
    rng = np.random.default_rng(n1 + n2)
    a = rng.normal(size=n1)
    b = rng.normal(0.1, 1.1, size=n2)
    res = ks_weighted(b, a, np.ones(n1))
    ref = stats.ks_2samp(b, a, method="asymp")
    assert isinstance(res, GofResult)
    assert res.method == "ks"
    assert res.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert res.details["tie_shift"] == 0.0
    assert res.effect_size == res.statistic
    assert res.effect_name == "ks_distance"


def test_ks_statistic_with_ties_matches_scipy_and_pvalue_is_corrected():
    rng = np.random.default_rng(11)
    a = np.round(rng.normal(size=1500), 1)
    b = np.round(rng.normal(0.05, 1.0, size=1200), 1)
    res = ks_weighted(b, a, None)
    ref = stats.ks_2samp(b, a, method="asymp")
    assert res.statistic == pytest.approx(ref.statistic, abs=1e-12)
    # scipy ignores ties (conservative); the continuity correction lowers the p-value.
    assert res.details["tie_shift"] > 0
    assert res.pvalue < ref.pvalue


def test_ks_detects_planted_shift():
    rng = np.random.default_rng(3)
    x_sim = rng.normal(size=4000)
    w_sim = rng.choice([0.4, 1.6], size=4000)
    res = ks_weighted(rng.normal(0.2, 1.0, size=3000), x_sim, w_sim)
    assert res.pvalue < 1e-4
    assert res.reliable
    # Data shifted up: F_sim > F_data, i.e. d_plus = max(F_sim − F_data) is the statistic;
    # the population distance is Φ(0.1) − Φ(−0.1) = 0.080.
    assert res.details["d_plus"] == res.statistic > res.details["d_minus"]
    assert res.statistic == pytest.approx(0.080, abs=0.02)


# ------------------------------------------------------------------------------------------
# Anderson–Darling
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n1", "n2"), SIZES)
@pytest.mark.parametrize("ties", [False, True])
def test_ad_unit_weights_statistic_matches_scipy(n1, n2, ties):
    rng = np.random.default_rng(7 * n1 + n2)
    a = rng.normal(size=n1)
    b = rng.normal(0.15, 1.0, size=n2)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    res = ad_weighted(b, a, None)
    ref = _anderson_scipy(a, b)
    assert res.method == "ad"
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-10, abs=1e-10)
    # The normalisation of T (Scholz & Stephens eq. 4) uses the sample sizes.
    assert res.details["A2"] == pytest.approx(
        1.0 + ref.statistic * res.details["sigma_N"], rel=1e-10
    )


def test_ad_pvalue_agrees_with_scipy_table_inside_its_range():
    """scipy interpolates Scholz & Stephens' table (clipped to [0.001, 0.25]); inside that range
    our A∞² p-value agrees with it within the table's interpolation precision. Measured over
    these 300 random pairs: ratio within [0.978, 1.028], max absolute difference 0.0043."""
    rng = np.random.default_rng(5)
    ratios, checked = [], 0
    for _ in range(300):
        n1, n2 = rng.integers(30, 800, size=2)
        a = rng.normal(size=n1)
        b = rng.normal(rng.uniform(0.0, 0.35), 1.0, size=n2)
        ref = _anderson_scipy(a, b)
        if 0.001 < ref.pvalue < 0.25:
            ratios.append(ad_weighted(b, a, None).pvalue / ref.pvalue)
            checked += 1
    ratios = np.array(ratios)
    assert checked > 50
    assert np.all(np.abs(ratios - 1.0) < 0.05)


def test_ad_constant_weight_equals_unit_weight():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=700), rng.normal(0.1, 1, size=500)
    res = ad_weighted(b, a, np.full(a.size, 0.37))
    # Reference: scipy on the unweighted samples (a constant weight has n_eff = n).
    ref = _anderson_scipy(a, b)
    assert res.details["n_eff_sim"] == pytest.approx(700.0, rel=1e-12)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-10)
    # scipy's p-value interpolates Scholz & Stephens' table (0.061 here; see the test above
    # for the precision of that interpolation).
    assert 0.001 < ref.pvalue < 0.25
    assert res.pvalue == pytest.approx(ref.pvalue, rel=0.05)


def test_ad_detects_planted_shift_and_effect_size_is_stable():
    rng = np.random.default_rng(4)
    effects = []
    for n in (2000, 20000):
        x_sim = rng.normal(size=n)
        res = ad_weighted(rng.normal(0.3, 1.0, size=n), x_sim, np.full(n, 0.5))
        assert res.pvalue < 1e-6
        effects.append(res.effect_size)
    # A²/n_h estimates ∫(F1 − F2)²/(H(1 − H)) dH, which does not grow with n.
    assert effects[1] == pytest.approx(effects[0], rel=0.3)


# ------------------------------------------------------------------------------------------
# Asymptotic Anderson–Darling distribution (Marsaglia & Marsaglia 2004)
# ------------------------------------------------------------------------------------------

# Classical asymptotic upper percentage points of A² (Anderson & Darling 1954; Stephens 1974,
# JASA 69, 730, Table 1A, case 0), quoted to 3 decimals. (The 15% point 1.610 of that table is
# off by 2e-3 in probability: ADinf(1.610) = 0.8477; M&M's series agrees with the independent
# Imhof inversion below, so the table entry is the less accurate one.)
CLASSICAL = [(1.248, 0.75), (1.933, 0.90), (2.492, 0.95), (3.070, 0.975), (3.857, 0.99)]


@pytest.mark.parametrize(("z", "cdf"), CLASSICAL)
def test_adinf_reproduces_classical_critical_values(z, cdf):
    # The table's 3-decimal rounding of z allows ~3e-4 in the probability.
    assert ad_inf_cdf(z) == pytest.approx(cdf, abs=5e-4)
    assert ad_inf_sf(z) == pytest.approx(1.0 - cdf, abs=5e-4)


def _imhof_cdf_reference(z: float, n_terms: int = 3000) -> float:
    """P(Σ_j Z_j²/(j(j+1)) ≤ z) by Imhof's inversion, written independently of the module."""
    j = np.arange(1, n_terms + 1, dtype=float)
    lam = 1.0 / (j * (j + 1.0))
    x = z - 1.0 / (n_terms + 1.0)  # the omitted terms' mean

    def f(u):
        theta = 0.5 * np.sum(np.arctan(lam * u)) - 0.5 * x * u
        rho = np.exp(0.25 * np.sum(np.log1p((lam * u) ** 2)))
        return math.sin(theta) / (u * rho)

    val, _ = integrate.quad(f, 0.0, np.inf, limit=1000, epsabs=1e-12)
    return 0.5 - val / math.pi


@pytest.mark.parametrize("z", [0.3, 1.0, 2.492, 5.0])
def test_adinf_matches_independent_imhof_inversion(z):
    assert ad_inf_cdf(z) == pytest.approx(_imhof_cdf_reference(z), abs=2e-6)


@pytest.mark.parametrize("z", [0.05, 0.1, 0.15, 0.2])
def test_adinf_lower_tail_matches_independent_imhof_inversion(z):
    # Lower tail, where the CDF is tiny (1.7e-10 at z = 0.05): relative agreement.
    assert ad_inf_cdf(z) == pytest.approx(_imhof_cdf_reference(z), rel=1e-4)
    assert ad_inf_sf(z) == pytest.approx(1.0 - _imhof_cdf_reference(z), rel=1e-9)


def test_adinf_far_lower_tail_is_below_an_analytic_bound():
    # A∞² = sum_j Z_j²/(j(j+1)) <= z needs every term <= z, so by independence
    # P(A∞² <= z) <= prod_{j<=J} P(chi2_1 <= j(j+1) z) for any J.
    for z in (0.001, 0.01, 0.03):
        j = np.arange(1, 60)
        bound = float(np.prod(stats.chi2.cdf(j * (j + 1) * z, 1)))
        assert 0.0 <= ad_inf_cdf(z) <= bound
        assert 1.0 - bound <= ad_inf_sf(z) <= 1.0
    assert ad_inf_cdf(0.03) > 0.0  # not a hard zero where the law has mass (1.6e-17)


def _adinf_sf_reference(z: np.ndarray, n_samples: int = 40_000, n_terms: int = 200) -> np.ndarray:
    """P(A∞² > z) by conditional Monte Carlo, independent of the module's series and expansion.

    A∞² = Z_1²/2 + R with R = sum_{j>=2} Z_j²/(j(j+1)) independent of Z_1, so
    P(A∞² > z) = E[P(Z_1² > 2(z - R))] = E[erfc(sqrt(z - R))] (1 where R >= z). R is sampled
    (terms beyond n_terms replaced by their mean 1/(n_terms + 1)); the relative standard error
    is about 0.3/sqrt(n_samples) at every z, as erfc(sqrt(z - R)) ~ e^(R - z).
    """
    rng = np.random.default_rng(2004)
    j = np.arange(2, n_terms + 1, dtype=float)
    r = rng.chisquare(1.0, size=(n_samples, j.size)) @ (1.0 / (j * (j + 1.0)))
    r += 1.0 / (n_terms + 1.0)
    s = np.asarray(z, dtype=float)[:, None] - r[None, :]
    return np.where(s > 0, special.erfc(np.sqrt(np.clip(s, 0.0, None))), 1.0).mean(axis=1)


def test_adinf_upper_tail_matches_conditional_monte_carlo():
    # Covers both evaluations: the series (z < 18) and the asymptotic expansion (z >= 18),
    # down to p ~ 1e-45. 40000 samples: relative standard error ~1.5e-3.
    z = np.array([3.0, 10.0, 15.0, 17.9, 18.0, 25.0, 40.0, 100.0])
    ref = _adinf_sf_reference(z)
    got = np.array([ad_inf_sf(v) for v in z])
    np.testing.assert_allclose(got, ref, rtol=1e-2)
    assert np.all(np.diff(got) < 0)
    # The expansion alone also agrees with the series where both are accurate.
    for v in (10.0, 12.0, 15.0):
        assert ad_inf_sf_asymptotic(v) == pytest.approx(1.0 - ad_inf_cdf(v), rel=1e-4)


def test_ad_discrete_limit_matches_monte_carlo():
    rng = np.random.default_rng(0)
    pooled = np.array([0.1, 0.35, 0.2, 0.25, 0.1])
    t = np.concatenate([[0.0], np.cumsum(pooled)])
    n = 200_000
    w = np.cumsum(rng.normal(size=(n, pooled.size)) * np.sqrt(pooled), axis=1)
    w = np.concatenate([np.zeros((n, 1)), w], axis=1)
    bridge = w - t[None, :] * w[:, -1:]
    x = 0.5 * (bridge[:, :-1] + bridge[:, 1:])
    tau = 0.5 * (t[:-1] + t[1:])
    q = np.sum(x**2 * pooled / (tau * (1 - tau) - pooled / 4), axis=1)
    assert q.mean() == pytest.approx(1.0, abs=0.01)  # E = 1 exactly in the discrete limit
    for a in (0.5, 1.5, 3.0, 5.0):
        p_mc = np.mean(q > a)
        sd = math.sqrt(p_mc * (1 - p_mc) / n)
        assert ad_discrete_sf(a, pooled) == pytest.approx(p_mc, abs=4 * sd + 1e-4)


def test_ad_discrete_limit_tends_to_adinf_for_fine_grids():
    pooled = np.full(100, 0.01)
    for a in (0.5, 1.0, 2.5, 4.0):
        assert ad_discrete_sf(a, pooled) == pytest.approx(ad_inf_sf(a), rel=0.06)


# ------------------------------------------------------------------------------------------
# Wasserstein
# ------------------------------------------------------------------------------------------


def test_wasserstein_matches_scipy():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=900), rng.exponential(size=700)
    wa = rng.uniform(0.1, 3.0, size=900)
    assert wasserstein_weighted(b, a, None) == pytest.approx(
        stats.wasserstein_distance(a, b), rel=1e-12
    )
    assert wasserstein_weighted(b, a, wa) == pytest.approx(
        stats.wasserstein_distance(a, b, wa), rel=1e-12
    )
    assert wasserstein_weighted(b, a, wa, normalise_by=2.0) == pytest.approx(
        stats.wasserstein_distance(a, b, wa) / 2.0, rel=1e-12
    )


def test_wasserstein_hist_matches_scipy_at_positions():
    rng = np.random.default_rng(9)
    pos = np.sort(rng.normal(size=300))
    data = rng.poisson(20, size=300).astype(float)
    sim = rng.uniform(0.0, 40.0, size=300)
    shuffled = rng.permutation(300)  # any order of positions is accepted
    got = wasserstein_hist(data[shuffled], sim[shuffled], pos[shuffled])
    ref = stats.wasserstein_distance(pos, pos, u_weights=data, v_weights=sim)
    assert got == pytest.approx(ref, rel=1e-12)


# ------------------------------------------------------------------------------------------
# Weights: replication, binned form, negative weights
# ------------------------------------------------------------------------------------------


def test_integer_weights_equal_replication_for_distance_statistics():
    rng = np.random.default_rng(10)
    x = rng.normal(size=400)
    k = rng.integers(1, 5, size=400)
    y = rng.normal(0.1, 1, size=300)
    rep = np.repeat(x, k)
    r_w, r_rep = ks_weighted(y, x, k), ks_weighted(y, rep, None)
    assert r_w.statistic == pytest.approx(r_rep.statistic, abs=1e-12)
    assert r_w.details["d_plus"] == pytest.approx(r_rep.details["d_plus"], abs=1e-12)
    assert r_w.details["d_minus"] == pytest.approx(r_rep.details["d_minus"], abs=1e-12)
    assert stats.ks_2samp(y, rep).statistic == pytest.approx(r_w.statistic, abs=1e-12)
    assert wasserstein_weighted(y, x, k) == pytest.approx(
        stats.wasserstein_distance(rep, y), rel=1e-12
    )
    # The sample size is Kish's: weight k counts less than k replicated events.
    assert r_w.details["n_eff_sim"] == pytest.approx(k.sum() ** 2 / np.sum(k**2))
    assert r_w.details["n_eff_sim"] < r_rep.details["n_eff_sim"]


def _binned(rng, n_bins, n_sim=3000, n_data=2000):
    x_sim = rng.normal(size=n_sim)
    w_sim = np.where(rng.random(n_sim) < 0.05, -1.0, 1.0) * rng.choice([0.4, 1.6], size=n_sim)
    x_data = rng.normal(size=n_data)
    inner = np.quantile(x_data, np.linspace(0, 1, n_bins + 1)[1:-1])
    centres = np.concatenate([[inner[0] - 0.5], 0.5 * (inner[1:] + inner[:-1]), [inner[-1] + 0.5]])
    i_sim = np.searchsorted(inner, x_sim, side="right")
    i_data = np.searchsorted(inner, x_data, side="right")
    h_sim = np.bincount(i_sim, weights=w_sim, minlength=n_bins)
    h_data = np.bincount(i_data, minlength=n_bins).astype(float)
    return centres, i_sim, w_sim, i_data, h_sim, h_data


@pytest.mark.parametrize("n_bins", [8, 40, 1000])
def test_hist_form_equals_array_form_on_binned_values(n_bins):
    rng = np.random.default_rng(n_bins)
    centres, i_sim, w_sim, i_data, h_sim, h_data = _binned(rng, n_bins)
    sw2 = float(np.sum(w_sim**2))
    for f_arr, f_hist in ((ks_weighted, ks_hist), (ad_weighted, ad_hist)):
        r_arr = f_arr(centres[i_data], centres[i_sim], w_sim)
        r_hist = f_hist(h_data, h_sim, sw2)
        assert r_hist.statistic == pytest.approx(r_arr.statistic, rel=1e-10, abs=1e-12)
        assert r_hist.pvalue == pytest.approx(r_arr.pvalue, rel=1e-8, abs=1e-14)
        assert r_hist.details["n_eff_sim"] == pytest.approx(r_arr.details["n_eff_sim"])
    assert wasserstein_hist(h_data, h_sim, centres) == pytest.approx(
        wasserstein_weighted(centres[i_data], centres[i_sim], w_sim), rel=1e-10
    )
    # Unit-weight data given explicitly: Σw² = Σw.
    r_explicit = ks_hist(h_data, h_sim, sw2, data_sumw2_total=float(h_data.sum()))
    assert r_explicit.pvalue == pytest.approx(ks_hist(h_data, h_sim, sw2).pvalue)
    ad_limit = ad_hist(h_data, h_sim, sw2).details["limit"]
    assert ad_limit == ("discrete" if n_bins <= 40 else "continuous")


def _negative_weight_sample(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=500)
    w = np.where(rng.random(500) < 0.2, -1.0, 1.0) * rng.choice([0.5, 1.5], size=500)
    # Negative weights concentrated at low x: the raw cumulative goes below 0.
    w[np.argsort(x)[:40]] = -1.0
    y = rng.normal(0.1, 1.0, size=300)
    return x, w, y


def test_ks_with_negative_weights_is_the_sup_distance_of_the_weighted_ecdfs():
    x, w, y = _negative_weight_sample(12)
    grid = np.union1d(x, y)
    f_sim_raw = _ecdf(x, w, grid)
    assert f_sim_raw.min() < 0.0  # the case the clipping is for
    diff = np.clip(f_sim_raw, 0.0, 1.0) - _ecdf(y, None, grid)
    res = ks_weighted(y, x, w)
    assert res.details["d_plus"] == pytest.approx(max(diff.max(), 0.0), abs=1e-12)
    assert res.details["d_minus"] == pytest.approx(max(-diff.min(), 0.0), abs=1e-12)
    assert res.statistic == pytest.approx(np.abs(diff).max(), abs=1e-12)
    # p-value: Kolmogorov's law (scipy.stats.kstwo, as ks_2samp(method="asymp")) at Kish's
    # effective sizes, n = n1 n2/(n1 + n2); no ties, so no continuity correction.
    n1, n2 = _kish(w), 300.0
    assert res.details["n_eff_sim"] == pytest.approx(n1, rel=1e-12)
    en = n1 * n2 / (n1 + n2)
    assert res.pvalue == pytest.approx(stats.kstwo.sf(res.statistic, round(en)), rel=1e-9)


def test_ad_with_negative_weights_is_the_midrank_formula_on_repaired_ecdfs():
    x, w, y = _negative_weight_sample(12)
    grid = np.union1d(x, y)
    cdf_sim = _monotone(_ecdf(x, w, grid))
    n1, n2 = _kish(w), 300.0
    a2 = _a2_midrank(cdf_sim, _ecdf(y, None, grid), n1, n2)
    res = ad_weighted(y, x, w)
    assert res.details["A2"] == pytest.approx(a2, rel=1e-10)
    assert res.effect_size == pytest.approx(a2 * (n1 + n2) / (n1 * n2), rel=1e-10)


def test_wasserstein_with_negative_weights_is_the_l1_distance_of_the_ecdfs():
    x, w, y = _negative_weight_sample(12)
    grid = np.union1d(x, y)
    diff = np.clip(_ecdf(x, w, grid), 0.0, 1.0) - _ecdf(y, None, grid)
    expected = np.sum(np.abs(diff[:-1]) * np.diff(grid))
    assert wasserstein_weighted(y, x, w) == pytest.approx(expected, rel=1e-12)
    assert wasserstein_weighted(y, x, w, normalise_by=2.0) == pytest.approx(expected / 2, rel=1e-12)


def test_hist_forms_with_a_negative_bin_match_hand_computation():
    h = np.array([5.0, -3.0, 10.0, 2.0, 8.0])  # sum 22, raw cumulative dips: 5, 2, 12, ...
    d = np.array([4.0, 1.0, 9.0, 3.0, 7.0])  # sum 24
    f_sim = np.cumsum(h) / 22.0
    f_data = np.cumsum(d) / 24.0
    n1, n2 = 22.0**2 / 250.0, 24.0
    ks = ks_hist(d, h, 250.0)
    assert ks.statistic == pytest.approx(np.max(np.abs(f_sim - f_data)), abs=1e-12)
    assert ks.details["n_eff_sim"] == pytest.approx(n1)
    ad = ad_hist(d, h, 250.0)
    # Monotone repair by hand: running max (5, 5, 12, 14, 22)/22, reversed running min
    # (2, 2, 12, 14, 22)/22, mean (3.5, 3.5, 12, 14, 22)/22.
    repaired = np.array([3.5, 3.5, 12.0, 14.0, 22.0]) / 22.0
    np.testing.assert_allclose(_monotone(f_sim), repaired)
    assert ad.details["A2"] == pytest.approx(_a2_midrank(repaired, f_data, n1, n2), rel=1e-10)
    pos = np.arange(5.0)
    assert wasserstein_hist(d, h, pos) == pytest.approx(np.sum(np.abs(f_sim - f_data)[:-1]))


def test_negative_weight_null_gives_uniform_pvalues():
    # Planted null: the simulation's positive and negative weights (10 %, weights 0.4 and 1.6)
    # are drawn from the same law as the data, so the weighted law is the data's. KS against
    # U(0, 1) with a fixed seed; a calibrated test fails it with probability 1e-4.
    rng = np.random.default_rng(40)
    p_ks, p_ad = [], []
    for _ in range(300):
        x = rng.normal(size=2000)
        w = rng.choice([0.4, 1.6], size=2000) * np.where(rng.random(2000) < 0.1, -1.0, 1.0)
        y = rng.normal(size=800)
        p_ks.append(ks_weighted(y, x, w).pvalue)
        p_ad.append(ad_weighted(y, x, w).pvalue)
    assert stats.kstest(p_ks, "uniform").pvalue > 1e-4
    assert stats.kstest(p_ad, "uniform").pvalue > 1e-4
    # The false-positive rate at 5 % is in its binomial 99.9 % band.
    lo, hi = stats.binom.interval(0.999, 300, 0.05)
    assert lo <= np.sum(np.array(p_ks) < 0.05) <= hi
    assert lo <= np.sum(np.array(p_ad) < 0.05) <= hi


def test_small_samples_are_flagged_unreliable():
    rng = np.random.default_rng(13)
    res = ks_weighted(rng.normal(size=12), rng.normal(size=10), None)
    assert not res.reliable
    assert ad_weighted(rng.normal(size=12), rng.normal(size=10), None).reliable is False


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        ks_weighted([1.0, 2.0], [1.0, np.nan], None)
    with pytest.raises(ValueError):
        ks_weighted([1.0, 2.0], [1.0, 2.0], [-1.0, -1.0])
    with pytest.raises(ValueError):
        ad_hist([1.0, 2.0], [1.0, 2.0, 3.0], 3.0)
    with pytest.raises(ValueError):
        ks_hist([1.0, 2.0], [1.0, 2.0], 0.0)


def test_ad_sigma_large_n_branch_is_continuous():
    sigma_exact = ad_sigma(np.array([400_000.0, 599_999.0]))
    sigma_limit = ad_sigma(np.array([400_000.0, 600_003.0]))
    assert sigma_limit == pytest.approx(sigma_exact, rel=1e-5)
    assert sigma_limit == pytest.approx(math.sqrt(2 * (math.pi**2 - 9) / 3), rel=1e-5)


def test_large_n_kolmogorov_tail_follows_scipys_finite_n_law() -> None:
    # Stephens' corrected limit law replaces scipy's slow exact Smirnov sum above n = 1e5:
    # within 2e-3 (relative) where decisions are taken, 2% in the far tail.
    from validator.stats.edf import KS_LIMIT_LAW_MIN_N, kolmogorov_sf

    for n in (KS_LIMIT_LAW_MIN_N + 1, 361_128):
        for p in (0.3, 0.05, 0.01, 1e-3):
            d = stats.kstwobign.isf(p) / np.sqrt(n)
            assert kolmogorov_sf(d, n) == pytest.approx(stats.kstwo.sf(d, n), rel=2e-3)
        d = stats.kstwobign.isf(1e-12) / np.sqrt(n)
        assert kolmogorov_sf(d, n) == pytest.approx(stats.kstwo.sf(d, n), rel=2e-2)
    d = 0.01
    assert kolmogorov_sf(d, 5_000) == stats.kstwo.sf(d, 5_000)


@pytest.mark.parametrize("scale", [1.04, 1.05])
def test_a_strong_scale_shift_is_stored_as_strong_as_scipy_says(scale):
    """A scale shift of 100k events, far beyond every toy: the stored KS p-value (the limit
    law with the toys' scale) is within a factor 10 of scipy's ks_2samp on the same events,
    not a bound 1/(1 + toys) that reads as marginal."""
    from validator.stats.edf import edf_hist_tests

    rng = np.random.default_rng(5)
    n = 100_000
    sim, data = rng.standard_normal(n), scale * rng.standard_normal(n)
    edges = np.quantile(np.concatenate([sim, data]), np.linspace(0.0, 1.0, 1001))
    edges[0], edges[-1] = edges[0] - 1.0, edges[-1] + 1.0
    s = np.histogram(sim, edges)[0].astype(float)
    d = np.histogram(data, edges)[0].astype(float)
    reference = stats.ks_2samp(sim, data).pvalue
    result = edf_hist_tests(d, s, float(n), sim_sumw2_bins=s, n_toys=300, rng=1,
                            thresholds=(0.05 / 300,))["ks"]
    assert result.details["n_toys_reaching"] == 0 and not result.pvalue_is_bound
    assert reference / 10 < result.pvalue < reference * 10, (result.pvalue, reference)


# ------------------------------------------------------------------------------------------
# Data toys from tables (validator.stats.multinomial_toys): the law is Multinomial exactly
# ------------------------------------------------------------------------------------------

#: ``c`` of the Poisson stage under test: the default, λ = n (half the attempts rejected), and
#: none (λ = 0: categorical events only).
SHORTFALLS = [1.0, 0.0, math.inf]


def _law_probabilities(n_bins: int, seed: int) -> np.ndarray:
    """Uneven probabilities with an empty bin and a tiny one (expected count below 0.1)."""
    p = np.random.default_rng(seed).dirichlet(np.full(n_bins, 2.0))
    p[3] = 0.0
    p[5] = 1e-4
    return p / p.sum()


@pytest.mark.parametrize("c", SHORTFALLS)
def test_table_toys_have_the_multinomial_moments(c):
    """Rows sum to n; per-bin means n p_i, variances n p_i (1 − p_i) and covariances
    −n p_i p_j agree with the Monte-Carlo estimates within 4.5 of their standard errors, from
    the multinomial's moments (cumulants n times those of one categorical event)."""
    from validator.stats.multinomial_toys import MultinomialToys

    n, n_toys = 400, 40_000
    p = _law_probabilities(40, 11)
    x = MultinomialToys(n, p, c=c).draw(np.random.default_rng(12), n_toys)
    assert x.shape == (n_toys, p.size) and np.all(x == np.round(x)) and np.all(x >= 0)
    assert np.all(x.sum(axis=1) == n) and np.all(x[:, 3] == 0)
    z = []
    live = p > 0
    pl, ql, xl = p[live], 1.0 - p[live], x[:, live]
    # means
    z.extend((xl.mean(axis=0) - n * pl) / np.sqrt(n * pl * ql / n_toys))
    # variances: Var(s²) = μ4/N − σ⁴ (N − 3)/(N (N − 1)), μ4 = n pq (1 − 6pq) + 3 (n pq)²
    var = n * pl * ql
    mu4 = n * pl * ql * (1.0 - 6.0 * pl * ql) + 3.0 * var**2
    se_var = np.sqrt(mu4 / n_toys - var**2 * (n_toys - 3) / (n_toys * (n_toys - 1)))
    z.extend((xl.var(axis=0, ddof=1) - var) / se_var)
    # covariances of every pair: Var(s_ij) ≈ (μ22 − κ11²)/N, μ22 = n κ22 + n² (κ20 κ02 +
    # 2 κ11²) with one event's κ20 = p_i q_i, κ11 = −p_i p_j and κ22 = μ22 − κ20 κ02 − 2 κ11²
    cov = np.cov(x, rowvar=False)
    for i, j in zip(*np.triu_indices(p.size, 1), strict=True):
        a, b = p[i], p[j]
        if a == 0 or b == 0:
            assert cov[i, j] == 0
            continue
        k20, k02, k11 = a * (1 - a), b * (1 - b), -a * b
        m22 = a * (1 - a) ** 2 * b * b + b * a * a * (1 - b) ** 2 + (1 - a - b) * a * a * b * b
        k22 = m22 - k20 * k02 - 2 * k11**2
        mu22 = n * k22 + n * n * (k20 * k02 + 2 * k11**2)
        z.append((cov[i, j] - n * k11) / math.sqrt((mu22 - (n * k11) ** 2) / n_toys))
    z = np.asarray(z)
    # 39 means, 39 variances, 741 covariances: P(max |z| > 4.5) ≈ 819 x 6.8e-6 = 0.006
    assert np.max(np.abs(z)) < 4.5, np.max(np.abs(z))
    assert abs(np.mean(z)) < 5 / math.sqrt(z.size)  # no common drift (z nearly independent)


@pytest.mark.parametrize("c", SHORTFALLS)
def test_table_toys_of_three_bins_have_the_multinomial_distribution(c):
    """3 bins, n = 20, 200k toys: the joint distribution of (X1, X2) matches the multinomial
    pmf (Pearson's χ², cells of expected count below 5 pooled) at p > 1e-3."""
    from validator.stats.multinomial_toys import MultinomialToys

    n, n_toys = 20, 200_000
    p = np.array([0.5, 0.3, 0.2])
    x = MultinomialToys(n, p, c=c).draw(np.random.default_rng(21), n_toys).astype(np.int64)
    assert np.all(x.sum(axis=1) == n)
    observed = np.bincount(x[:, 0] * (n + 1) + x[:, 1], minlength=(n + 1) ** 2).astype(float)
    k1, k2 = np.divmod(np.arange((n + 1) ** 2), n + 1)
    ok = k1 + k2 <= n
    pmf = np.zeros(k1.size)
    pmf[ok] = stats.multinomial.pmf(np.stack([k1[ok], k2[ok], n - k1[ok] - k2[ok]], axis=1),
                                    n, p)
    assert observed[~ok].sum() == 0 and pmf.sum() == pytest.approx(1.0, abs=1e-12)
    expected = pmf * n_toys
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    chi2 = float(np.sum((obs - exp) ** 2 / exp))
    assert stats.chi2.sf(chi2, obs.size - 1) > 1e-3, (chi2, obs.size)


def test_table_toys_of_a_thousand_bins_pool_to_the_multinomial():
    """1,000 bins, n = 1e5 (the tables of a real fine histogram, 2 MB): the counts pooled over
    2,000 toys are Multinomial(2000 n, p), Pearson's χ² with 999 degrees of freedom."""
    from validator.stats.multinomial_toys import MultinomialToys, tables_pay

    n, n_toys = 100_000, 2_000
    p = np.random.default_rng(31).dirichlet(np.full(1000, 20.0))
    assert tables_pay(n, p)
    x = MultinomialToys(n, p).draw(np.random.default_rng(32), n_toys)
    assert np.all(x.sum(axis=1) == n)
    expected = n * n_toys * p
    chi2 = float(np.sum((x.sum(axis=0) - expected) ** 2 / expected))
    assert stats.chi2.sf(chi2, p.size - 1) > 1e-3, chi2
    assert x.var(axis=0, ddof=1).sum() == pytest.approx(n * np.sum(p * (1 - p)), rel=0.01)


def test_alias_tables_draw_each_term_with_its_integer_weight_exactly():
    """Reading the packed alias columns back: each term's probability is exactly its weight
    ⌊2^53 term / Σ terms⌋ (the units left over on the largest term) over 2^53."""
    from validator.stats.multinomial_toys import alias_tables

    rng = np.random.default_rng(41)
    tables = [rng.dirichlet(np.full(7, 0.3)), np.array([1.0]), np.array([0.0, 3.0, 1e-20]),
              rng.random(1000) ** 4, np.array([0.25, 0.25, 0.25, 0.25])]
    flat = np.concatenate(tables)
    start = np.concatenate([[0], np.cumsum([t.size for t in tables])])
    bits, offset, table = alias_tables(flat, start)
    for c, terms in enumerate(tables):
        k = int(bits[c])
        assert 1 << k >= terms.size and (k == 0 or 1 << (k - 1) < terms.size)
        full = 1 << (53 - k)
        mass = [0] * (1 << k)
        for col, entry in enumerate(table[offset[c]:offset[c + 1]].tolist()):
            threshold, alias = entry >> k, entry & ((1 << k) - 1)
            assert 0 <= threshold <= full
            mass[col] += threshold
            mass[alias] += full - threshold
        total = float(np.cumsum(terms)[-1])
        w = [int(t / total * 2.0**53) for t in terms]
        w[int(np.argmax(w))] += (1 << 53) - sum(w)
        assert mass == w + [0] * ((1 << k) - terms.size)


def test_poisson_terms_of_the_tables_are_those_of_poisson_toys():
    from validator.stats.multinomial_toys import poisson_terms_numpy
    from validator.stats.poisson_toys import mode_term, poisson_table_numpy

    rates = np.array([0.0, 1e-3, 0.5, 7.5, 1e3, 1.23e4])
    modes = [mode_term(float(r)) if r > 0 else (0, 0.0) for r in rates]
    first, start, terms = poisson_terms_numpy(rates, np.array([m for m, _ in modes]),
                                               np.array([t for _, t in modes]))
    assert first[0] == 0 and terms[start[0]:start[1]].tolist() == [1.0]
    for c, rate in enumerate(rates[1:], start=1):
        f, cdf = poisson_table_numpy(float(rate))
        assert first[c] == f
        np.testing.assert_array_equal(np.cumsum(terms[start[c]:start[c + 1]]), cdf)


@pytest.mark.parametrize("n, c", [(5_000, None), (5_000, 0.0), (123_456, None), (7, 1.0),
                                  (300, math.inf)])
def test_table_toys_compiled_equal_numpy(monkeypatch, n, c):
    """The numba kernels and their numpy forms build the same tables and draw the same
    numbers from the same generator."""
    from validator.stats import compiled
    from validator.stats import multinomial_toys as module

    if not compiled.HAVE_NUMBA:
        pytest.skip("numba not available")
    p = np.concatenate([_law_probabilities(60, 51), [0.0, 1e-13]])
    fast = module.MultinomialToys(n, p, c=c)
    x_fast = fast.draw(np.random.default_rng(52), 700)
    monkeypatch.setattr(module, "HAVE_NUMBA", False)
    slow = module.MultinomialToys(n, p, c=c)
    np.testing.assert_array_equal(slow.draw(np.random.default_rng(52), 700), x_fast)
    for a, b in zip(fast._tables, slow._tables, strict=True):
        if a is None:
            assert b is None
            continue
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)


def test_tables_are_used_where_they_pay():
    from validator.stats.multinomial_toys import MAX_TABLE_ENTRIES, shortfall, tables_pay

    fine = np.full(1000, 1e-3)
    assert tables_pay(10**5, fine) and tables_pay(10**6, fine) and tables_pay(10**7, fine)
    assert not tables_pay(10**9, fine)  # tables beyond MAX_TABLE_ENTRIES
    assert MAX_TABLE_ENTRIES == 1 << 22
    assert not tables_pay(10**6, np.full(5, 0.2))  # few bins: numpy's binomials are cheaper
    assert not tables_pay(100, [1.0])
    assert shortfall(10**6, 1000) == 1.0
    assert shortfall(500, 1000) == math.inf  # fewer events than bins: categorical only
    assert tables_pay(500, fine) and not tables_pay(10**6, np.full(3, 1 / 3))


def test_null_model_draws_its_first_thousand_toys_as_before():
    """Batches that start before TABLE_MIN_TOYS draw numpy's multinomial numbers (a test of
    the default 500 toys keeps its p-values); later ones the tables', from the same
    generator."""
    from validator.stats.edf import hist_inputs, null_model
    from validator.stats.multinomial_toys import MultinomialToys
    from validator.stats.poisson_toys import TABLE_MIN_TOYS

    rng = np.random.default_rng(61)
    s = rng.poisson(50.0, 1000).astype(float) + 1.0
    d = rng.poisson(1000.0, 1000).astype(float)
    model = null_model(hist_inputs(d, s, None, None, s))
    assert model.data_toys is not None and model.n_data == d.sum()
    data, sim = model.draw(100, np.random.default_rng(62), first_toy=TABLE_MIN_TOYS - 1)
    gen = np.random.default_rng(62)
    np.testing.assert_array_equal(data, gen.multinomial(model.n_data, model.p_hat, 100))
    np.testing.assert_array_equal(sim, model.beta + model.sigma * gen.standard_normal(
        (100, model.beta.size)))
    data, _ = model.draw(100, np.random.default_rng(63), first_toy=TABLE_MIN_TOYS)
    tables = MultinomialToys(model.n_data, model.p_hat)
    np.testing.assert_array_equal(data, tables.draw(np.random.default_rng(63), 100))
    assert np.all(data.sum(axis=1) == model.n_data)


def test_toy_pvalues_beyond_the_tables_threshold_stay_calibrated():
    """A null comparison that needs thousands of toys (a threshold next to its p-value) draws
    most of them from the tables: the p-value stays where the first toys put it."""
    from validator.stats.edf import edf_hist_tests

    rng = np.random.default_rng(71)
    p = rng.dirichlet(np.full(1000, 30.0))
    d = rng.multinomial(200_000, p).astype(float)
    s = rng.multinomial(400_000, p).astype(float) * 0.5
    few = edf_hist_tests(d, s, sim_sumw2_bins=0.25 * s * 2, n_toys=1000, rng=5)
    p_ks = few["ks"].pvalue
    many = edf_hist_tests(d, s, sim_sumw2_bins=0.25 * s * 2, n_toys=1000, rng=5,
                          max_toys=6000, thresholds=(p_ks,))
    assert many["ks"].n_toys > 2000
    n_many = many["ks"].n_toys
    sd = math.sqrt(p_ks * (1 - p_ks) / 1000) + math.sqrt(p_ks * (1 - p_ks) / n_many)
    assert abs(many["ks"].pvalue - p_ks) < 4 * sd
