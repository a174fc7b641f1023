"""Weighted Pearson / Spearman from accumulators: values, standard errors, comparison test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from validator.stats.correlation import (
    corr_pearson,
    corr_spearman,
    moment_sums,
    pearson_from_moments,
    spearman_from_table,
)


def _bivariate_normal(rng, n, rho, loc=(0.0, 0.0), scale=(1.0, 1.0)):
    z1 = rng.normal(size=n)
    z2 = rho * z1 + math.sqrt(1 - rho**2) * rng.normal(size=n)
    return loc[0] + scale[0] * z1, loc[1] + scale[1] * z2


def _quantile_table(x, y, w=None, n_bins=200):
    ex = np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:-1])
    ey = np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1])
    ix = np.searchsorted(ex, x, side="right")
    iy = np.searchsorted(ey, y, side="right")
    flat = np.bincount(ix * n_bins + iy, weights=w, minlength=n_bins * n_bins)
    return flat.reshape(n_bins, n_bins)


# ------------------------------------------------------------------------------------------
# Pearson
# ------------------------------------------------------------------------------------------


def test_moment_sums_definition_and_additivity():
    rng = np.random.default_rng(0)
    x, y, w = rng.normal(size=(3, 1000))
    s = moment_sums(x, y, w)
    assert s.shape == (5, 5)
    assert s[0, 0] == pytest.approx(w.sum())
    assert s[3, 1] == pytest.approx(np.sum(w * x**3 * y))
    assert s[0, 4] == pytest.approx(np.sum(w * y**4))
    assert s[3, 2] == 0.0  # a + b > 4 not accumulated
    chunks = moment_sums(x[:400], y[:400], w[:400]) + moment_sums(x[400:], y[400:], w[400:])
    np.testing.assert_allclose(chunks, s, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("rho", [-0.8, 0.0, 0.3, 0.95])
def test_pearson_equals_numpy_unit_and_weighted(rho):
    rng = np.random.default_rng(1)
    # Shifted and scaled, as a feature would be before (imperfect) standardisation.
    x, y = _bivariate_normal(rng, 5000, rho, loc=(1.5, -0.7), scale=(2.0, 0.5))
    r, se = pearson_from_moments(moment_sums(x, y), 5000)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert np.isfinite(se) and se > 0
    w = rng.uniform(0.1, 3.0, size=x.size)
    cov = np.cov(x, y, aweights=w)
    r_w, _ = pearson_from_moments(moment_sums(x, y, w), 1000.0)
    assert r_w == pytest.approx(cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]), abs=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_pearson_se_bivariate_normal(rho):
    """For normal data the delta-method SE tends to (1 − ρ²)/√n."""
    rng = np.random.default_rng(2)
    n = 40_000
    x, y = _bivariate_normal(rng, n, rho)
    _, se = pearson_from_moments(moment_sums(x, y), n)
    assert se == pytest.approx((1 - rho**2) / math.sqrt(n), rel=0.04)


def test_pearson_se_regular_at_zero_correlation():
    # x symmetric, y = x² (centred): uncorrelated but dependent; μ11 = 0 exactly in expectation.
    rng = np.random.default_rng(3)
    x = rng.normal(size=20_000)
    x = np.concatenate([x, -x])
    y = x**2 - 1.0
    r, se = pearson_from_moments(moment_sums(x, y), x.size)
    assert abs(r) < 1e-12
    # Var(r) = ν22/n at ρ = 0: E[x²(x²−1)²]/(Var x Var y) = (15 − 6 + 1)/2 = 5.
    assert se == pytest.approx(math.sqrt(5.0 / x.size), rel=0.05)


def test_pearson_se_non_normal_matches_replica_spread():
    """Exponential margins (x = E1, y = E1 + E2, ρ = 1/√2): the fourth-moment delta method
    differs from the normal formula; it matches the spread over replicas."""
    rng = np.random.default_rng(4)
    n, reps = 2000, 300
    rs, ses = [], []
    for _ in range(reps):
        e1, e2 = rng.exponential(size=(2, n))
        r, se = pearson_from_moments(moment_sums(e1, e1 + e2), n)
        rs.append(r)
        ses.append(se)
    empirical = np.std(rs, ddof=1)
    assert np.median(ses) == pytest.approx(empirical, rel=0.15)
    normal_formula = (1 - 0.5) / math.sqrt(n)
    assert abs(normal_formula / empirical - 1) > 0.2  # the normal theory one is wrong here


def test_pearson_sandwich_equals_kish_for_unit_weights():
    rng = np.random.default_rng(5)
    x, y = _bivariate_normal(rng, 3000, 0.4)
    y = y + 0.3 * x**2
    s = moment_sums(x, y)
    r1, se1 = pearson_from_moments(s, 3000)
    r2, se2 = pearson_from_moments(s, 12345.0, S2=s)  # n_eff unused with S2
    assert r2 == r1
    assert se2 == pytest.approx(se1, rel=1e-10)


def test_pearson_sandwich_with_shape_dependent_weights_matches_replicas():
    """Weights that depend on x (a mixture of processes): the sandwich SE is right, Kish's
    n_eff is not."""
    rng = np.random.default_rng(6)
    n, reps = 3000, 300
    rs, se_sandwich, se_kish = [], [], []
    for _ in range(reps):
        x, y = _bivariate_normal(rng, n, 0.5)
        w = np.where(x > 1.0, 4.0, 0.25)
        s, s2 = moment_sums(x, y, w), moment_sums(x, y, w**2)
        neff = w.sum() ** 2 / np.sum(w**2)
        r, se = pearson_from_moments(s, neff, S2=s2)
        rs.append(r)
        se_sandwich.append(se)
        se_kish.append(pearson_from_moments(s, neff)[1])
    empirical = np.std(rs, ddof=1)
    assert np.mean(se_sandwich) == pytest.approx(empirical, rel=0.1)
    assert np.mean(se_kish) / empirical > 1.2  # measured 1.38: Kish overstates the error


def test_pearson_degenerate_inputs():
    x = np.ones(100)
    r, se = pearson_from_moments(moment_sums(x, np.arange(100.0)), 100)
    assert math.isnan(r) and math.isnan(se)
    with pytest.raises(ValueError):
        pearson_from_moments(np.zeros((4, 4)), 10)


# ------------------------------------------------------------------------------------------
# Spearman
# ------------------------------------------------------------------------------------------


def test_spearman_exact_with_one_bin_per_value():
    """Integer data with many ties: one bin per value gives scipy's midrank Spearman exactly."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 8, size=3000)
    y = np.clip(x + rng.integers(-3, 4, size=3000), 0, 9)
    table = np.zeros((8, 10))
    np.add.at(table, (x, y), 1.0)
    r, se = spearman_from_table(table, 3000)
    assert r == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert np.isfinite(se)


@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_spearman_fine_table_approximates_scipy(rho):
    rng = np.random.default_rng(8)
    x, y = _bivariate_normal(rng, 20_000, rho)
    x = np.exp(x)  # monotone transform: ranks unchanged
    r, _ = spearman_from_table(_quantile_table(x, y, n_bins=200), 20_000)
    assert r == pytest.approx(stats.spearmanr(x, y).statistic, abs=2e-3)


def test_spearman_se_matches_replica_spread():
    """Influence-function SE (Croux & Dehon 2010; Borkowf 2002) against the spread over replicas
    for ρ_normal = 0.7 (ρ_S ≈ 0.68), and 1/√n under independence."""
    rng = np.random.default_rng(9)
    n, reps = 1500, 300
    out = {0.0: ([], []), 0.7: ([], [])}
    for rho, (rs, ses) in out.items():
        for _ in range(reps):
            x, y = _bivariate_normal(rng, n, rho)
            r, se = spearman_from_table(_quantile_table(x, y, n_bins=60), n)
            rs.append(r)
            ses.append(se)
    rs0, ses0 = out[0.0]
    assert np.mean(ses0) == pytest.approx(1 / math.sqrt(n), rel=0.03)
    assert np.std(rs0, ddof=1) == pytest.approx(1 / math.sqrt(n), rel=0.12)
    rs7, ses7 = out[0.7]
    assert np.mean(ses7) == pytest.approx(np.std(rs7, ddof=1), rel=0.12)


def test_spearman_sandwich_equals_kish_for_unit_weights():
    rng = np.random.default_rng(10)
    x, y = _bivariate_normal(rng, 4000, 0.3)
    t = _quantile_table(x, y, n_bins=40)
    r1, se1 = spearman_from_table(t, 4000)
    r2, se2 = spearman_from_table(t, 1.0, table_w2=t)
    assert r2 == r1
    assert se2 == pytest.approx(se1, rel=1e-10)


# ------------------------------------------------------------------------------------------
# Comparison sim vs data
# ------------------------------------------------------------------------------------------


def test_corr_pearson_result_fields():
    rng = np.random.default_rng(11)
    xs, ys = _bivariate_normal(rng, 8000, 0.5)
    xd, yd = _bivariate_normal(rng, 4000, 0.6)
    res = corr_pearson(moment_sums(xd, yd), 4000, moment_sums(xs, ys), 8000)
    d = res.details
    assert res.method == "corr_pearson"
    assert res.effect_name == "delta_pearson"
    assert res.effect_size == pytest.approx(d["r_data"] - d["r_sim"])
    assert res.effect_size == pytest.approx(0.1, abs=0.03)
    z = (d["r_data"] - d["r_sim"]) / math.hypot(d["se_data"], d["se_sim"])
    assert res.statistic == pytest.approx(z)
    assert res.pvalue == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert res.pvalue < 1e-6
    assert res.reliable


def test_corr_spearman_result_fields_and_reliability():
    rng = np.random.default_rng(12)
    xs, ys = _bivariate_normal(rng, 5000, 0.5)
    xd, yd = _bivariate_normal(rng, 20, 0.5)
    ts, td = _quantile_table(xs, ys, n_bins=20), _quantile_table(xd, yd, n_bins=5)
    res = corr_spearman(td, 20, ts, 5000)
    assert res.method == "corr_spearman"
    assert res.effect_name == "delta_spearman"
    assert not res.reliable  # n_eff < 30
    assert 0.0 <= res.pvalue <= 1.0
    # A constant variable has no correlation: se not finite -> unreliable, p reported as 1.
    flat = np.zeros((3, 3))
    flat[1, :] = 10.0
    res = corr_spearman(flat, 30, ts, 5000)
    assert not res.reliable and res.pvalue == 1.0
